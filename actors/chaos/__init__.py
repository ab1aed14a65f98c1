"""Chaos injection: faults, substitute outcomes, latency, behaviours and crashes, on purpose.

Theory of operation
-------------------
An *injector* decides, call by call, whether to disturb a call, and how.  Each one has an
injection ``rate`` (the probability that it acts on a call), an ``enabled`` switch that can be
flipped while the system runs, an optional ``when`` predicate (it only considers calls the
predicate accepts), and its own seeded random source, so a failing run is replayed by running it
again with the seed shown in :meth:`Injector.statistics`.  Injectors count what they did.

There are five kinds, after Polly v8's chaos strategies plus an actor crash:

| injector | what it does when it acts | the call |
| --- | --- | --- |
| :class:`FaultInjector` | raises a realistic exception of an error category | not made |
| :class:`OutcomeInjector` | returns a substitute outcome | not made |
| :class:`LatencyInjector` | sleeps (``trio.sleep``, so ``MockClock`` works) first | made after |
| :class:`BehaviourInjector` | awaits an arbitrary async callable first | made after |
| :class:`CrashInjector` | raises :class:`InjectedCrash` (in an actor: a crash) | not made |

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

Layout: injected exceptions and :func:`fault` in ``_faults``, the injectors in ``_injectors``,
:func:`wrap`, :func:`wrap_actor` and the settings' injectors in ``_compose``;
:class:`ChaosSettings` is configuration, defined with the schema in ``actors._policies`` and
re-exported here.
"""

from actors._metadata import fixup_module_metadata as _fixup_module_metadata
from actors._policies._config._chaos import ChaosSettings
from actors.chaos._compose import (
    injectors_from_settings,
    injectors_of,
    wrap,
    wrap_actor,
    wrap_provider_function,
)
from actors.chaos._faults import InjectedCrash, InjectedHTTPError, fault, is_injected
from actors.chaos._injectors import (
    BehaviourInjector,
    CrashInjector,
    FaultInjector,
    Injector,
    InjectorStatistics,
    LatencyInjector,
    OutcomeInjector,
)

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

# Public names show their public module in reprs, tracebacks and pickles (see actors._metadata).
_fixup_module_metadata(__name__, globals(), __all__)
del _fixup_module_metadata
