"""Chaos injection: faults, substitute outcomes, latency, behaviours and crashes, on purpose.

Theory of operation
-------------------
An *injector* decides, call by call, whether to disturb a call, and how.  Each one has an
injection ``rate`` (the probability that it acts on a call), an ``enabled`` switch that can be
flipped while the system runs, an optional ``when`` predicate (it only considers calls the
predicate accepts), and its own seeded random source, so a failing run is replayed by running it
again with the seed shown in :meth:`Injector.statistics`.  Injectors count what they did.

There are five kinds, after Polly v8's chaos strategies plus an actor crash:

=====================  ===========================================================  ==========
injector               what it does when it acts                                   the call
=====================  ===========================================================  ==========
:class:`FaultInjector`     raises a realistic exception of an error category        not made
:class:`OutcomeInjector`   returns a substitute outcome                             not made
:class:`LatencyInjector`   sleeps (``trio.sleep``, so ``MockClock`` works) first    made after
:class:`BehaviourInjector` awaits an arbitrary async callable first                 made after
:class:`CrashInjector`     raises :class:`InjectedCrash` (in an actor: a crash)     not made
=====================  ===========================================================  ==========

:func:`wrap` composes injectors around any async function (a provider's service function, a
client method, an actor's ``handle``) and returns an async function with the same signature.
The injectors are consulted in the order given; the first one that ends the call (a fault, an
outcome, a crash) wins, and latency or behaviours before it have already run.

:func:`wrap_actor` wraps an actor *factory*: every actor it builds has its ``handle`` wrapped
with the given injectors (a :class:`CrashInjector` there crashes the actor while it handles a
message: the caller gets ``ActorCrashed`` and the supervisor restarts it) and its ``on_start``
wrapped with the ``start`` injectors (a crash at start).  Users do not subclass anything, and
the injectors are shared by every incarnation, so counts and the random sequence carry on across
restarts.

Faults are built to look like what real clients raise (:func:`fault`), so the classifier sorts
them as it sorts real failures: ``ConnectionResetError`` for ``network``, ``TimeoutError`` for
``timeout``, an HTTP status error with ``Retry-After`` for ``rate_limit`` (429) and
``dependency`` (503), 400 / 401 / 409 for ``validation`` / ``authentication`` /
``invalid_state``.  Every injected exception is marked: :func:`is_injected` tells an injected
failure (or an error caused by one) from a real one.

Configuration: a provider's ``chaos`` section (:class:`ChaosSettings`, off by default) wraps
its service function with latency, fault and outcome injectors built by
:func:`injectors_from_settings`.  Each incarnation of the provider builds them anew from the
seed, so a restart replays the same sequence.

This module imports trio only for :class:`LatencyInjector`'s sleep; the decisions themselves
are plain code over ``random.Random``.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import errno
import functools
import math
import random as _random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final, ParamSpec, TypeVar, cast

import attrs
import msgspec
import trio

from actors._errors import ConfigError, ErrorCategory

__all__ = [
    "BehaviourInjector",
    "ChaosSettings",
    "CrashInjector",
    "FaultInjector",
    "InjectedCrash",
    "InjectedHTTPError",
    "Injector",
    "InjectorStatistics",
    "LatencyInjector",
    "OutcomeInjector",
    "fault",
    "injectors_from_settings",
    "injectors_of",
    "is_injected",
    "wrap",
    "wrap_actor",
    "wrap_provider_function",
]

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")

#: The attribute that marks an exception as injected (see :func:`is_injected`).
_MARK: Final = "_aura_chaos_injected"
#: The attribute of a wrapped function that lists its injectors (see :func:`injectors_of`).
_INJECTORS: Final = "__chaos_injectors__"


class _Proceed:
    """The sentinel an injector returns to let the call go on."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PROCEED"


_PROCEED: Final = _Proceed()
_MISSING: Final[Any] = object()


# ------------------------------------------------------------------------ injected exceptions


class InjectedHTTPError(Exception):
    """An HTTP error status, shaped as HTTP clients raise it (``status_code``, ``headers``).

    The classifier reads the status (429 is ``rate_limit``, 5xx ``dependency``, other 4xx
    mostly ``validation``) and the ``Retry-After`` header, as for ``httpx.HTTPStatusError``.

    Attributes:
        status_code: the HTTP status.
        headers: the response headers (``{"Retry-After": "2"}`` when ``retry_after`` is given).
    """

    def __init__(
        self, status_code: int, reason: str = "", *, retry_after: float | None = None
    ) -> None:
        text = f"HTTP {status_code}" + (f" {reason}" if reason else "")
        super().__init__(f"{text} (injected by chaos)")
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        if retry_after is not None:
            self.headers["Retry-After"] = f"{retry_after:g}"


class InjectedCrash(RuntimeError):
    """The exception a :class:`CrashInjector` raises: in an actor, a crash on purpose."""


#: What :func:`fault` builds for each category: (status, reason) for HTTP-like faults.
_HTTP: Final[dict[ErrorCategory, tuple[int, str]]] = {
    ErrorCategory.RATE_LIMIT: (429, "Too Many Requests"),
    ErrorCategory.DEPENDENCY: (503, "Service Unavailable"),
    ErrorCategory.VALIDATION: (400, "Bad Request"),
    ErrorCategory.AUTHENTICATION: (401, "Unauthorized"),
    ErrorCategory.INVALID_STATE: (409, "Conflict"),
}


def _category(value: object, path: str = "category") -> ErrorCategory:
    if isinstance(value, ErrorCategory):
        return value
    try:
        return ErrorCategory(value)
    except ValueError:
        names = ", ".join(repr(c.value) for c in ErrorCategory)
        raise ConfigError(
            f"unknown error category {value!r}; expected one of {names}", path=path
        ) from None


def fault(category: ErrorCategory | str, *, retry_after: float | None = None) -> BaseException:
    """A fresh, realistic exception of ``category``, marked as injected.

    =================  ====================================================================
    category           exception
    =================  ====================================================================
    ``network``        ``ConnectionResetError(ECONNRESET, "Connection reset by peer")``
    ``timeout``        ``TimeoutError("timed out")``
    ``rate_limit``     :class:`InjectedHTTPError` 429 with ``Retry-After: retry_after``
    ``dependency``     :class:`InjectedHTTPError` 503 (``Retry-After`` when given)
    ``validation``     :class:`InjectedHTTPError` 400
    ``authentication`` :class:`InjectedHTTPError` 401
    ``invalid_state``  :class:`InjectedHTTPError` 409
    ``configuration``  ``FileNotFoundError(ENOENT, ..., "credentials.json")``
    ``cancellation``   ``concurrent.futures.CancelledError`` (a remote cancellation)
    ``unknown``        ``RuntimeError``
    =================  ====================================================================

    The built-in classifier sorts each one back into ``category``.

    Raises:
        ConfigError: an unknown category name.

    Example::

        with pytest.raises(ConnectionResetError):
            raise chaos.fault("network")
    """
    kind = _category(category)
    exc: BaseException
    if kind is ErrorCategory.NETWORK:
        exc = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected by chaos)")
    elif kind is ErrorCategory.TIMEOUT:
        exc = TimeoutError("timed out (injected by chaos)")
    elif kind in _HTTP:
        status, reason = _HTTP[kind]
        if kind is ErrorCategory.RATE_LIMIT and retry_after is None:
            retry_after = 1.0
        wait = retry_after if kind in (ErrorCategory.RATE_LIMIT, ErrorCategory.DEPENDENCY) else None
        exc = InjectedHTTPError(status, reason, retry_after=wait)
    elif kind is ErrorCategory.CONFIGURATION:
        exc = FileNotFoundError(
            errno.ENOENT, "No such file or directory (injected by chaos)", "credentials.json"
        )
    elif kind is ErrorCategory.CANCELLATION:
        exc = concurrent.futures.CancelledError("the request was cancelled (injected by chaos)")
    else:
        exc = RuntimeError("unexpected failure (injected by chaos)")
    setattr(exc, _MARK, True)
    return exc


def is_injected(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was caused by, was injected by chaos.

    Follows ``__cause__``, ``cause`` and ``last_error`` (so a ``RetriesExhausted`` whose last
    attempt failed with an injected fault is injected too), up to 16 links.
    """
    seen = 0
    error: object = exc
    while isinstance(error, BaseException) and seen < 16:
        if getattr(error, _MARK, False):
            return True
        nxt = error.__cause__
        if nxt is None:
            nxt = getattr(error, "last_error", None) or getattr(error, "cause", None)
        error = nxt
        seen += 1
    return False


# ---------------------------------------------------------------------------------- injectors


@attrs.frozen
class InjectorStatistics:
    """A snapshot of one injector's counters.

    Attributes:
        kind: ``"fault"``, ``"outcome"``, ``"latency"``, ``"behaviour"`` or ``"crash"``.
        enabled: whether it is switched on.
        rate: its injection rate.
        seed: the seed of its random source (``None`` when it was given a ``random.Random``):
            run again with this seed to replay its decisions.
        decisions: calls it considered (enabled, and accepted by ``when``).
        injected: calls it acted on.
        detail: a breakdown of ``injected`` (faults by category; latency as
            ``"seconds_total"`` in milliseconds, rounded).
    """

    kind: str
    enabled: bool
    rate: float
    seed: int | None
    decisions: int
    injected: int
    detail: dict[str, int] = attrs.field(factory=dict)


def _check_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigError(f"must be a number between 0 and 1, not {rate!r}", path="rate")
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"must be between 0 and 1, not {rate!r}", path="rate")
    return float(rate)


def _seconds(value: object, name: str) -> float:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number of seconds or a timedelta, not {value!r}", path=name)
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"must be a finite number of seconds >= 0, not {value!r}", path=name)
    return float(value)


class Injector:
    """Base class of the injectors: rate, switch, seeded randomness, ``when``, counters.

    Args:
        rate: the probability (0 to 1) that the injector acts on a call it considers.
        enabled: the initial state of the switch (default on); flip :attr:`enabled` at any time.
        seed: seeds the injector's own ``random.Random``; when neither ``seed`` nor ``rng`` is
            given a seed is drawn and shown by :meth:`statistics`, so any run can be replayed.
        rng: a ``random.Random`` to draw from instead (shared, or seeded by the caller).
        when: ``when(*args, **kwargs) -> bool``: only calls it accepts are considered (default:
            every call).

    Raises:
        ConfigError: a rate outside [0, 1], both ``seed`` and ``rng``, or a bad argument.

    Subclasses implement :meth:`_act`.  A disabled injector draws nothing, so turning one off
    and on again shifts its sequence: replay a run with the same switch flips.
    """

    __slots__ = ("_rate", "_rng", "_seed", "decisions", "enabled", "injected", "when")

    kind: ClassVar[str] = "injector"
    #: Whether acting ends the call (fault, outcome, crash) or lets it go on (latency, behaviour).
    ends_call: ClassVar[bool] = True

    def __init__(
        self,
        *,
        rate: float,
        enabled: bool = True,
        seed: int | None = None,
        rng: _random.Random | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        self._rate = _check_rate(rate)
        if seed is not None and rng is not None:
            raise ConfigError("give a seed or an rng, not both", path="seed")
        if rng is not None and not isinstance(rng, _random.Random):
            raise ConfigError(f"must be a random.Random, not {rng!r}", path="rng")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"must be an integer, not {seed!r}", path="seed")
        if when is not None and not callable(when):
            raise ConfigError(f"must be callable, not {when!r}", path="when")
        if rng is None:
            if seed is None:
                seed = _random.SystemRandom().randrange(2**32)
            rng = _random.Random(seed)
        self._seed = seed
        self._rng = rng
        self.enabled = bool(enabled)
        self.when = when
        self.decisions = 0
        self.injected = 0

    @property
    def rate(self) -> float:
        """The injection rate; may be changed at run time (validated like the argument)."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._rate = _check_rate(value)

    @property
    def seed(self) -> int | None:
        """The seed of the random source (``None`` when an ``rng`` was given)."""
        return self._seed

    def decide(self, *args: Any, **kwargs: Any) -> bool:
        """Whether to act on a call with these arguments (counts the decision).

        ``False`` without drawing when disabled or when ``when`` rejects the call.
        """
        if not self.enabled:
            return False
        when = self.when
        if when is not None and not when(*args, **kwargs):
            return False
        self.decisions += 1
        rate = self._rate
        if rate <= 0.0 or (rate < 1.0 and self._rng.random() >= rate):
            return False
        self.injected += 1
        return True

    async def _act(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Act on one call: raise, return a substitute outcome, or return ``_PROCEED``."""
        raise NotImplementedError

    def _detail(self) -> dict[str, int]:
        return {}

    def statistics(self) -> InjectorStatistics:
        """A frozen snapshot of the switch, rate, seed and counters."""
        return InjectorStatistics(
            kind=self.kind,
            enabled=self.enabled,
            rate=self._rate,
            seed=self._seed,
            decisions=self.decisions,
            injected=self.injected,
            detail=self._detail(),
        )

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"<{type(self).__name__} rate={self._rate:g} {state} injected={self.injected}>"


class FaultInjector(Injector):
    """Raise a realistic exception of one of ``categories`` (the call is not made).

    Args:
        *categories: :class:`~actors.ErrorCategory` values or names; each injected fault picks
            one uniformly (from the injector's random source).  See :func:`fault` for what is
            raised.
        rate: the injection rate.
        retry_after: the ``Retry-After`` seconds of injected 429s (and 503s); default 1.
        exception: ``exception() -> BaseException`` builds the exception instead (for faults
            of your own client's types); ``categories`` must then be empty.
        enabled, seed, rng, when: see :class:`Injector`.

    Example::

        faults = chaos.FaultInjector("network", "rate_limit", rate=0.2, seed=7)
        call = chaos.wrap(call_openai, faults)
    """

    __slots__ = ("_by_category", "categories", "exception", "retry_after")

    kind = "fault"

    def __init__(
        self,
        *categories: ErrorCategory | str,
        rate: float,
        retry_after: float | datetime.timedelta | None = 1.0,
        exception: Callable[[], BaseException] | None = None,
        enabled: bool = True,
        seed: int | None = None,
        rng: _random.Random | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        super().__init__(rate=rate, enabled=enabled, seed=seed, rng=rng, when=when)
        if exception is None and not categories:
            raise ConfigError("name at least one error category, or give `exception`", path="")
        if exception is not None and categories:
            raise ConfigError("give error categories or `exception`, not both", path="exception")
        if exception is not None and not callable(exception):
            raise ConfigError(f"must be callable, not {exception!r}", path="exception")
        self.categories: tuple[ErrorCategory, ...] = tuple(
            dict.fromkeys(_category(c, "categories") for c in categories)
        )
        self.retry_after = None if retry_after is None else _seconds(retry_after, "retry_after")
        self.exception = exception
        self._by_category: dict[str, int] = {}

    async def _act(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.exception is not None:
            exc = self.exception()
            if not isinstance(exc, BaseException):
                raise TypeError(f"the fault injector's exception() returned {exc!r}")
            setattr(exc, _MARK, True)
            name = type(exc).__name__
        else:
            categories = self.categories
            category = categories[0] if len(categories) == 1 else self._rng.choice(categories)
            exc = fault(category, retry_after=self.retry_after)
            name = category.value
        self._by_category[name] = self._by_category.get(name, 0) + 1
        raise exc

    def _detail(self) -> dict[str, int]:
        return dict(self._by_category)


class OutcomeInjector(Injector):
    """Return a substitute outcome instead of making the call.

    Args:
        value: the outcome to return (the same object every time).
        factory: ``factory(*args, **kwargs) -> outcome`` builds it from the call's arguments
            instead (give exactly one of ``value`` and ``factory``).  In an actor's ``handle``,
            returning ``actors.Failure(exc)`` answers the caller with ``exc``.
        rate, enabled, seed, rng, when: see :class:`Injector`.

    Example::

        cached = chaos.OutcomeInjector({"text": "(cached)"}, rate=0.1)
    """

    __slots__ = ("factory", "value")

    kind = "outcome"

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        rate: float,
        factory: Callable[..., Any] | None = None,
        enabled: bool = True,
        seed: int | None = None,
        rng: _random.Random | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        super().__init__(rate=rate, enabled=enabled, seed=seed, rng=rng, when=when)
        if (value is _MISSING) == (factory is None):
            raise ConfigError("give exactly one of `value` and `factory`", path="value")
        if factory is not None and not callable(factory):
            raise ConfigError(f"must be callable, not {factory!r}", path="factory")
        self.value = value
        self.factory = factory

    async def _act(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        if self.factory is not None:
            return self.factory(*args, **kwargs)
        return self.value


class LatencyInjector(Injector):
    """Wait before the call (with ``trio.sleep``: virtual time works), then make it.

    Args:
        delay: seconds (or a ``timedelta``) to wait.
        max_delay: when given, each wait is drawn uniformly from ``[delay, max_delay]``.
        rate, enabled, seed, rng, when: see :class:`Injector`.

    The wait is a normal trio sleep: a caller's deadline or an attempt timeout cancels it like
    a slow service.

    Example::

        slow = chaos.LatencyInjector(0.5, max_delay=2.0, rate=0.05)
    """

    __slots__ = ("delay", "max_delay", "total")

    kind = "latency"
    ends_call = False

    def __init__(
        self,
        delay: float | datetime.timedelta,
        *,
        rate: float,
        max_delay: float | datetime.timedelta | None = None,
        enabled: bool = True,
        seed: int | None = None,
        rng: _random.Random | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        super().__init__(rate=rate, enabled=enabled, seed=seed, rng=rng, when=when)
        self.delay = _seconds(delay, "delay")
        self.max_delay = None if max_delay is None else _seconds(max_delay, "max_delay")
        if self.max_delay is not None and self.max_delay < self.delay:
            raise ConfigError(
                f"must be >= delay ({self.delay:g}), not {self.max_delay:g}", path="max_delay"
            )
        self.total = 0.0

    def next_delay(self) -> float:
        """The next wait (draws from the random source when ``max_delay`` is set)."""
        if self.max_delay is None:
            return self.delay
        return self._rng.uniform(self.delay, self.max_delay)

    async def _act(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        seconds = self.next_delay()
        self.total += seconds
        await trio.sleep(seconds)
        return _PROCEED

    def _detail(self) -> dict[str, int]:
        return {"milliseconds_total": round(self.total * 1000)}


class BehaviourInjector(Injector):
    """Await an arbitrary async callable before the call, then make the call.

    Args:
        behaviour: ``async def behaviour(*args, **kwargs)``, called with the call's arguments:
            restart a child, fill a disk, drop a connection pool...  If it raises, the call
            fails with that exception.
        rate, enabled, seed, rng, when: see :class:`Injector`.

    Example::

        async def restart_cache(payload):
            await root.restart_child("cache")

        chaos.wrap(call_search, chaos.BehaviourInjector(restart_cache, rate=0.01))
    """

    __slots__ = ("behaviour",)

    kind = "behaviour"
    ends_call = False

    def __init__(
        self,
        behaviour: Callable[..., Awaitable[object]],
        *,
        rate: float,
        enabled: bool = True,
        seed: int | None = None,
        rng: _random.Random | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        super().__init__(rate=rate, enabled=enabled, seed=seed, rng=rng, when=when)
        if not callable(behaviour):
            raise ConfigError(f"must be an async callable, not {behaviour!r}", path="behaviour")
        self.behaviour = behaviour

    async def _act(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        await self.behaviour(*args, **kwargs)
        return _PROCEED


class CrashInjector(Injector):
    """Raise :class:`InjectedCrash` instead of making the call.

    In an actor's ``handle`` (see :func:`wrap_actor`) that is a crash while handling: the
    caller of the message gets ``ActorCrashed`` and the supervisor restarts the actor.  In its
    ``on_start`` (``wrap_actor(..., start=[...])``) it is a crash at start.

    Args:
        rate, enabled, seed, rng, when: see :class:`Injector`.
        message: the crash's message (default ``"crash injected by chaos"``).

    Example::

        factory = chaos.wrap_actor(Worker, chaos.CrashInjector(rate=0.01, seed=1))
    """

    __slots__ = ("message",)

    kind = "crash"

    def __init__(
        self,
        *,
        rate: float,
        message: str = "crash injected by chaos",
        enabled: bool = True,
        seed: int | None = None,
        rng: _random.Random | None = None,
        when: Callable[..., bool] | None = None,
    ) -> None:
        super().__init__(rate=rate, enabled=enabled, seed=seed, rng=rng, when=when)
        self.message = str(message)

    async def _act(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        exc = InjectedCrash(self.message)
        setattr(exc, _MARK, True)
        raise exc


# -------------------------------------------------------------------------------- composition


def _check_injectors(injectors: Iterable[object]) -> tuple[Injector, ...]:
    chain: list[Injector] = []
    for injector in injectors:
        if not isinstance(injector, Injector):
            raise TypeError(f"expected chaos injectors, got {injector!r}")
        chain.append(injector)
    return tuple(chain)


def wrap(
    fn: Callable[P, Awaitable[T]], *injectors: Injector
) -> Callable[P, Coroutine[Any, Any, T]]:
    """``fn`` with ``injectors`` around it: an async function with the same signature.

    For each call, the injectors are consulted in order; each one that decides to act does so
    (a latency waits, a behaviour runs, a fault or a crash raises, an outcome is returned).
    If none ends the call, ``fn`` is called.  Wrapping a wrapped function adds the new
    injectors outside the old ones.

    Raises:
        TypeError: ``fn`` is not callable or an argument is not an injector.

    Example::

        flaky = chaos.wrap(
            call_openai,
            chaos.LatencyInjector(0.2, rate=0.1, seed=1),
            chaos.FaultInjector("network", "rate_limit", rate=0.05, seed=2),
        )
        ProviderActor("openai", flaky, settings)
    """
    if not callable(fn):
        raise TypeError(f"chaos.wrap() needs an async callable, got {fn!r}")
    chain = _check_injectors(injectors)

    @functools.wraps(fn)
    async def chaotic(*args: P.args, **kwargs: P.kwargs) -> T:
        for injector in chain:
            if injector.enabled and injector.decide(*args, **kwargs):
                result = await injector._act(args, kwargs)
                if result is not _PROCEED:
                    return cast(T, result)
        return await fn(*args, **kwargs)

    inner = getattr(fn, _INJECTORS, ())
    setattr(chaotic, _INJECTORS, chain + tuple(inner))
    return chaotic


def injectors_of(fn: Callable[..., Any]) -> tuple[Injector, ...]:
    """The injectors of a function returned by :func:`wrap` (outermost first); ``()`` else."""
    found = getattr(fn, _INJECTORS, ())
    if not isinstance(found, tuple):
        return ()
    return tuple(item for item in found if isinstance(item, Injector))


def wrap_actor(
    factory: Callable[[], A], *injectors: Injector, start: Iterable[Injector] = ()
) -> Callable[[], A]:
    """An actor factory whose actors have chaos around ``handle`` and ``on_start``.

    Args:
        factory: the actor factory (a class or a zero-argument function), as given to a
            ``ChildSpec``.
        *injectors: wrapped around every built actor's ``handle`` (each consulted with the
            message).  A :class:`CrashInjector` makes the actor crash while handling; an
            :class:`OutcomeInjector` answers instead of the actor; a :class:`LatencyInjector`
            delays the mailbox.
        start: wrapped around ``on_start`` (consulted with no arguments): a
            :class:`CrashInjector` there makes the actor crash at start.

    The injectors are shared by every actor the factory builds, so they count (and draw
    their random numbers) across restarts.

    Raises:
        TypeError: ``factory`` is not callable or an argument is not an injector.

    Example::

        ChildSpec("worker", chaos.wrap_actor(
            Worker,
            chaos.CrashInjector(rate=0.01, seed=1),
            start=[chaos.CrashInjector(rate=0.1, seed=2)],
        ))
    """
    if not callable(factory):
        raise TypeError(f"chaos.wrap_actor() needs an actor factory, got {factory!r}")
    on_handle = _check_injectors(injectors)
    on_start = _check_injectors(start)

    def build() -> A:
        actor = factory()
        target = cast(Any, actor)
        if on_handle:
            target.handle = wrap(target.handle, *on_handle)
        if on_start:
            target.on_start = wrap(target.on_start, *on_start)
        return actor

    functools.update_wrapper(build, factory, updated=())
    setattr(build, _INJECTORS, on_handle + on_start)
    return build


# ------------------------------------------------------------------------------ configuration


class ChaosSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A provider's ``chaos`` section: injectors around its service function (off by default).

    Attributes:
        enabled: nothing is injected unless this is ``true`` (default ``false``).
        seed: seeds the injectors (each provider mixes in its name); ``None`` (default) draws
            a fresh seed per provider incarnation.
        fault_rate: probability that a call fails with an injected fault (default 0).
        faults: the categories of injected faults, picked uniformly (default network,
            timeout, rate_limit, dependency: the transient ones).
        retry_after: the ``Retry-After`` seconds of injected 429 / 503 faults (default 1).
        latency_rate: probability that a call is delayed (default 0).
        latency: seconds of injected delay (default 0).
        latency_max: when set, delays are drawn uniformly from ``[latency, latency_max]``.
        outcome_rate: probability that a call returns ``outcome`` without reaching the service
            (default 0).
        outcome: the substitute outcome (any JSON/TOML value; default ``None``).

    Order per call: latency, then fault, then outcome.  Rates are within [0, 1]; durations are
    seconds (or ``timedelta`` in code).  Invalid values raise
    :class:`~actors._errors.ConfigError` naming the field.

    Example (TOML)::

        [providers.openai.chaos]
        enabled = true
        seed = 7
        fault_rate = 0.1
        faults = ["network", "rate_limit"]
        latency_rate = 0.2
        latency = 0.05
        latency_max = 0.5
    """

    enabled: bool = False
    seed: int | None = None
    fault_rate: float = 0.0
    faults: frozenset[ErrorCategory] = frozenset(
        {
            ErrorCategory.NETWORK,
            ErrorCategory.TIMEOUT,
            ErrorCategory.RATE_LIMIT,
            ErrorCategory.DEPENDENCY,
        }
    )
    retry_after: float | None = 1.0
    latency_rate: float = 0.0
    latency: float = 0.0
    latency_max: float | None = None
    outcome_rate: float = 0.0
    outcome: Any = None

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            enabled: bool = ...,
            seed: int | None = ...,
            fault_rate: float = ...,
            faults: Iterable[ErrorCategory | str] = ...,
            retry_after: float | datetime.timedelta | None = ...,
            latency_rate: float = ...,
            latency: float | datetime.timedelta = ...,
            latency_max: float | datetime.timedelta | None = ...,
            outcome_rate: float = ...,
            outcome: Any = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"must be true or false, not {self.enabled!r}", path="enabled")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"must be an integer, not {seed!r}", path="seed")
        for name in ("fault_rate", "latency_rate", "outcome_rate"):
            try:
                value = _check_rate(getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(exc.problem, path=name) from None
            msgspec.structs.force_setattr(self, name, value)
        faults: object = self.faults
        if isinstance(faults, str | bytes) or not isinstance(faults, Iterable):
            raise ConfigError(
                f"must be a collection of category names, not {type(faults).__name__}",
                path="faults",
            )
        categories = frozenset(_category(item, "faults") for item in faults)
        if self.fault_rate > 0 and not categories:
            raise ConfigError("must name at least one category when fault_rate > 0", path="faults")
        msgspec.structs.force_setattr(self, "faults", categories)
        for name in ("latency", "retry_after", "latency_max"):
            value = getattr(self, name)
            if value is None and name != "latency":
                continue
            msgspec.structs.force_setattr(self, name, _seconds(value, name))
        if self.latency_max is not None and self.latency_max < self.latency:
            raise ConfigError(
                f"must be >= latency ({self.latency:g}), not {self.latency_max:g}",
                path="latency_max",
            )


def injectors_from_settings(settings: ChaosSettings, name: str = "") -> tuple[Injector, ...]:
    """The injectors a provider's ``chaos`` section describes: latency, fault, outcome.

    Injectors whose rate is 0 are left out; an empty tuple when ``enabled`` is false.  With a
    seed, each injector's random source is seeded from ``(seed, name, kind)``, so providers
    sharing a ``[defaults.chaos]`` section do not fail in lockstep.
    """
    if not settings.enabled:
        return ()

    def rng(kind: str) -> _random.Random | None:
        if settings.seed is None:
            return None
        return _random.Random(f"{settings.seed}:{name}:{kind}")

    chain: list[Injector] = []
    if settings.latency_rate > 0:
        chain.append(
            LatencyInjector(
                settings.latency,
                max_delay=settings.latency_max,
                rate=settings.latency_rate,
                rng=rng("latency"),
            )
        )
    if settings.fault_rate > 0:
        chain.append(
            FaultInjector(
                *sorted(settings.faults, key=lambda c: c.value),
                rate=settings.fault_rate,
                retry_after=settings.retry_after,
                rng=rng("fault"),
            )
        )
    if settings.outcome_rate > 0:
        chain.append(
            OutcomeInjector(settings.outcome, rate=settings.outcome_rate, rng=rng("outcome"))
        )
    return tuple(chain)


def wrap_provider_function(
    fn: Callable[[Any], Awaitable[Any]], settings: ChaosSettings | None, name: str = ""
) -> Callable[[Any], Awaitable[Any]]:
    """``fn`` wrapped with the injectors of ``settings`` (``fn`` itself when chaos is off).

    This is what a provider actor does with its ``chaos`` section.
    """
    if settings is None or not settings.enabled:
        return fn
    chain = injectors_from_settings(settings, name)
    return wrap(fn, *chain) if chain else fn
