"""Bad input to every built-in actor: wrong messages get clear errors, the actor survives.

Hypothesis sends messages of the wrong type (scalars, containers, unhashable and hostile
objects, other actors' protocol messages) and protocol messages with fields of the wrong type
to the provider, the monitor and the saga coordinator, and bad arguments to a supervisor's
control methods.  After each batch the actor must still be the same incarnation (nothing
crashed) and still answer.  Provider functions that raise arbitrary exceptions (base
exceptions that are not cancellation, exception groups, exceptions whose ``__str__`` raises,
odd ``status_code`` / ``Retry-After`` attributes) must end every call with one typed error.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import (
    Actor,
    ActorCrashed,
    AuraError,
    GetHealth,
    GetStatus,
    MemoryJournal,
    MonitorActor,
    Provider,
    ProviderActor,
    ProviderError,
    RetrySettings,
    open_actor,
)
from actors._monitor._actor import (
    AcknowledgeAlert,
    AcknowledgeAlerts,
    GetAlerts,
    GetBreaker,
    GetErrorRate,
    GetMonitorStatistics,
    GetRecentErrors,
    GetServiceMetrics,
    ResetService,
    SubscribeAlerts,
    UnsubscribeAlerts,
)
from actors._monitor._state import MonitorState
from actors._monitor._types import InvalidReport
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._config._schema import ProviderSettings
from actors._protocol import BreakerReport, Call, CallReport, SagaReport, SupervisionReport
from actors._provider._messages import Isolate, Reset
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep
from actors._saga._messages import DiscardSaga, GetSaga, GetSagaStatistics, ListSagas, StartSaga
from supervisors import ChildSpec, SupervisorSpec, open_supervisor

# -------------------------------------------------------------------------------- strategies


class BrokenStr:
    """A value whose str() and repr() raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("BrokenStr()")  # how hypothesis prints it in a failure report


class Unhashable:
    __hash__ = None  # type: ignore[assignment]


def _function(x: Any) -> Any:
    return x


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=12),
)

junk = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
        st.tuples(children, children),
        st.sets(st.integers(-5, 5), max_size=3),
    ),
    max_leaves=12,
)

hostile = st.sampled_from(
    [
        Unhashable(),
        object(),
        int,
        _function,
        ValueError("an exception as a message"),
        Ellipsis,
        NotImplemented,
        range(3),
        memoryview(b"abc"),
        complex(1, 2),
    ]
)

#: Values for fields and arguments.  Values whose repr() raises are only sent as whole
#: messages (see `messages`); names of unusable types are covered by the tests below.
anything = st.one_of(junk, hostile)

#: A whole message of any type, including one whose str() and repr() raise.
messages = st.one_of(anything, st.just(BrokenStr()))


def protocol(
    *types: type[msgspec.Struct], fields: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[Any]:
    """Instances of protocol message types with every field set to anything (or drawn from
    ``fields[name]`` for the fields named there)."""
    special = fields or {}

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        kind = draw(st.sampled_from(types))
        return kind(**{name: draw(special.get(name, anything)) for name in kind.__struct_fields__})

    return build()


OTHER_PROTOCOLS: tuple[type[msgspec.Struct], ...] = (
    Call,
    Isolate,
    Reset,
    GetStatus,
    GetHealth,
    GetAlerts,
    StartSaga,
    GetSaga,
    ListSagas,
    DiscardSaga,
    GetSagaStatistics,
    CallReport,
    BreakerReport,
)


def run(body: Callable[[], Awaitable[None]]) -> None:
    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


#: What a clear error is: a typed runtime/resilience error or a builtin the message broke.
CLEAR = (AuraError, TypeError, ValueError, LookupError)


async def ask_expecting_clear_outcome(ref: Any, message: Any) -> None:
    try:
        await ref.ask(message, timeout=5.0)
    except ActorCrashed as exc:  # pragma: no cover - this is the failure being tested for
        raise AssertionError(f"{type(message).__name__} crashed {ref.path}: {exc.cause!r}") from exc
    except CLEAR:
        pass


# ---------------------------------------------------------------------------------- provider


async def echo(payload: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return payload


@settings(max_examples=60)
@given(
    messages=st.lists(
        st.one_of(messages, protocol(*OTHER_PROTOCOLS), protocol(Call, GetStatus, Reset)),
        min_size=1,
        max_size=8,
    )
)
def test_provider_survives_wrong_messages(messages: list[Any]) -> None:
    """Wrong messages to a provider (through its mailbox) get clear errors; same incarnation."""

    async def body() -> None:
        async with open_actor(lambda: ProviderActor("svc", echo), name="svc") as ref:
            for message in messages:
                await ask_expecting_clear_outcome(ref, message)
            status = await ref.ask(GetStatus())
            assert status.service == "svc"
            stats = ref.statistics()
            assert (stats.incarnation, stats.crashed) == (1, 0)

    run(body)


@settings(max_examples=60)
@given(calls=st.lists(st.tuples(anything, anything), min_size=1, max_size=8))
def test_provider_client_survives_bad_payloads_and_keys(calls: list[tuple[Any, Any]]) -> None:
    """Provider.call with any payload and any key ends with a reply or a clear error."""

    async def body() -> None:
        async with open_actor(lambda: ProviderActor("svc", echo), name="svc") as ref:
            client = Provider[Any, Any](ref)
            for payload, key in calls:
                try:
                    await client.call(payload, key=key, timeout=5.0)
                except ActorCrashed as exc:  # pragma: no cover - the failure tested for
                    raise AssertionError(f"crashed on key {key!r}: {exc.cause!r}") from exc
                except CLEAR:
                    pass
            assert (await client.status()).service == "svc"
            assert (ref.statistics().incarnation, ref.statistics().crashed) == (1, 0)

    run(body)


# ----------------------------------------------------------------------------------- monitor

MONITOR_PROTOCOL: tuple[type[msgspec.Struct], ...] = (
    GetBreaker,
    GetServiceMetrics,
    GetRecentErrors,
    GetErrorRate,
    GetAlerts,
    ResetService,
    AcknowledgeAlert,
    AcknowledgeAlerts,
    GetMonitorStatistics,
    SubscribeAlerts,
    UnsubscribeAlerts,
    CallReport,
    BreakerReport,
    SupervisionReport,
    SagaReport,
)


@settings(max_examples=60)
@given(
    messages=st.lists(
        st.one_of(
            messages,
            protocol(*OTHER_PROTOCOLS),
            protocol(*MONITOR_PROTOCOL),
            st.lists(protocol(CallReport, BreakerReport), max_size=3),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_monitor_survives_wrong_messages(messages: list[Any]) -> None:
    """Wrong queries get clear errors, wrong reports are skipped; the monitor answers after."""

    async def body() -> None:
        async with open_actor(MonitorActor, name="monitor") as ref:
            for message in messages:
                await ask_expecting_clear_outcome(ref, message)
                try:
                    ref.tell_nowait(message)
                except CLEAR:
                    pass
            health = await ref.ask(GetHealth())
            assert health is not None
            stats = ref.statistics()
            assert (stats.incarnation, stats.crashed) == (1, 0)

    run(body)


def test_monitor_refuses_an_unprintable_service_name() -> None:
    """GetBreaker with a service name whose repr() raises gets an error, not a crash."""

    async def body() -> None:
        async with open_actor(MonitorActor, name="monitor") as ref:
            await ask_expecting_clear_outcome(ref, GetBreaker(BrokenStr()))  # type: ignore[arg-type]
            assert ref.statistics().crashed == 0

    run(body)


def good_report(**fields: Any) -> CallReport:
    base: dict[str, Any] = {"service": "svc", "ok": True, "latency": 0.01, "at": 1.0}
    base.update(fields)
    return CallReport(**base)


#: Reports whose fields a type checker would refuse but a sender can still build.
BAD_FIELDS: dict[str, dict[str, Any]] = {
    "ok-notimplemented": {"ok": NotImplemented},
    "retried-notimplemented": {"retried": NotImplemented},
    "ok-int": {"ok": 1},
    "service-unhashable": {"service": Unhashable()},
    "service-unprintable": {"service": BrokenStr()},
    "latency-unprintable": {"latency": BrokenStr()},
    "category-unprintable": {"ok": False, "category": BrokenStr()},
    "error-unprintable": {"ok": False, "error": BrokenStr()},
}
BAD_REPORTS = [good_report(**fields) for fields in BAD_FIELDS.values()]


@pytest.mark.parametrize("report", BAD_REPORTS, ids=list(BAD_FIELDS))
def test_a_report_with_a_wrong_field_is_refused_by_name(report: CallReport) -> None:
    """A report with a non-bool flag, an unhashable or unprintable field is refused with
    InvalidReport naming the field; in a batch it is skipped and counted, and the rest of the
    batch is recorded."""
    state = MonitorState(MonitorSettings())
    with pytest.raises(InvalidReport) as caught:
        state.record(report, 1.0)
    assert caught.value.field in ("ok", "retried", "service", "latency", "category", "error")
    assert state.statistics().reports == 0
    state.record_batch([report, good_report(), report], 1.0)
    stats = state.statistics()
    assert (stats.reports, stats.reports_invalid) == (1, 2)


def test_monitor_refuses_wrong_flags_and_fields_without_crashing() -> None:
    """Wrong flags in queries and reports, alone or in a batch, never crash the monitor."""

    async def body() -> None:
        async with open_actor(MonitorActor, name="monitor") as ref:
            with pytest.raises(TypeError, match="include_resolved must be a bool"):
                await ref.ask(GetAlerts(include_resolved=NotImplemented))  # type: ignore[arg-type]
            for report in BAD_REPORTS:
                with pytest.raises(InvalidReport):
                    await ref.ask(report)
            await ref.ask(BAD_REPORTS)
            assert ref.statistics().crashed == 0

    run(body)


# ---------------------------------------------------------------------------------- sagas


class Target(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        return "done"


DEFINITION = SagaDefinition(
    "order", [SagaStep("one", "target", action=lambda ctx: ctx.input, delivery="raw")]
)


#: Names the coordinator looks up in its tables (unusable ones: see the test below).
names = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.floats(), st.booleans())


def coordinator_tree() -> list[ChildSpec]:
    """A saga coordinator on a fresh in-memory journal, and its step target."""
    journal = MemoryJournal()
    return [
        ChildSpec("target", Target),
        ChildSpec("sagas", lambda: SagaCoordinator(journal, [DEFINITION])),
    ]


async def send_to_coordinator(messages: list[Any]) -> None:
    async with open_supervisor(coordinator_tree()) as root:
        ref = root.ref("sagas")
        for message in messages:
            await ask_expecting_clear_outcome(ref, message)
        result = await ref.ask(StartSaga("order", {"x": 1}))
        assert result.results == {"one": "done"}
        stats = ref.statistics()
        assert (stats.incarnation, stats.crashed) == (1, 0)


@settings(max_examples=60)
@given(
    messages=st.lists(
        st.one_of(
            messages,
            protocol(*OTHER_PROTOCOLS, fields={"definition": names, "saga_id": names}),
            protocol(
                StartSaga,
                GetSaga,
                DiscardSaga,
                ListSagas,
                GetSagaStatistics,
                fields={"definition": names, "saga_id": names},
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_saga_coordinator_survives_wrong_messages(messages: list[Any]) -> None:
    """Wrong messages and malformed StartSaga/GetSaga get clear errors; same incarnation."""
    run(lambda: send_to_coordinator(messages))


@pytest.mark.parametrize(
    "message",
    [
        StartSaga([1]),  # type: ignore[arg-type]
        StartSaga(BrokenStr()),  # type: ignore[arg-type]
        StartSaga("order", {}, saga_id=BrokenStr()),  # type: ignore[arg-type]
        GetSaga([1]),  # type: ignore[arg-type]
        DiscardSaga([1]),  # type: ignore[arg-type]
    ],
    ids=[
        "unhashable definition",
        "definition repr raises",
        "saga_id repr raises",
        "get unhashable id",
        "discard unhashable id",
    ],
)
def test_saga_coordinator_refuses_unhashable_or_unprintable_names(message: Any) -> None:
    """Names that cannot be looked up or printed get a clear error, not a crash."""
    run(lambda: send_to_coordinator([message]))


def test_saga_coordinator_refuses_a_wait_flag_that_is_not_a_bool() -> None:
    """StartSaga(wait=...) must be a bool: anything else is a clear TypeError."""

    async def body() -> None:
        async with open_supervisor(coordinator_tree()) as root:
            ref = root.ref("sagas")
            for flag in (NotImplemented, 1, None, "yes"):
                with pytest.raises(TypeError, match=r"StartSaga\.wait must be a bool"):
                    await ref.ask(StartSaga("order", {"x": 1}, wait=flag))
            assert ref.statistics().crashed == 0

    run(body)


# ------------------------------------------------------------------------------ supervisors


class Worker(Actor[Any, Any]):
    async def handle(self, message: Any) -> Any:
        return message


@settings(max_examples=40)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(
                ["start_child", "terminate_child", "restart_child", "ref", "supervisor"]
            ),
            st.one_of(anything, st.sampled_from(["", "/", "a/", "/a", "w/x", "nope", "sub/"])),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_supervisor_control_refuses_bad_arguments(calls: list[tuple[str, Any]]) -> None:
    """Bad arguments to a supervisor's control methods get clear errors; the tree keeps
    running its children (same incarnations) and still starts a new child."""

    async def body() -> None:
        tree: list[ChildSpec[Any, Any] | SupervisorSpec] = [
            ChildSpec("w", Worker),
            SupervisorSpec("sub", [ChildSpec("x", Worker)]),
        ]
        async with open_supervisor(tree) as root:
            for method, argument in calls:
                try:
                    result = getattr(root, method)(argument)
                    if hasattr(result, "__await__"):
                        await result
                except CLEAR:
                    pass
            assert await root.ref("w").ask("still here") == "still here"
            assert root.ref("w").statistics().incarnation == 1
            assert root.ref("sub/x").statistics().incarnation == 1
            fresh = await root.start_child(ChildSpec("fresh", Worker))
            assert await fresh.ask(1) == 1

    run(body)


# --------------------------------------------------------------------- raising provider code


class Weird(BaseException):
    """A BaseException that is neither cancellation nor fatal."""


class BrokenMessage(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


class BadStr(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class Statusful(Exception):
    """An exception with arbitrary status and Retry-After attributes, like HTTP errors."""

    def __init__(self, status_code: Any, headers: Any, retry_after: Any) -> None:
        super().__init__("statusful")
        self.status_code = status_code
        self.headers = headers
        self.retry_after = retry_after


class ExplodingAttributes(Exception):
    """Probing its attributes raises."""

    @property
    def status_code(self) -> int:
        raise RuntimeError("property fails")

    @property
    def response(self) -> Any:
        raise KeyError("no response")


def cyclic() -> BaseException:
    a, b = ValueError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    return a


leaf_exceptions = st.one_of(
    st.builds(lambda: ConnectionResetError("reset")),
    st.builds(lambda: Weird("weird")),
    st.builds(lambda: GeneratorExit()),
    st.builds(lambda: BrokenMessage()),
    st.builds(lambda: BadStr()),
    st.builds(lambda: ExplodingAttributes()),
    st.builds(lambda: MemoryError()),
    st.builds(lambda: RecursionError("deep")),
    st.builds(lambda: StopIteration()),
    st.builds(lambda: NotImplementedError()),
    st.builds(cyclic),
    st.builds(
        Statusful,
        st.one_of(st.integers(-1000, 1000), st.text(max_size=5), st.none(), st.floats()),
        st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(["Retry-After", "retry-after-ms", "X"]),
                st.one_of(st.text(max_size=8), st.integers(), st.floats()),
            ),
            st.integers(),
            st.text(max_size=3),
        ),
        st.one_of(st.none(), st.text(max_size=8), st.floats(), st.integers()),
    ),
)

exceptions = st.recursive(
    leaf_exceptions,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(
            lambda excs: (
                ExceptionGroup("group", excs)
                if all(isinstance(e, Exception) for e in excs)
                else BaseExceptionGroup("base group", excs)
            )
        ),
    ),
    max_leaves=5,
)


@st.composite
def raising_functions(draw: st.DrawFn) -> Callable[[Any], Any]:
    """An async function that sleeps or not, then raises; or a sync function that raises or
    returns something that cannot be awaited."""
    exc = draw(exceptions)
    style = draw(st.sampled_from(["async", "async-after-sleep", "sync-raise", "sync-value"]))
    if style == "sync-raise":

        def sync_raise(payload: Any) -> Any:
            raise exc

        return sync_raise
    if style == "sync-value":
        value = draw(junk)
        return lambda payload: value

    async def fn(payload: Any) -> Any:
        if style == "async-after-sleep":
            await trio.sleep(0.01)
        raise exc

    return fn


@settings(max_examples=80)
@given(fn=raising_functions(), calls=st.integers(1, 4), keyed=st.booleans())
def test_provider_functions_raising_anything_end_each_call_with_one_typed_error(
    fn: Callable[[Any], Any], calls: int, keyed: bool
) -> None:
    """Whatever the service function raises (BaseExceptions that are not cancellation,
    exception groups, broken __str__, odd status attributes), every call ends with exactly
    one typed error and the provider survives."""

    async def body() -> None:
        settings = ProviderSettings(retry=RetrySettings(max_attempts=2))
        async with open_actor(lambda: ProviderActor("svc", fn, settings), name="svc") as ref:
            client = Provider[Any, Any](ref)
            outcomes: list[str] = []
            for n in range(calls):
                try:
                    await client.call(n, key=f"k{n % 2}" if keyed else None, timeout=30.0)
                    outcomes.append("reply")
                except ActorCrashed as exc:  # pragma: no cover - the failure tested for
                    raise AssertionError(f"the provider crashed: {exc.cause!r}") from exc
                except AuraError as exc:
                    outcomes.append(type(exc).__name__)
            assert len(outcomes) == calls
            assert "reply" not in outcomes
            status = await client.status()
            assert status.calls == calls
            assert (ref.statistics().incarnation, ref.statistics().crashed) == (1, 0)

    run(body)


def test_an_exception_whose_str_raises_is_a_typed_error_not_a_crash() -> None:
    """A service raising an exception whose __str__ raises gets a ProviderError that names
    the problem (this used to crash the provider while it formatted the monitor report)."""

    async def service(payload: Any) -> Any:
        raise BrokenMessage()

    async def body() -> None:
        async with open_actor(lambda: ProviderActor("svc", service), name="svc") as ref:
            with pytest.raises(ProviderError, match=r"BrokenMessage: <str\(\) raised Runtime"):
                await Provider[Any, Any](ref).call(1, timeout=30.0)
            assert (ref.statistics().incarnation, ref.statistics().crashed) == (1, 0)

    run(body)
