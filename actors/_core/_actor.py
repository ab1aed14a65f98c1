"""The :class:`Actor` base class.

Theory of operation
-------------------
An actor is a plain object whose ``handle`` coroutine is called with one message at a time by
the runtime.  Its state is the instance; a restart builds a fresh instance from the factory, so
a crash never leaves half-updated state behind.  The runtime attaches the running incarnation to
the instance (``self._inc``) before ``on_start``; nothing needs to be passed to ``__init__``,
so subclasses define their constructor freely.

Slow work must not block the mailbox: ``handle`` calls :meth:`Actor.defer` to take the answer
slot of the current ask, starts the work with :meth:`Actor.spawn`, and returns at once; the
background task answers the :class:`~actors.Reply` when it is done.  Background tasks belong to
the incarnation: they are cancelled when the actor stops, and an exception from one of them
crashes the actor like an exception from ``handle``.  Because trio switches tasks only at
``await``, state updates made between two awaits are atomic; keep them that way.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, TypeVarTuple, Unpack, overload

from actors._core._ref import ActorRef
from actors._core._reply import Failure, Reply, _tell_reply
from actors._errors import ActorNotFound, path_hint

if TYPE_CHECKING:
    from actors._core._cell import _Cell, _Incarnation

__all__ = ["Actor", "check_actor", "check_actor_class", "check_kind"]

M = TypeVar("M", contravariant=True)
R = TypeVar("R")
M2 = TypeVar("M2")
R2 = TypeVar("R2")
PosArgs = TypeVarTuple("PosArgs")


class Actor(Generic[M, R]):
    """Base class for actors: subclass it and implement :meth:`handle`.

    ``M`` is the type of message the actor accepts and ``R`` the type of its replies; refs to
    the actor are ``ActorRef[M, R]``.

    Example::

        class Counter(Actor[int, int]):
            def __init__(self) -> None:
                self.total = 0

            async def handle(self, message: int) -> int:
                self.total += message
                return self.total

    Lifecycle: ``on_start`` runs before the first message (an exception there is a crash at
    start); ``handle`` runs once per message; ``on_stop`` runs when the actor is stopped
    gracefully (not after a crash, and not when it is cancelled because its shutdown grace ran
    out).
    """

    _inc: _Incarnation

    async def on_start(self) -> None:
        """Called once before the first message.  Default: nothing."""

    async def handle(self, message: M) -> R | Failure:
        """Handle one message and return the reply.

        Return a :class:`~actors.Failure` to answer with an expected error; raise to crash
        (the caller of this message gets ``ActorCrashed``, the supervisor restarts the actor).
        After :meth:`defer`, the return value is ignored.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement handle()")

    async def on_stop(self) -> None:
        """Called when the actor stops gracefully, within its shutdown grace.  Default: nothing."""

    # ------------------------------------------------------------------ helpers for subclasses

    @property
    def ref(self) -> ActorRef[M, R]:
        """A ref to this actor's slot (stable across restarts)."""
        return ActorRef._create(self._context().cell)

    @property
    def path(self) -> str:
        """This actor's path in its tree, for example ``"providers/openai"``."""
        return self._context().cell.path

    @property
    def deadline(self) -> float:
        """The trio time at which the caller of the current message stops waiting.

        ``math.inf`` for a tell or outside ``handle``.  Use it to cap the work done for the
        message: work past it is wasted.
        """
        current = self._context().current
        return math.inf if current is None else current.deadline

    @overload
    def lookup(self, path: str) -> ActorRef[Any, Any]: ...

    @overload
    def lookup(self, path: str, kind: type[Actor[M2, R2]]) -> ActorRef[M2, R2]: ...

    def lookup(self, path: str, kind: type[Actor[Any, Any]] | None = None) -> ActorRef[Any, Any]:
        """The ref of another actor of the same tree, by its path from the root.

        With ``kind``, the actor's class, the ref is typed by it and the actor running there is
        checked to be one (see ``Supervisor.ref``).

        Raises:
            ActorNotFound: no actor is at ``path`` (or it is stopped for good).
            TypeError: ``kind`` is given and the actor running there is not one.
        """
        registry = self._context().cell.registry
        cell = registry.get(path)
        if cell is None or cell.closed:
            hint = path_hint(path, [p for p, c in registry.items() if not c.closed])
            raise ActorNotFound(actor=path, detail=f" (looked up by {self.path!r}){hint}")
        if kind is not None:
            check_kind(cell, kind)
        return ActorRef._create(cell)

    def defer(self) -> Reply[R]:
        """Take the answer slot of the message being handled, to answer it later.

        The returned :class:`~actors.Reply` is answered with ``set`` or ``fail``, typically from
        a task started with :meth:`spawn`.  If the actor stops or crashes before answering, the
        runtime answers (``ActorStopped`` / ``ActorCrashed``).  For a tell, the reply is inert.
        """
        inc = self._context()
        reply = inc.current
        if reply is None:
            return _tell_reply()
        if not reply.deferred:
            reply.deferred = True
            if not reply.done:
                inc.deferred.add(reply)
        return reply

    def spawn(
        self,
        async_fn: Callable[[Unpack[PosArgs]], Awaitable[object]],
        *args: *PosArgs,
        name: str | None = None,
    ) -> None:
        """Run ``async_fn(*args)`` in the background, in this incarnation's scope.

        The task is cancelled when the actor stops; if it raises, the actor crashes.
        """
        inc = self._context()
        label = name or f"{inc.cell.path}:{getattr(async_fn, '__name__', 'task')}"
        inc.spawn(async_fn, args, label)

    def stop(self) -> None:
        """Stop gracefully after the current message (``on_stop`` runs; the exit is normal).

        Called from a background task while no message is being handled, it stops the actor
        at once (an idle actor does not wait for a message to notice).
        """
        inc = self._context()
        if inc.cell.incarnation is inc:
            inc.cell.request_stop()
        else:
            inc.stop_requested = True

    def _context(self) -> _Incarnation:
        try:
            return self._inc
        except AttributeError:
            raise RuntimeError(
                f"{type(self).__name__} is not running: actor helpers work only once the "
                "runtime has started it (from on_start, handle and on_stop)"
            ) from None


_CHECKED: set[type] = set()  # actor classes already found well-formed (checked once each)


def check_actor_class(cls: type, what: str) -> None:
    """Raise a TypeError naming ``what`` unless ``cls`` is an :class:`Actor` subclass whose
    ``handle``, ``on_start`` and ``on_stop`` are coroutine functions (``async def``).

    A ``def handle`` would otherwise be found only when its first message fails.
    """
    if cls in _CHECKED:
        return
    if not issubclass(cls, Actor):
        raise TypeError(
            f"{what}: {cls.__qualname__} is not an Actor subclass (subclass actors.Actor and "
            "implement `async def handle(self, message)`)"
        )
    for name in ("handle", "on_start", "on_stop"):
        method = getattr(cls, name, None)
        # Only a plain function can be judged: a decorated or callable attribute may well
        # return an awaitable.
        if inspect.isfunction(method) and not inspect.iscoroutinefunction(method):
            raise TypeError(
                f"{what}: {cls.__qualname__}.{name} must be a coroutine function: define it "
                f"with `async def {name}(self{', message' if name == 'handle' else ''})`"
            )
    _CHECKED.add(cls)


def check_actor(actor: object, what: str | Callable[[], str]) -> None:
    """Raise a TypeError naming ``what`` unless ``actor`` is a well-formed :class:`Actor`
    instance (see :func:`check_actor_class`): what a factory returned, before it runs.

    ``what`` may be a function making the text, called only for an actor not checked yet (a
    supervisor checks every new instance: a restart need not build the text)."""
    if type(actor) in _CHECKED:
        return
    if not isinstance(what, str):
        what = what()
    if not isinstance(actor, Actor):
        raise TypeError(
            f"{what}: its factory returned {actor!r}, not an Actor (a factory is a function or "
            "class called with no argument that returns a new actor instance)"
        )
    check_actor_class(type(actor), what)


def check_kind(cell: _Cell, kind: type[Actor[Any, Any]]) -> None:
    """Raise a TypeError unless the actor running in ``cell`` is a ``kind`` (a typed lookup).

    Nothing is checked while no incarnation runs (the slot is restarting): the ref is a slot's,
    and the slot's factory decides what runs there next.
    """
    if not isinstance(kind, type) or not issubclass(kind, Actor):
        raise TypeError(f"kind must be an Actor subclass, got {kind!r}")
    inc = cell.incarnation
    if inc is not None and not isinstance(inc.actor, kind):
        raise TypeError(
            f"the actor at {cell.path!r} is a {type(inc.actor).__qualname__}, not a "
            f"{kind.__qualname__}"
        )
