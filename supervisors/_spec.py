"""Child specifications: what a supervisor starts, and how it restarts it.

Theory of operation
-------------------
Specs are immutable descriptions, validated when they are built so that a typo fails at start-up
with a message naming the child, never later inside a running tree: a restart type or strategy
that does not exist lists the choices and the closest one, a ``backoff`` that is not a
:class:`RestartBackoff` is refused, and a factory that is an actor class is checked (an Actor
subclass with ``async def handle``); a factory function's result is checked when it is called.
A :class:`SupervisorSpec` is itself a child spec, which is how trees nest.  Durations are float
seconds or ``datetime.timedelta``; restart types and strategies accept their enum or its
lower-case name.

Defaults (the same as Elixir's supervisors): at most ``max_restarts=3`` restarts within
``period=5`` seconds before a supervisor gives up; workers get ``shutdown=5`` seconds to stop
gracefully, supervisors an unlimited grace (they stop their own children, each within its own
grace).  No restart backoff unless one is given.  The period must be finite, as in Erlang/OTP:
an infinite one would silently turn ``max_restarts`` into a budget for the tree's whole life.

A :class:`DynamicSupervisorSpec` describes a supervisor with no children at start whose
children are added at run time, from a template or ad hoc, each under a generated name
(Elixir's ``DynamicSupervisor``, Erlang/OTP's ``simple_one_for_one``).
"""

from __future__ import annotations

import datetime
import enum
import math
import random
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeAlias, TypeVar

import attrs

from actors._core._actor import Actor, check_actor_class
from actors._core._cell import DEFAULT_ASK_TIMEOUT, DEFAULT_CAPACITY
from actors._errors import choice

__all__ = [
    "ChildSpec",
    "DynamicSupervisorSpec",
    "Restart",
    "RestartBackoff",
    "Strategy",
    "SupervisorSpec",
]

# Covariant, so that a list of the specs of different actors (``[ChildSpec("a", A),
# ChildSpec("b", B)]``) type-checks as a list of specs: mypy joins ``ChildSpec[MA, RA]`` and
# ``ChildSpec[MB, RB]`` to ``object`` unless both are covariant.  A spec is only read (its
# factory called by a supervisor), and the refs it gives keep the actor's own types.
M = TypeVar("M", covariant=True)
R = TypeVar("R", covariant=True)


class Restart(enum.Enum):
    """When a child that exits is restarted (Erlang/OTP restart types).

    * ``PERMANENT``: always (the default).
    * ``TRANSIENT``: only when it exits abnormally (crashes); a normal stop is final.
    * ``TEMPORARY``: never; it is removed from the supervisor when it exits.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.Enum):
    """Which children are restarted when one of them must be.

    * ``ONE_FOR_ONE``: only that child.
    * ``ONE_FOR_ALL``: every child (the others are stopped in reverse start order first).
    * ``REST_FOR_ONE``: that child and every child started after it.
    """

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


def _seconds(value: float | datetime.timedelta) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected seconds (a number or timedelta), got {value!r}")
    return float(value)


def _restart(value: Restart | str) -> Restart:
    return choice(Restart, value, "restart")


def _strategy(value: Strategy | str) -> Strategy:
    return choice(Strategy, value, "strategy")


def _check_backoff(_instance: Any, _attribute: Any, value: object) -> None:
    if value is not None and not isinstance(value, RestartBackoff):
        raise TypeError(
            "backoff must be a RestartBackoff or None, got "
            f"{type(value).__name__} {value!r}: write backoff=RestartBackoff(min_delay=0.5, "
            "max_delay=30, factor=2, jitter=0.2, reset_after=60)"
        )


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} name must be a non-empty string, got {name!r}")
    if "/" in name or name != name.strip():
        raise ValueError(f"{what} name {name!r} must not contain '/' or surrounding spaces")


def _non_negative(what: str) -> Callable[[Any, Any, float], None]:
    def check(_instance: Any, _attribute: Any, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"{what} must be >= 0 seconds, got {value!r}")

    return check


@attrs.frozen
class RestartBackoff:
    """Delay restarts of a crashing child, growing exponentially (as Akka's restartWithBackoff).

    The ``n``-th consecutive restart (``n`` from 0) waits::

        delay(n) = min(max, min_delay * factor ** n * (1 + jitter * U))   with U uniform in [0, 1)

    ``n`` goes back to 0 once the child has run for ``reset_after`` seconds without crashing.
    While a child waits, its mailbox keeps accepting messages for the next incarnation.

    Example::

        RestartBackoff(min_delay=0.5, max_delay=30, factor=2, jitter=0.2, reset_after=60)
    """

    min_delay: float = attrs.field(default=0.1, converter=_seconds)
    max_delay: float = attrs.field(default=30.0, converter=_seconds)
    factor: float = 2.0
    jitter: float = 0.2
    reset_after: float = attrs.field(default=60.0, converter=_seconds)

    def __attrs_post_init__(self) -> None:
        if not self.min_delay >= 0:
            raise ValueError(f"RestartBackoff.min_delay must be >= 0, got {self.min_delay!r}")
        if not self.max_delay >= self.min_delay:
            raise ValueError(
                f"RestartBackoff.max_delay ({self.max_delay!r}) must be >= min_delay "
                f"({self.min_delay!r})"
            )
        if not self.factor >= 1:
            raise ValueError(f"RestartBackoff.factor must be >= 1, got {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RestartBackoff.jitter must be within [0, 1], got {self.jitter!r}")
        if not self.reset_after >= 0:
            raise ValueError(f"RestartBackoff.reset_after must be >= 0, got {self.reset_after!r}")

    def delay(self, n: int, rng: random.Random) -> float:
        """The delay before the ``n``-th consecutive restart (see the class docstring)."""
        base = self.min_delay * self.factor ** min(n, 1024)
        if base >= self.max_delay or math.isinf(base):
            return self.max_delay
        return min(self.max_delay, base * (1.0 + self.jitter * rng.random()))


@attrs.frozen
class ChildSpec(Generic[M, R]):
    """How to run one actor under a supervisor.

    Attributes:
        name: unique among its siblings; no ``/``.  The actor's path is its supervisor's path
            plus this name (``"providers/openai"``).
        factory: builds a fresh actor instance; called for every (re)start.  A dynamic
            supervisor's template factory is called with the arguments given to its
            ``start_child`` (the same ones again at every restart).
        restart: a :class:`Restart` type (or its name); default ``permanent``.
        shutdown: seconds the actor gets to stop gracefully before it is cancelled (default 5).
        mailbox_capacity: the mailbox bound (default 1000).
        ask_timeout: the default timeout of asks to this actor (default 30 s).
        backoff: restart backoff for this child; ``None`` uses the supervisor's.

    Example::

        ChildSpec("openai", lambda: Provider(call_openai), restart="transient", shutdown=10)
    """

    name: str
    factory: Callable[..., Actor[M, R]]
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=_restart)
    shutdown: float = attrs.field(
        default=5.0, converter=_seconds, validator=_non_negative("shutdown")
    )
    mailbox_capacity: int = DEFAULT_CAPACITY
    ask_timeout: float = attrs.field(default=DEFAULT_ASK_TIMEOUT, converter=_seconds)
    backoff: RestartBackoff | None = attrs.field(default=None, validator=_check_backoff)

    def __attrs_post_init__(self) -> None:
        _check_name(self.name, "child")
        if not callable(self.factory):
            raise TypeError(f"child {self.name!r}: factory must be callable, got {self.factory!r}")
        if isinstance(self.factory, type):
            # A class is checked now; a function's result is checked when the child starts.
            check_actor_class(self.factory, f"child {self.name!r}")
        if (
            not isinstance(self.mailbox_capacity, int)
            or isinstance(self.mailbox_capacity, bool)
            or self.mailbox_capacity < 1
        ):
            raise ValueError(
                f"child {self.name!r}: mailbox_capacity must be an int >= 1, "
                f"got {self.mailbox_capacity!r}"
            )
        if not self.ask_timeout > 0:
            raise ValueError(
                f"child {self.name!r}: ask_timeout must be > 0, got {self.ask_timeout!r}"
            )


def _children(value: Iterable[AnySpec]) -> tuple[AnySpec, ...]:
    return tuple(value)


def _check_intensity(what: str, max_restarts: object, period: float) -> None:
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise ValueError(f"{what}: max_restarts must be an int >= 0, got {max_restarts!r}")
    if not 0 < period < math.inf:
        raise ValueError(
            f"{what}: period must be a finite number of seconds > 0, got {period!r} (an "
            "infinite period would make max_restarts a budget for the whole life of the tree)"
        )


@attrs.frozen
class SupervisorSpec:
    """A supervisor and its children; usable as a child spec of another supervisor.

    Attributes:
        name: unique among its siblings (the root's name does not appear in paths).
        children: child specs, started in order and stopped in reverse order.
        strategy: a :class:`Strategy` (or its name); default ``one_for_one``.
        max_restarts, period: restart intensity: more than ``max_restarts`` restarts within
            ``period`` seconds (finite) and the supervisor stops its children and fails to its
            parent (defaults 3 and 5 s).  A restart whose start fails counts, and is retried.
        backoff: default :class:`RestartBackoff` of the children (``None``: restart at once).
        restart: the restart type of this supervisor under its parent (default permanent).
        shutdown: the grace its parent gives it to stop (default unlimited).

    Example::

        SupervisorSpec("providers", [ChildSpec("openai", make_openai)], strategy="one_for_all")
    """

    name: str
    children: tuple[AnySpec, ...] = attrs.field(default=(), converter=_children)
    strategy: Strategy = attrs.field(default=Strategy.ONE_FOR_ONE, converter=_strategy)
    max_restarts: int = 3
    period: float = attrs.field(default=5.0, converter=_seconds)
    backoff: RestartBackoff | None = attrs.field(default=None, validator=_check_backoff)
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=_restart)
    shutdown: float = attrs.field(
        default=math.inf, converter=_seconds, validator=_non_negative("shutdown")
    )

    def __attrs_post_init__(self) -> None:
        _check_name(self.name, "supervisor")
        _check_intensity(f"supervisor {self.name!r}", self.max_restarts, self.period)
        seen: set[str] = set()
        for child in self.children:
            if not isinstance(child, ChildSpec | SupervisorSpec | DynamicSupervisorSpec):
                raise TypeError(
                    f"supervisor {self.name!r}: children must be ChildSpec, SupervisorSpec or "
                    f"DynamicSupervisorSpec, got {child!r}"
                )
            if child.name in seen:
                raise ValueError(f"supervisor {self.name!r}: two children are named {child.name!r}")
            seen.add(child.name)


@attrs.frozen
class DynamicSupervisorSpec:
    """A supervisor whose children are all added at run time, each under a generated name
    (Elixir's ``DynamicSupervisor``, Erlang/OTP's ``simple_one_for_one``); usable as a child
    spec of another supervisor, or as the root.

    Meant for actors that come and go with the work: one per session, per request, per
    upload.  Its handle (:class:`~supervisors.DynamicSupervisor`) starts a child from the
    ``template`` (``start_child(*args)`` calls ``template.factory(*args)``) or from an ad hoc
    spec (``start_child_spec``); the child's name is the spec's name and a number
    (``"session-17"``), so specs need not be unique.  Starting and terminating a child cost the
    same whatever the number of children; children are independent (``one_for_one``) and are
    stopped all at once, each within its shutdown grace, when the supervisor stops.  A child
    that stops for good (temporary; transient after a normal exit; terminated) is removed.

    Attributes:
        name: unique among its siblings.
        template: the spec ``start_child(*args)`` starts (its factory takes those arguments);
            ``None``: children are started from ad hoc specs only.
        max_children: at most this many children at once (``None``: no limit); past it
            ``start_child`` raises :class:`~supervisors.MaxChildrenReached`.
        max_restarts, period: restart intensity, as for :class:`SupervisorSpec`.
        backoff: default :class:`RestartBackoff` of the children (``None``: restart at once).
        restart: the restart type of this supervisor under its parent (default permanent).
        shutdown: the grace its parent gives it to stop (default unlimited).

    Example::

        DynamicSupervisorSpec("sessions", template=ChildSpec("session", Session,
                                                             restart="temporary"),
                              max_children=10_000)
    """

    name: str
    template: ChildSpec[Any, Any] | None = None
    max_children: int | None = None
    max_restarts: int = 3
    period: float = attrs.field(default=5.0, converter=_seconds)
    backoff: RestartBackoff | None = attrs.field(default=None, validator=_check_backoff)
    restart: Restart = attrs.field(default=Restart.PERMANENT, converter=_restart)
    shutdown: float = attrs.field(
        default=math.inf, converter=_seconds, validator=_non_negative("shutdown")
    )

    @property
    def children(self) -> tuple[AnySpec, ...]:
        """No children at start (they are added at run time)."""
        return ()

    @property
    def strategy(self) -> Strategy:
        """Always ``one_for_one``: the children are independent."""
        return Strategy.ONE_FOR_ONE

    def __attrs_post_init__(self) -> None:
        _check_name(self.name, "dynamic supervisor")
        what = f"dynamic supervisor {self.name!r}"
        _check_intensity(what, self.max_restarts, self.period)
        if self.template is not None and not isinstance(self.template, ChildSpec):
            raise TypeError(f"{what}: template must be a ChildSpec, got {self.template!r}")
        limit = self.max_children
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise ValueError(f"{what}: max_children must be None or an int >= 0, got {limit!r}")


AnySupervisorSpec: TypeAlias = "SupervisorSpec | DynamicSupervisorSpec"
AnySpec: TypeAlias = "ChildSpec[Any, Any] | SupervisorSpec | DynamicSupervisorSpec"
