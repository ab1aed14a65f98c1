"""Public entry points: :func:`open_supervisor` and the :class:`Supervisor` handle.

Theory of operation
-------------------
``open_supervisor`` is to a supervision tree what ``trio.open_nursery`` is to tasks: the tree
starts when the ``async with`` is entered (every child started, in order), lives while its
body runs, and is shut down when the body ends: gracefully, in reverse start order, each child
within its shutdown grace.  If the root supervisor gives up, the body is cancelled and
:class:`SupervisorGaveUp` leaves the ``async with``; if the body raises, the tree is cancelled
at once (like a nursery) and the body's exception propagates.

A :class:`Supervisor` handle names a supervisor's *path*, like an ``ActorRef`` names a slot: it
stays valid while that supervisor is restarted by its parent.  Lookups are by name or by path
relative to the handle (``root.ref("providers/openai")``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, final, overload

import msgspec
import trio

from actors._core._actor import Actor, check_kind
from actors._core._cell import is_cancellation, is_fatal, unwrap
from actors._core._ref import ActorRef
from actors._core._runtime import is_cancelled_here, open_runtime, reraise_unwrapped
from actors._errors import path_hint
from supervisors._events import Subscription, SupervisionEvent, TreeNode
from supervisors._spec import AnySpec, ChildSpec, RestartBackoff, Strategy, SupervisorSpec
from supervisors._supervisor import NoSuchChild, _Node, _Run, _Tree, join

__all__ = ["Supervisor", "open_supervisor", "root_of"]

M = TypeVar("M")
R = TypeVar("R")


@final
class Supervisor:
    """A handle to a running supervisor (the root from ``open_supervisor``, or a subtree).

    Handles are stable across restarts of the supervisor by its parent.  They cannot be
    constructed directly.
    """

    __slots__ = ("_path", "_tree")
    _path: str
    _tree: _Tree

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("Supervisor handles come from open_supervisor() or Supervisor.supervisor()")

    @classmethod
    def _create(cls, tree: _Tree, path: str) -> Supervisor:
        self = object.__new__(cls)
        self._tree = tree
        self._path = path
        return self

    @property
    def path(self) -> str:
        """This supervisor's path (``""`` for the root)."""
        return self._path

    def _node(self) -> _Node:
        node = self._tree.nodes.get(self._path)
        if node is None:
            raise NoSuchChild(self._path, " (the supervisor was stopped for good)")
        return node

    def _abs(self, path: str) -> str:
        if not isinstance(path, str) or not path or path.startswith("/") or path.endswith("/"):
            raise ValueError(f"expected a child name or a relative path like 'a/b', got {path!r}")
        return join(self._path, path)

    # ------------------------------------------------------------------ lookups

    @overload
    def ref(self, path: str) -> ActorRef[Any, Any]: ...

    @overload
    def ref(self, path: str, kind: type[Actor[M, R]]) -> ActorRef[M, R]: ...

    def ref(self, path: str, kind: type[Actor[Any, Any]] | None = None) -> ActorRef[Any, Any]:
        """The :class:`ActorRef` of the actor at ``path`` (a name or ``"sub/child"``) below here.

        With ``kind``, the actor's class, the ref is typed by it (``root.ref("openai",
        ProviderActor)`` is an ``ActorRef[ProviderMessage, Any]``), and the actor running there
        is checked to be one (a ``TypeError`` otherwise; not checked while it restarts).

        Paths start below this supervisor: the root's own name is not part of them.

        Raises:
            NoSuchChild: there is no actor at that path (or it was stopped for good); the
                message suggests the closest path.
        """
        full = self._abs(path)
        cell = self._tree.cells.get(full)
        if cell is None:
            if full in self._tree.nodes:
                raise NoSuchChild(full, " (that is a supervisor: use .supervisor(path))")
            raise NoSuchChild(full, path_hint(full, self._tree.cells.keys()))
        if kind is not None:
            check_kind(cell, kind)
        return ActorRef._create(cell)

    def supervisor(self, path: str) -> Supervisor:
        """The handle of the supervisor at ``path`` below here.

        Raises:
            NoSuchChild: there is no supervisor at that path.
        """
        full = self._abs(path)
        if full not in self._tree.nodes:
            hint = path_hint(full, [p for p in self._tree.nodes if p])
            if not hint and full in self._tree.cells:
                hint = " (that is an actor: use .ref(path))"
            raise NoSuchChild(full, f" (no supervisor there){hint}")
        return Supervisor._create(self._tree, full)

    def snapshot(self) -> TreeNode:
        """The subtree's current shape: names, kinds, states, restart counts, mailbox depths."""
        node = self._node()
        snapshot = node.snapshot(name=self._path.rpartition("/")[2])
        if not self._path:  # the root: the tree's event losses
            snapshot = msgspec.structs.replace(snapshot, events_dropped=self._tree.bus.dropped)
        return snapshot

    # ------------------------------------------------------------------ dynamic children

    @overload
    async def start_child(self, spec: ChildSpec[M, R]) -> ActorRef[M, R]: ...

    @overload
    async def start_child(self, spec: SupervisorSpec) -> Supervisor: ...

    async def start_child(self, spec: AnySpec) -> ActorRef[Any, Any] | Supervisor:
        """Add and start a child; returns its ref (an actor) or handle (a supervisor).

        The child is stopped last (it is appended to the start order) and is kept across
        restarts of this supervisor.

        Raises:
            ValueError: a child with that name exists.
            ChildStartFailed: its factory or ``on_start`` raised (the child is not added).
            SupervisorNotRunning: this supervisor is stopped or restarting.
        """
        if not isinstance(spec, ChildSpec | SupervisorSpec):
            raise TypeError(f"start_child() takes a ChildSpec or SupervisorSpec, got {spec!r}")

        async def op(run: _Run) -> Any:
            return await run.start_child(spec)

        child = await self._node().control(op)
        if child.cell is not None:
            return ActorRef._create(child.cell)
        return Supervisor._create(self._tree, child.path)

    async def terminate_child(self, name: str) -> None:
        """Stop a child for good (within its shutdown grace) and remove it.

        Its queued asks get ``ActorStopped``; refs to it stay stopped.

        Raises:
            NoSuchChild: no child has that name.
        """

        async def op(run: _Run) -> None:
            await run.terminate_child(name)

        await self._node().control(op)

    async def restart_child(self, name: str) -> None:
        """Stop a child (within its grace) and start it again; its queued messages are kept.

        A manual restart does not count against the restart intensity.
        """

        async def op(run: _Run) -> None:
            await run.restart_child(name)

        await self._node().control(op)

    # ------------------------------------------------------------------ events

    def subscribe(self, *, buffer: int = 256) -> Subscription:
        """Stream the supervision events of this subtree (see :class:`Subscription`)."""
        return Subscription(self._tree.bus, self._path, buffer)

    def add_listener(self, listener: Callable[[SupervisionEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` synchronously for every event of this subtree.

        The listener must not block (a monitor does ``ref.tell_nowait(...)``); one that raises
        is removed.  Returns a function that removes the listener.
        """
        return self._tree.bus.add(self._path, listener)

    def __repr__(self) -> str:
        return f"<Supervisor {self._path or '(root)'!r}>"


def root_of(actor: Actor[Any, Any] | ActorRef[Any, Any]) -> Supervisor:
    """The root :class:`Supervisor` of the tree an actor (or a ref's slot) belongs to.

    For actors that need the tree itself, such as an admin API showing its snapshot.

    Raises:
        LookupError: the actor is not supervised (``open_actor``) or not running.
    """
    cell = actor._cell if isinstance(actor, ActorRef) else actor._context().cell
    tree = cell.owner
    if not isinstance(tree, _Tree):
        raise LookupError(f"{cell.path!r} is not part of a supervision tree")
    return Supervisor._create(tree, "")


@asynccontextmanager
async def open_supervisor(
    spec: SupervisorSpec | Sequence[AnySpec],
    *,
    strategy: Strategy | str = Strategy.ONE_FOR_ONE,
    max_restarts: int = 3,
    period: float = 5.0,
    backoff: RestartBackoff | None = None,
    seed: int | None = None,
) -> AsyncIterator[Supervisor]:
    """Run a supervision tree for the duration of an ``async with`` block.

    Args:
        spec: the root :class:`SupervisorSpec`, or a list of child specs for a root built from
            the keyword arguments below.
        strategy, max_restarts, period, backoff: the root's settings when ``spec`` is a list.
        seed: seeds the random source of restart-backoff jitter, for replayable runs.

    Yields:
        The root :class:`Supervisor`.

    Raises:
        SupervisorGaveUp: the root exceeded its restart intensity (the body was cancelled).

    Example::

        tree = [
            ChildSpec("monitor", Monitor),
            SupervisorSpec("providers", [ChildSpec("openai", make_openai)]),
        ]
        async with open_supervisor(tree) as root:
            reply = await root.ref("providers/openai").ask(Complete("hi"))
    """
    if not isinstance(spec, SupervisorSpec):
        spec = SupervisorSpec(
            "root",
            children=tuple(spec),
            strategy=strategy,
            max_restarts=max_restarts,
            period=period,
            backoff=backoff,
        )
    failure: list[BaseException] = []
    try:
        async with open_runtime() as (timers, nursery):
            tree = _Tree(timers, seed=seed)
            root = _Node(tree, spec, "")
            ready = trio.Event()
            exited = trio.Event()

            async def root_main() -> None:
                try:
                    await root.run(ready.set)
                except BaseException as exc:
                    if is_cancellation(exc) or is_fatal(exc):
                        raise
                    failure.append(unwrap(exc))
                    nursery.cancel_scope.cancel()
                finally:
                    tree.close_under("", "the supervision tree is shut down")
                    ready.set()
                    exited.set()

            nursery.start_soon(root_main, name="supervisor (root)")
            await ready.wait()
            if not failure:
                try:
                    yield Supervisor._create(tree, "")
                except BaseException:
                    nursery.cancel_scope.cancel()
                    raise
                if not is_cancelled_here() and root.request_stop(terminal=True):
                    await exited.wait()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        reraise_unwrapped(group)
    if failure:
        raise failure[0]


_INF = math.inf
