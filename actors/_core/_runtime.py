"""Running actors without a supervisor: :func:`open_actor`, and the per-runtime services.

Theory of operation
-------------------
A *runtime* is the set of services shared by every actor of one tree: today the ask-timeout
timer task.  :func:`open_runtime` starts it in a nursery owned by the caller's ``async with``,
so nothing outlives the block.  :func:`open_actor` runs a single actor in such a runtime with
no supervision: a crash ends the block with the actor's exception, like a failing task in a
nursery.  Supervision trees (``supervisors.open_supervisor``) build on the same pieces.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import sniffio
import trio

from actors._core._actor import Actor, check_actor
from actors._core._cell import (
    DEFAULT_ASK_TIMEOUT,
    DEFAULT_CAPACITY,
    _Cell,
    is_cancellation,
    is_fatal,
    run_actor,
    unwrap,
)
from actors._core._ref import ActorRef
from actors._core._reply import _Timers

__all__ = ["open_actor"]

M = TypeVar("M")
R = TypeVar("R")


@asynccontextmanager
async def open_runtime() -> AsyncIterator[tuple[_Timers, trio.Nursery]]:
    """Start the runtime services; yield ``(timers, nursery)``.  Private.

    Raises RuntimeError, naming trio, when called under another event loop (asyncio).
    """
    require_trio()
    async with trio.open_nursery() as nursery:
        timers = _Timers()
        nursery.start_soon(timers.run, name="aura-actors ask timer")
        try:
            yield timers, nursery
        finally:
            nursery.cancel_scope.cancel()


def require_trio() -> None:
    """Raise a RuntimeError that says so unless the caller runs under trio.

    Under ``asyncio.run`` trio's own functions fail with an ``AttributeError`` from deep inside
    trio; the first entry point (a tree, an actor, the providers) says what to do instead.
    """
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        library = "no async library"
    if library != "trio":
        raise RuntimeError(
            f"aura-actors runs under trio: use trio.run(main) (it was called under {library}; "
            "an asyncio application can run trio in a thread of its own)"
        )


def reraise_unwrapped(group: BaseExceptionGroup[Any]) -> None:
    """Re-raise the single real exception inside ``group`` unwrapped, else ``group`` itself."""
    leaf = unwrap(group)
    if leaf is group or isinstance(leaf, BaseExceptionGroup):
        raise group
    raise leaf from leaf.__cause__


def is_cancelled_here() -> bool:
    """Whether the current task is inside a cancelled scope."""
    return trio.current_effective_deadline() == -math.inf


@asynccontextmanager
async def open_actor(
    actor: Actor[M, R] | Callable[[], Actor[M, R]],
    *,
    name: str = "actor",
    capacity: int = DEFAULT_CAPACITY,
    ask_timeout: float = DEFAULT_ASK_TIMEOUT,
    shutdown: float = 5.0,
) -> AsyncIterator[ActorRef[M, R]]:
    """Run one unsupervised actor for the duration of an ``async with`` block.

    Args:
        actor: an actor instance, or a zero-argument factory returning one.
        name: the actor's path (used in errors and statistics).
        capacity: mailbox bound (default 1000 messages).
        ask_timeout: default ask timeout in seconds (default 30).
        shutdown: seconds the actor gets to stop gracefully when the block ends, after which it
            is cancelled.

    Yields:
        An :class:`ActorRef` to the actor.

    A crash of the actor (an exception from ``on_start``, ``handle`` or a background task)
    cancels the block and is raised from the ``async with``.  When the block ends normally the
    actor stops gracefully (``on_stop`` runs) and asks still queued get ``ActorStopped``; when
    the block raises, the actor is cancelled at once, as a nursery cancels its tasks.

    Example::

        async with open_actor(Counter) as counter:
            assert await counter.ask(1) == 1
    """
    if not shutdown >= 0:
        raise ValueError(f"shutdown must be >= 0 seconds, got {shutdown!r}")
    instance = actor if isinstance(actor, Actor) else actor()
    check_actor(instance, f"open_actor({name!r})")
    crash: list[BaseException] = []
    try:
        async with open_runtime() as (timers, nursery):
            cell = _Cell(name, timers=timers, capacity=capacity, ask_timeout=ask_timeout)
            ready = trio.Event()
            exited = trio.Event()

            async def runner() -> None:
                try:
                    with trio.CancelScope() as kill:
                        async with trio.open_nursery() as host:
                            await run_actor(cell, instance, ready.set, host, kill)
                except BaseException as exc:
                    if is_cancellation(exc) or is_fatal(exc):
                        raise
                    # Not raised into the nursery: the block is cancelled and the crash is
                    # raised from the `async with` below, unwrapped.
                    crash.append(unwrap(exc))
                    nursery.cancel_scope.cancel()
                finally:
                    cell.close()
                    ready.set()
                    exited.set()

            nursery.start_soon(runner, name=f"actor {name}")
            await ready.wait()
            try:
                yield ActorRef._create(cell)
            except BaseException:
                # Like a nursery: when the body fails, the actor is cancelled, not drained.
                nursery.cancel_scope.cancel()
                raise
            if not is_cancelled_here():
                cell.request_stop()
                with trio.move_on_after(shutdown):
                    await exited.wait()
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        reraise_unwrapped(group)
    if crash:
        raise crash[0]
