"""The injectors: each decides, call by call, whether to disturb a call, and how.

:class:`Injector` holds what they share (the injection ``rate``, the ``enabled`` switch, the
``when`` predicate, a seeded random source and the counters); the five kinds differ only in
what they do when they act (see the package docstring's table).  The decisions are plain code
over ``random.Random``; trio is used only for :class:`LatencyInjector`'s sleep.
"""

from __future__ import annotations

import datetime
import random as _random
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

import attrs
import trio

from actors._errors import ConfigError, ErrorCategory
from actors._policies._config._chaos import _category, _check_rate, _seconds
from actors.chaos._faults import _MARK, InjectedCrash, fault


class _Proceed:
    """The sentinel an injector returns to let the call go on."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PROCEED"


_PROCEED: Final = _Proceed()
_MISSING: Final[Any] = object()


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

    ``enabled``, ``seed``, ``rng``, ``when``: as for :class:`Injector`.

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

    ``rate``, ``enabled``, ``seed``, ``rng``, ``when``: as for :class:`Injector`.

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

    ``rate``, ``enabled``, ``seed``, ``rng``, ``when``: as for :class:`Injector`.

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

    ``rate``, ``enabled``, ``seed``, ``rng``, ``when``: as for :class:`Injector`.

    Example::

        async def restart_cache(payload):
            await root.terminate_child("cache")
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
        message: the crash's message (default ``"crash injected by chaos"``).

    ``rate``, ``enabled``, ``seed``, ``rng``, ``when``: as for :class:`Injector`.

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
