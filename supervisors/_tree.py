"""Public entry points: :func:`open_supervisor`, and the :class:`Supervisor` and
:class:`DynamicSupervisor` handles.

Theory of operation
-------------------
``open_supervisor`` is to a supervision tree what ``trio.open_nursery`` is to tasks: the tree
starts when the ``async with`` is entered (every child started, in order), lives while its
body runs, and is shut down when the body ends: gracefully, in reverse start order, each child
within its shutdown grace.  If a child fails to start, the children already started are stopped
and :class:`ChildStartFailed` leaves ``open_supervisor`` before the body runs; if the root
supervisor gives up, the body is cancelled and :class:`SupervisorGaveUp` leaves the
``async with``; if the body raises, the tree is cancelled at once (like a nursery) and the body's
exception propagates.

A handle names a supervisor's *path*, like an ``ActorRef`` names a slot: it stays valid while
that supervisor is restarted by its parent.  Lookups are by name or by path relative to the
handle (``root.ref("providers/openai")``).  Administration requests (``start_child`` and the
rest) run inside the supervisor's task, one at a time, between the events it handles.
"""

from __future__ import annotations

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
from supervisors._errors import NoSuchChild
from supervisors._events import ChildCounts, Subscription, SupervisionEvent, TreeNode
from supervisors._node import _Child, _Node, _Tree, join
from supervisors._spec import (
    AnySpec,
    ChildSpec,
    DynamicSupervisorSpec,
    RestartBackoff,
    Strategy,
    SupervisorSpec,
)
from supervisors._supervisor import _Run

__all__ = ["DynamicSupervisor", "Supervisor", "open_supervisor", "root_of"]

M = TypeVar("M")
R = TypeVar("R")


class _Handle:
    """What both supervisor handles offer: lookups, snapshot, counts, events."""

    __slots__ = ("_path", "_tree")
    _path: str
    _tree: _Tree

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError(
            "supervisor handles come from open_supervisor(), Supervisor.supervisor() or "
            "Supervisor.dynamic_supervisor()"
        )

    @classmethod
    def _create(cls, tree: _Tree, path: str) -> Any:
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

    def _handle_of(self, child: _Child) -> Any:
        if child.cell is not None:
            return ActorRef._create(child.cell)
        assert child.node is not None
        kind = DynamicSupervisor if child.node.dynamic else Supervisor
        return kind._create(self._tree, child.path)

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
            NoSuchChild: there is no supervisor at that path (or it is a dynamic one: see
                :meth:`dynamic_supervisor`).
        """
        full = self._abs(path)
        node = self._tree.nodes.get(full)
        if node is not None and node.dynamic:
            raise NoSuchChild(full, " (a dynamic supervisor: use .dynamic_supervisor(path))")
        if node is None:
            hint = path_hint(full, [p for p in self._tree.nodes if p])
            if not hint and full in self._tree.cells:
                hint = " (that is an actor: use .ref(path))"
            raise NoSuchChild(full, f" (no supervisor there){hint}")
        return Supervisor._create(self._tree, full)  # type: ignore[no-any-return]

    def dynamic_supervisor(self, path: str) -> DynamicSupervisor:
        """The handle of the dynamic supervisor at ``path`` below here.

        Raises:
            NoSuchChild: there is no dynamic supervisor at that path.
        """
        full = self._abs(path)
        node = self._tree.nodes.get(full)
        if node is None or not node.dynamic:
            raise NoSuchChild(full, " (no dynamic supervisor there)")
        return DynamicSupervisor._create(self._tree, full)  # type: ignore[no-any-return]

    def snapshot(self) -> TreeNode:
        """The subtree's current shape: names, kinds, states, restart counts, mailbox depths.

        It lists every child (use :meth:`count_children` to count them).
        """
        node = self._node()
        snapshot = node.snapshot(name=self._path.rpartition("/")[2])
        if not self._path:  # the root: the tree's event losses
            snapshot = msgspec.structs.replace(snapshot, events_dropped=self._tree.bus.dropped)
        return snapshot

    def count_children(self) -> ChildCounts:
        """This supervisor's children, counted (Erlang/OTP's ``count_children``), in constant
        time whatever their number."""
        return self._node().counts()

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
        return f"<{type(self).__name__} {self._path or '(root)'!r}>"


@final
class Supervisor(_Handle):
    """A handle to a running supervisor (the root from ``open_supervisor``, or a subtree).

    Handles are stable across restarts of the supervisor by its parent.  They cannot be
    constructed directly.  The administration methods follow Erlang/OTP's ``supervisor``
    module: ``start_child``, ``terminate_child``, ``restart_child``, ``delete_child``,
    ``count_children``.
    """

    __slots__ = ()

    @overload
    async def start_child(self, spec: ChildSpec[M, R]) -> ActorRef[M, R]: ...

    @overload
    async def start_child(self, spec: SupervisorSpec) -> Supervisor: ...

    @overload
    async def start_child(self, spec: DynamicSupervisorSpec) -> DynamicSupervisor: ...

    async def start_child(
        self, spec: AnySpec
    ) -> ActorRef[Any, Any] | Supervisor | DynamicSupervisor:
        """Add and start a child; returns its ref (an actor) or handle (a supervisor) once it
        has started (its ``on_start`` has returned).

        The child is stopped last (it is appended to the start order) and is kept across
        restarts of this supervisor.

        Raises:
            ValueError: a child with that name exists (running, or terminated and kept).
            ChildStartFailed: its factory or ``on_start`` raised; the child is not added and
                this supervisor is unaffected.
            SupervisorNotRunning: this supervisor is stopped or restarting.
        """
        if not isinstance(spec, ChildSpec | SupervisorSpec | DynamicSupervisorSpec):
            raise TypeError(
                "start_child() takes a ChildSpec, SupervisorSpec or DynamicSupervisorSpec, "
                f"got {spec!r}"
            )

        async def op(run: _Run) -> _Child:
            return await run.start_child(spec)

        return self._handle_of(await self._node().control(op))  # type: ignore[no-any-return]

    async def terminate_child(self, name: str) -> None:
        """Stop a child (within its shutdown grace) and keep its spec: it is down until
        :meth:`restart_child` starts it again, :meth:`delete_child` removes it, or a restart of
        its group by this supervisor (``one_for_all``, ``rest_for_one``) starts it.  A
        temporary child is removed.  Terminating a terminated child does nothing.

        Its queued asks get ``ActorStopped``; refs to it are stopped until it runs again.

        Raises:
            NoSuchChild: no child has that name.
        """

        async def op(run: _Run) -> None:
            await run.terminate_child(name)

        await self._node().control(op)

    async def restart_child(self, name: str) -> None:
        """Start a terminated child again (same slot: its refs work again).

        A manual restart does not count against the restart intensity.

        Raises:
            NoSuchChild: no child has that name.
            ChildRunning: the child is running (``state="running"``: terminate it first) or
                about to be restarted by this supervisor (``state="restarting"``).
            ChildStartFailed: its factory or ``on_start`` raised; the child stays terminated
                and this supervisor is unaffected.
        """

        async def op(run: _Run) -> None:
            await run.restart_child(name)

        await self._node().control(op)

    async def delete_child(self, name: str) -> None:
        """Remove a terminated child's spec; its name can then be used again.

        Raises:
            NoSuchChild: no child has that name.
            ChildRunning: the child is running or about to be restarted.
        """

        async def op(run: _Run) -> None:
            await run.delete_child(name)

        await self._node().control(op)


@final
class DynamicSupervisor(_Handle):
    """A handle to a running dynamic supervisor (see :class:`DynamicSupervisorSpec`).

    Its children are started at run time under generated names (``"session-17"``), from its
    template or from an ad hoc spec; starting and terminating one cost the same whatever the
    number of children.  Refs to them are ordinary refs (``root.ref("sessions/session-17")``
    finds one too).  Handles cannot be constructed directly; get one from
    ``Supervisor.dynamic_supervisor()`` or ``Supervisor.start_child()``.

    Example::

        sessions = root.dynamic_supervisor("sessions")
        ref = await sessions.start_child(user_id)        # calls template.factory(user_id)
        ...
        await sessions.terminate_child(ref)
    """

    __slots__ = ()

    async def start_child(self, *args: Any, **kwargs: Any) -> ActorRef[Any, Any]:
        """Start a child from the template: its factory is called with ``args`` and
        ``kwargs`` (again at every restart, unless the template is temporary).  Returns its ref
        once it has started.

        Raises:
            TypeError: this supervisor has no template.
            MaxChildrenReached: it already runs ``max_children`` children.
            ChildStartFailed: the factory or ``on_start`` raised; nothing is kept.
            SupervisorNotRunning: this supervisor is stopped or restarting.
        """
        spec = self._node().spec
        assert isinstance(spec, DynamicSupervisorSpec)
        template = spec.template
        if template is None:
            raise TypeError(
                f"dynamic supervisor {self._path!r} has no template: use start_child_spec()"
            )

        async def op(run: _Run) -> _Child:
            return await run.start_dynamic(template, args, kwargs)

        return self._handle_of(await self._node().control(op))  # type: ignore[no-any-return]

    @overload
    async def start_child_spec(self, spec: ChildSpec[M, R]) -> ActorRef[M, R]: ...

    @overload
    async def start_child_spec(self, spec: SupervisorSpec) -> Supervisor: ...

    @overload
    async def start_child_spec(self, spec: DynamicSupervisorSpec) -> DynamicSupervisor: ...

    async def start_child_spec(
        self, spec: AnySpec
    ) -> ActorRef[Any, Any] | Supervisor | DynamicSupervisor:
        """Start a child from an ad hoc spec (an actor, or a whole subtree), named after the
        spec and a number.  Returns its ref or handle once it has started.

        Raises:
            MaxChildrenReached: this supervisor already runs ``max_children`` children.
            ChildStartFailed: it failed to start; nothing is kept.
            SupervisorNotRunning: this supervisor is stopped or restarting.
        """
        if not isinstance(spec, ChildSpec | SupervisorSpec | DynamicSupervisorSpec):
            raise TypeError(
                "start_child_spec() takes a ChildSpec, SupervisorSpec or DynamicSupervisorSpec, "
                f"got {spec!r}"
            )

        async def op(run: _Run) -> _Child:
            return await run.start_dynamic(spec, (), {})

        return self._handle_of(await self._node().control(op))  # type: ignore[no-any-return]

    async def terminate_child(
        self, child: ActorRef[Any, Any] | Supervisor | DynamicSupervisor | str
    ) -> None:
        """Stop a child (within its shutdown grace) and remove it.

        ``child`` is its ref, its handle or its name.  A child that has already stopped (a
        ref to a former child) is fine: nothing happens.

        Raises:
            NoSuchChild: no child has that name, or the ref is not to a child of this
                supervisor.
        """
        if isinstance(child, ActorRef | _Handle):
            path = child.path
        elif isinstance(child, str):
            path = self._abs(child)
            if "/" in child:
                raise ValueError(f"expected a child's name, got the path {child!r}")
        else:
            raise TypeError(f"terminate_child() takes a ref, a handle or a name, got {child!r}")
        by_name = isinstance(child, str)

        async def op(run: _Run) -> None:
            found = run.find_child_of(path)
            if found is None:
                if by_name:
                    raise NoSuchChild(path, f" under dynamic supervisor {self._path!r}")
                return  # a former child: it has stopped already
            await run.terminate_child(path.rpartition("/")[2])

        await self._node().control(op)

    @property
    def max_children(self) -> int | None:
        """The most children this supervisor runs at once (``None``: no limit)."""
        spec = self._node().spec
        assert isinstance(spec, DynamicSupervisorSpec)
        return spec.max_children


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
    return Supervisor._create(tree, "")  # type: ignore[no-any-return]


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
        strategy: the root's strategy when ``spec`` is a list.
        max_restarts: the root's restart intensity (restarts per ``period``) when ``spec`` is
            a list.
        period: the window of ``max_restarts``, in seconds.
        backoff: the root's restart backoff when ``spec`` is a list.
        seed: seeds the random source of restart-backoff jitter, for replayable runs.

    Yields:
        The root :class:`Supervisor`, once every child has started.

    Raises:
        ChildStartFailed: a child failed to start (Erlang/OTP's ``failed_to_start_child``):
            the children started before it were stopped, in reverse order, and the body did
            not run.  For a child inside a nested supervisor, the error names that supervisor
            and its ``cause`` the inner failure (``origin`` is the child that failed).
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
                    await _Run(root).main(ready.set)
                except BaseException as exc:
                    if is_cancellation(exc) or is_fatal(exc):
                        raise
                    failure.append(unwrap(exc))
                    nursery.cancel_scope.cancel()
                finally:
                    tree.close_all("the supervision tree is shut down")
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
