"""Saga coordinator at its edges: effects that may have landed, delivery decisions, races with
retention, key collisions, what is journaled, logged, audited and reported (virtual time)."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors import Actor, ConfigError, ErrorCategory, Failure, MemoryJournal
from actors._policies._backoff import BackoffSettings
from actors._policies._breaker import BreakerSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._protocol import SagaReport
from actors._provider._actor import ProviderActor
from actors._saga._definition import (
    CompensationFailed,
    SagaDefinition,
    SagaFailed,
    SagaStep,
    StepContext,
    StepError,
    step_key,
)
from actors._saga._journals._records import JournalError, SagaEvent, SagaEventKind, SagaHeader
from actors._saga._journals._state import SagaState
from actors._saga._messages import GetSaga, GetSagaStatistics, SagaInfo, SagaResult, StartSaga
from supervisors import ChildSpec, RestartBackoff
from tests.test_saga import QUICK_RETRY, World, chain, saga_tree, service, wait_finished
from tests.test_saga_recovery import done, journal_at

K = SagaEventKind

#: Step retries on timeouts: 2 attempts, 1 s apart.
RETRY_TIMEOUTS = RetrySettings(
    max_attempts=2,
    retry_on=[ErrorCategory.TIMEOUT],
    total_timeout=None,
    backoff=BackoffSettings(kind="constant", base_delay=1.0, jitter="none"),
)

SECRET_KEY = "sk-live0123456789abcdefghijklmnop"
SECRET_TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"
SECRET_URL = "https://admin:hunter2hunter2@payments.example.com/v1/charge"
SECRETS = (SECRET_KEY, SECRET_TOKEN, "hunter2hunter2")
LEAKY = f"upstream said no (key {SECRET_KEY}, Authorization: Bearer {SECRET_TOKEN}, {SECRET_URL})"


def journaled_errors(events: Sequence[SagaEvent]) -> list[StepError]:
    return [
        msgspec.msgpack.decode(e.data, type=StepError)
        for e in events
        if e.kind in (K.STEP_FAILED, K.COMPENSATION_FAILED_STEP, K.COMPENSATION_FAILED) and e.data
    ]


# ------------------------------------------------- a step that may have landed stays uncertain


async def test_a_charge_that_timed_out_and_whose_retry_is_refused_is_refunded(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Attempt 1 applies the charge but its reply is lost; the retry (same key) is refused
    ("already charged"): the step may have taken effect, so its compensation runs."""
    world = World()
    world.plan("ch:s1", "lose", "reject")
    definition = chain(2, timeout=2.0, retry=RETRY_TIMEOUTS)
    async with saga_tree(world, [definition]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="ch"))
    assert world.forward("ch") == ["s0", "s1"]
    assert world.compensations("ch") == ["s1", "s0"]
    assert caught.value.outcome == "compensated"


async def test_a_step_re_sent_after_a_crash_and_refused_is_compensated(
    mock_clock: trio.testing.MockClock,
) -> None:
    """kill -9 after the charge landed: the re-send with the same key is refused as a
    duplicate; the step was sent twice, so it may have taken effect: it is compensated."""
    world = World()
    world.applied["k:s0"] += 1  # the effect landed before the crash; its reply was lost
    world.order.append("k:s0")
    world.replies["k:s0"] = {"by": "a", "key": "k:s0", "payload": None}
    world.plan("k:s0", "reject")
    journal = MemoryJournal()
    await journal_at(journal, "k", [(K.STEP_STARTED, 0, b"")])
    async with saga_tree(world, [chain(2)], journal=journal) as root:
        info = await wait_finished(root, "k")
    assert info.phase == "compensated"
    assert world.compensations("k") == ["s0"]


class Charges:
    """A payment service behind a provider actor: applies a charge once per key; a second
    request with the same key is refused ("already charged"), as many real gateways do."""

    def __init__(self, *, slow_first: float = 0.0) -> None:
        self.applied: Counter[str] = Counter()
        self.slow_first = slow_first

    async def __call__(self, payload: Any) -> Any:
        key = payload["key"]
        if key in self.applied:
            raise ValueError(f"already charged: {key}")
        self.applied[key] += 1
        if self.slow_first and not key.endswith(":compensate"):
            await trio.sleep(self.slow_first)  # applied, then the attempt times out
        return {"charged": key}


def charge_definition(*, compensate_timeout: float = 5.0) -> SagaDefinition:
    return SagaDefinition(
        "pay",
        [
            SagaStep(
                "charge",
                "pay",
                action=lambda ctx: {"key": ctx.key},
                compensate=lambda ctx: {"key": ctx.key},
                timeout=30.0,
                compensation_timeout=compensate_timeout,
                compensation_retry=QUICK_RETRY,
            )
        ],
    )


@pytest.mark.parametrize("breaker_opens", [False, True])
async def test_a_provider_retry_after_a_timeout_that_landed_keeps_the_step_uncertain(
    mock_clock: trio.testing.MockClock, breaker_opens: bool
) -> None:
    """The provider's attempt 1 applies the charge and times out; its retry is refused as a
    duplicate (RetriesExhausted after 2 attempts) or hits the breaker the timeout opened
    (CircuitOpen, the timeout as its cause): either way the charge is refunded."""
    charges = Charges(slow_first=10.0)
    breaker = (
        BreakerSettings(failure_threshold=1, minimum_throughput=1, break_duration=0.5)
        if breaker_opens
        else BreakerSettings()
    )
    settings = ProviderSettings(
        breaker=breaker,
        retry=RetrySettings(
            max_attempts=2,
            attempt_timeout=1.0,
            backoff=BackoffSettings(kind="constant", base_delay=1.0, jitter="none"),
        ),
    )
    provider = ChildSpec("pay", lambda: ProviderActor("pay", charges, settings))
    async with saga_tree(World(), [charge_definition()], extra=[provider]) as root:
        with pytest.raises(SagaFailed) as caught:
            await root.ref("sagas").ask(StartSaga("pay", saga_id="o"))
    assert charges.applied == Counter({"o:charge": 1, "o:charge:compensate": 1})
    assert caught.value.outcome == "compensated"


# --------------------------------------------------------- delivery="auto" during a restart


class CrashableProvider(ProviderActor):
    """A provider actor that crashes when told "crash"."""

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crashed on purpose")
        return await super().handle(message)


async def test_auto_delivery_is_not_decided_while_the_target_restarts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A saga sent while its provider waits out a long restart backoff fails without a send;
    the undecided delivery is not cached, so the sagas after the restart reach the provider
    with a Call (never an envelope it answers with TypeError)."""

    async def pay(payload: Any) -> Any:
        return {"paid": payload}

    provider = ChildSpec(
        "pay",
        lambda: CrashableProvider("pay", pay),
        backoff=RestartBackoff(min_delay=60.0, max_delay=60.0, jitter=0.0),
    )
    definition = SagaDefinition(
        "pay", [SagaStep("charge", "pay", action=lambda ctx: ctx.input, timeout=5.0)]
    )
    async with saga_tree(World(), [definition], extra=[provider]) as root:
        coordinator = root.ref("sagas")
        root.ref("pay").tell_nowait("crash")
        await trio.sleep(1.0)  # the provider now waits 60 s before its restart
        with pytest.raises(SagaFailed) as caught:
            await coordinator.ask(StartSaga("pay", 1, saga_id="early"), timeout=600)
        assert caught.value.outcome == "failed"
        info = await coordinator.ask(GetSaga("early"))
        await trio.sleep(120.0)
        result = await coordinator.ask(StartSaga("pay", 2, saga_id="late"))
    assert result.results == {"charge": {"paid": 2}}
    assert [e.detail for e in info.events if e.kind == "step_started"] == ["not sent"]


# ------------------------------------------------------- a StartSaga retry racing retention


class PrunedUnderneath(MemoryJournal):
    """A journal whose retention removes a finished saga just as a create of the same id is
    refused (the auto-prune of another batch ran in between)."""

    async def create(
        self, header: SagaHeader, first_event: SagaEvent, *, then: Sequence[SagaEvent] = ()
    ) -> SagaState:
        try:
            return await super().create(header, first_event, then=then)
        except JournalError:
            await super().discard(header.saga_id)
            raise


async def test_a_start_retry_racing_the_prune_of_its_saga_is_answered_not_a_crash(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The saga finished, its caller retries StartSaga, and retention removes the saga
    between the refused create and the read-back: the caller gets a clear error and the
    coordinator keeps running (same incarnation, other sagas unaffected)."""
    world = World()
    journal = PrunedUnderneath()
    async with saga_tree(world, [chain(1)], journal=journal) as root:
        coordinator = root.ref("sagas")
        await coordinator.ask(StartSaga("order", saga_id="again"))
        with pytest.raises(JournalError, match="pruned"):
            await coordinator.ask(StartSaga("order", saga_id="again"))
        await coordinator.ask(StartSaga("order", saga_id="other"))
        assert coordinator.statistics().restarts == 0
    assert world.applied["again:s0"] == 1


# ------------------------------------------------------------------- keys never collide


def test_a_step_named_compensate_is_refused_so_keys_cannot_collide() -> None:
    """``step_key("order:ship", "compensate")`` would equal the key of the compensation of step
    "ship" of saga "order": a step may not be called "compensate"."""
    with pytest.raises(ConfigError, match="compensate"):
        SagaStep("compensate", "a", action=lambda ctx: None)
    with pytest.raises(ValueError, match="compensate"):
        step_key("order:ship", "compensate")
    with pytest.raises(ValueError, match=":"):
        step_key("order", "ship:compensate")
    assert step_key("order:ship", "x") != step_key("order", "ship", compensate=True)
    assert step_key("order", "ship", compensate=True) == "order:ship:compensate"


# ---------------------------------------------------- what is journaled, logged and reported


class Leaky(Actor[Any, Any]):
    """A service whose errors quote credentials (as provider errors often do)."""

    async def handle(self, message: Any) -> Any:
        return Failure(ValueError(LEAKY + " x" * 1500))


async def test_journaled_errors_logs_and_reports_never_hold_a_secret(
    mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A step and its compensation fail with errors quoting an API key, a bearer token and a
    URL password: the journal, every saga log line (INFO, WARNING, ERROR), the monitor report
    and the caller's error hold none of them, and the journaled message is bounded."""
    world = World()
    reports: list[Any] = []
    journal = MemoryJournal()
    leaky = ChildSpec("leaky", Leaky)
    definition = SagaDefinition(
        "order",
        [
            SagaStep(
                "s0",
                "leaky",
                action=lambda ctx: 1,
                compensate=lambda ctx: 2,
                compensation_retry=QUICK_RETRY,
                compensate_failed="always",
            )
        ],
    )
    plain = SagaDefinition("plain", [SagaStep("s0", "leaky", action=lambda ctx: 1)])
    caplog.set_level(logging.DEBUG, logger="actors.saga")
    async with saga_tree(
        world, [definition, plain], journal=journal, reports=reports, extra=[leaky]
    ) as root:
        with pytest.raises(CompensationFailed) as caught:
            await root.ref("sagas").ask(StartSaga("order", saga_id="leak"))
        with pytest.raises(SagaFailed) as failed:
            await root.ref("sagas").ask(StartSaga("plain", saga_id="plain"))
        await trio.sleep(1.0)
    found = await journal.get("leak")
    assert found is not None
    errors = journaled_errors(found[1])
    assert len(errors) == 4  # step_failed, two retried compensations, compensation_failed
    texts = [e.message for e in errors]
    texts += [r.getMessage() for r in caplog.records if r.name == "actors.saga"]
    texts += [r.detail for r in reports if isinstance(r, SagaReport)]
    texts += [str(caught.value), caught.value.reason, caught.value.compensation_error]
    texts += [str(failed.value)]
    levels = {r.levelno for r in caplog.records if r.name == "actors.saga"}
    assert {logging.INFO, logging.WARNING, logging.ERROR} <= levels
    assert any("[REDACTED]" in text for text in texts)
    for text in texts:
        for secret in SECRETS:
            assert secret not in text
    assert all(len(e.message) < 1200 for e in errors)


class FullMonitor(Actor[Any, Any]):
    """A monitor busy for a long time with a mailbox of one: critical reports must wait."""

    def __init__(self, into: list[Any], busy: float) -> None:
        self.into = into
        self.busy = busy

    async def handle(self, message: Any) -> Any:
        if message == "busy":
            await trio.sleep(self.busy)
        self.into.append(message)
        return None


async def test_a_compensation_failed_report_waits_for_room_in_a_full_monitor(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The monitor's mailbox is full when a saga ends compensation_failed: the report is
    delivered once there is room (never dropped), and the coordinator's other sagas go on
    meanwhile."""
    world = World()
    reports: list[Any] = []
    world.plan("cf:s1", "reject")
    world.plan("cf:s0:compensate", "reject", "reject", "reject")
    monitor = ChildSpec("monitor", lambda: FullMonitor(reports, 100.0), mailbox_capacity=1)
    async with saga_tree(world, [chain(2)], extra=[monitor], monitor="monitor") as root:
        root.ref("monitor").tell_nowait("busy")  # handled for 100 s...
        await trio.sleep(0.1)
        root.ref("monitor").tell_nowait("filler")  # ...and this fills its mailbox
        coordinator = root.ref("sagas")
        with pytest.raises(CompensationFailed):
            await coordinator.ask(StartSaga("order", saga_id="cf"))
        result = await coordinator.ask(StartSaga("order", saga_id="fine"))
        assert isinstance(result, SagaResult)
        assert trio.current_time() < 50.0
        await trio.sleep(200.0)
        stats = await coordinator.ask(GetSagaStatistics())
    delivered = [r for r in reports if isinstance(r, SagaReport)]
    assert [(r.saga_id, r.status) for r in delivered] == [("cf", "compensation_failed")]
    assert (stats.reports_sent, stats.reports_dropped) == (1, 0)


# ----------------------------------------------------------------------- the audit trail


def send_details(info: SagaInfo) -> list[str]:
    return [e.detail for e in info.events if e.kind in ("step_started", "compensation_started")]


async def test_the_audit_trail_says_not_sent_for_messages_that_never_left(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A builder that raised, a target gone (stopped for good after the coordinator started:
    one missing at its start stops the start), a caller gone before the send: the audit trail
    says "not sent", never "sent"."""

    def broken(ctx: StepContext) -> Any:
        raise RuntimeError("cannot build")

    world = World()
    definitions = [
        SagaDefinition("builder", [SagaStep("s0", "a", action=broken)]),
        SagaDefinition("missing", [SagaStep("s0", "gone", action=lambda ctx: 1)]),
        SagaDefinition(
            "undo",
            [
                SagaStep(
                    "s0",
                    "a",
                    action=lambda ctx: 1,
                    compensate=broken,
                    compensation_retry=QUICK_RETRY,
                ),
                SagaStep("s1", "b", action=broken),
            ],
        ),
    ]
    async with saga_tree(
        world, definitions, extra=[ChildSpec("gone", service("gone", world))]
    ) as root:
        await root.terminate_child("gone")
        coordinator = root.ref("sagas")
        infos = {}
        for name in ("builder", "missing", "undo"):
            with pytest.raises(SagaFailed):
                await coordinator.ask(StartSaga(name, saga_id=name))
            infos[name] = await coordinator.ask(GetSaga(name))
    assert send_details(infos["builder"]) == ["not sent"]
    assert send_details(infos["missing"]) == ["not sent"]
    assert send_details(infos["undo"]) == ["sent", "not sent", "not sent"]
    assert world.delivered == ["undo:s0"]


async def test_the_audit_trail_says_sent_and_why_a_step_was_re_sent(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A retried step: the first send is "sent", the retry says which error it follows."""
    world = World()
    world.plan("rs:s0", "lose")
    async with saga_tree(world, [chain(1, timeout=2.0, retry=RETRY_TIMEOUTS)]) as root:
        await root.ref("sagas").ask(StartSaga("order", saga_id="rs"))
        info = await root.ref("sagas").ask(GetSaga("rs"))
    first, second = send_details(info)
    assert first == "sent"
    assert second.startswith("re-sent (attempt 2) after AskTimeout")


async def test_a_step_in_flight_is_shown_as_in_flight(mock_clock: trio.testing.MockClock) -> None:
    """The last send of a running saga has no outcome yet: "in flight"."""
    world = World()
    world.plan("f:s0", ("sleep", 10.0))
    async with saga_tree(world, [chain(1)]) as root:
        await root.ref("sagas").ask(StartSaga("order", saga_id="f", wait=False))
        await trio.sleep(1.0)
        info = await root.ref("sagas").ask(GetSaga("f"))
        await wait_finished(root, "f")
    assert send_details(info) == ["in flight"]


async def test_a_send_interrupted_by_a_restart_is_not_claimed_as_sent(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A step_started followed by the re-send of a restarted coordinator: nobody knows whether
    it left, and the audit trail says so."""
    world = World()
    journal = MemoryJournal()
    await journal_at(journal, "i", [*done("i", 0), (K.STEP_STARTED, 1, b"")])
    async with saga_tree(world, [chain(2)], journal=journal) as root:
        info = await wait_finished(root, "i")
    assert send_details(info) == [
        "sent",
        "interrupted (may not have been sent)",
        "re-sent (attempt 2)",
    ]


# ----------------------------------------------------------- what GET /sagas/{id} may show


async def test_saga_info_without_personal_data_hides_replies_metadata_and_input(
    mock_clock: trio.testing.MockClock,
) -> None:
    """``without_personal_data()`` keeps the audit trail's shape but not the step replies, the
    metadata or the input."""
    world = World()
    async with saga_tree(world, [chain(2)]) as root:
        await root.ref("sagas").ask(
            StartSaga("order", {"email": "ann@example.com"}, saga_id="p", metadata={"user": "ann"})
        )
        info = await root.ref("sagas").ask(GetSaga("p"))
    hidden = info.without_personal_data()
    assert hidden.input is None
    assert hidden.metadata == {}
    assert [e.kind for e in hidden.events] == [e.kind for e in info.events]
    text = msgspec.json.encode(hidden).decode()
    assert "ann" not in text
    assert "'key'" not in text
    assert all(
        e.detail == "completed (reply hidden)" for e in hidden.events if e.kind == "step_completed"
    )
    assert any("ann" in e.detail for e in info.events)  # the original is unchanged


async def test_the_admin_api_hides_step_replies_and_metadata_unless_saga_input_is_on() -> None:
    """GET /sagas/{id} with saga_input=False shows neither step replies nor metadata."""
    from tests.test_admin_api import admin_app

    for shown in (False, True):
        async with admin_app(saga_input=shown) as (root, client):
            await root.ref("sagas").ask(
                StartSaga("order", {"what": "ann"}, saga_id="s1", metadata={"owner": "ann"})
            )
            response = await client.get("/api/resilience/sagas/s1")
            assert response.status_code == 200
            body = response.json()
            completed = [e["detail"] for e in body["events"] if e["kind"] == "step_completed"]
            assert completed
            if shown:
                assert body["metadata"] == {"owner": "ann"}
                assert all(d != "completed (reply hidden)" for d in completed)
            else:
                assert body["metadata"] == {}
                assert body["input"] is None
                assert completed == ["completed (reply hidden)"] * len(completed)


# ---------------------------------------------------------------- unencodable saga ids


@pytest.mark.parametrize("saga_id", ["x\udcff", "\udc80"])
async def test_saga_ids_that_cannot_be_stored_are_refused_at_intake(
    mock_clock: trio.testing.MockClock, saga_id: str
) -> None:
    """A saga id with a lone surrogate gets a clear error from every message that takes one;
    the coordinator keeps running."""
    from actors._saga._messages import DiscardSaga

    async with saga_tree(World(), [chain(1)]) as root:
        coordinator = root.ref("sagas")
        for message in (
            StartSaga("order", saga_id=saga_id),
            GetSaga(saga_id),
            DiscardSaga(saga_id),
        ):
            with pytest.raises(ValueError, match="saga_id"):
                await coordinator.ask(message)
        await coordinator.ask(StartSaga("order", saga_id="fine"))
        assert coordinator.statistics().restarts == 0


def test_nan_and_infinite_times_are_refused_by_the_state_machine() -> None:
    """An event's ``at`` must be a finite float: a NaN would be stored as NULL by SQLite."""
    header = SagaHeader("s", "d", 1.0)
    state = SagaState.new(header)
    for at in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="finite"):
            state.advance(SagaEvent("s", 0, K.STARTED, None, at))
    state = state.advance(SagaEvent("s", 0, K.STARTED, None, 1.0))
    with pytest.raises(ValueError, match="finite"):
        state.advance(SagaEvent("s", 1, K.STEP_STARTED, 0, math.nan))


async def test_a_saga_waiting_for_an_operator_is_reported_again_when_a_coordinator_starts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The report of a compensation_failed saga can be lost with a killed process: the next
    coordinator reports it again (the monitor keeps one alert per saga)."""
    failure = msgspec.msgpack.encode(StepError("ValueError", "refund refused", "validation"))
    journal = MemoryJournal()
    await journal_at(
        journal,
        "w",
        [
            *done("w", 0),
            (K.STEP_STARTED, 1, b""),
            (K.STEP_FAILED, 1, failure),
            (K.COMPENSATING, None, failure),
            (K.COMPENSATION_STARTED, 0, b""),
            (K.COMPENSATION_FAILED, 0, failure),
        ],
    )
    reports: list[Any] = []
    async with saga_tree(World(), [chain(2)], journal=journal, reports=reports):
        await trio.sleep(1.0)
    ((report,),) = [[r for r in reports if isinstance(r, SagaReport)]]
    assert (report.saga_id, report.status, report.step) == ("w", "compensation_failed", 0)
    assert "refund refused" in report.detail


async def test_an_input_that_cannot_be_encoded_is_refused_without_a_crash(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A saga input holding a lone surrogate gets a TypeError naming the input; the
    coordinator keeps running."""
    async with saga_tree(World(), [chain(1)]) as root:
        coordinator = root.ref("sagas")
        with pytest.raises(TypeError, match="input"):
            await coordinator.ask(StartSaga("order", {"name": "x\udcff"}, saga_id="bad"))
        await coordinator.ask(StartSaga("order", saga_id="fine"))
        assert coordinator.statistics().restarts == 0


@pytest.mark.parametrize("saga_id", ["a\x1b[2Jb", "line\nINFO health=healthy", "x\u202ey", "\t"])
async def test_a_new_saga_id_must_be_printable(
    mock_clock: trio.testing.MockClock, saga_id: str
) -> None:
    """Saga ids reach terminals and log lines: a control character, a line break or a bidi
    override is refused when a saga is started (nothing journaled); queries of such an id
    still answer (a journal written before may hold one)."""
    journal = MemoryJournal()
    async with saga_tree(World(), [chain(1)], journal=journal) as root:
        coordinator = root.ref("sagas")
        with pytest.raises(ValueError, match="printable"):
            await coordinator.ask(StartSaga("order", saga_id=saga_id))
        assert await coordinator.ask(GetSaga(saga_id)) is None
        assert coordinator.statistics().restarts == 0
    assert await journal.get(saga_id) is None
