"""Composition: injectors around a function (:func:`wrap`) or an actor factory
(:func:`wrap_actor`), and a provider's ``chaos`` section turned into injectors.

The settings themselves (:class:`~actors.ChaosSettings`) are pure configuration and live with
the configuration schema; this module builds what they describe.
"""

from __future__ import annotations

import functools
import random as _random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, ParamSpec, TypeVar, cast

from actors._policies._config._chaos import ChaosSettings
from actors.chaos._injectors import (
    _PROCEED,
    FaultInjector,
    Injector,
    LatencyInjector,
    OutcomeInjector,
)

P = ParamSpec("P")
T = TypeVar("T")
A = TypeVar("A")


#: The attribute of a wrapped function that lists its injectors (see :func:`injectors_of`).
_INJECTORS: Final = "__chaos_injectors__"


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
