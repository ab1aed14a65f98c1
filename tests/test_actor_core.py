"""The runtime core: asks, tells, replies, deadlines, crashes, and the caller guarantees."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

from actors import (
    Actor,
    ActorCrashed,
    ActorRef,
    ActorStopped,
    AskTimeout,
    CellState,
    ErrorCategory,
    Failure,
    MailboxFull,
    Reply,
    open_actor,
)
from actors._core._reply import _Timers


class Echo(Actor[Any, Any]):
    """Replies with the message; special messages crash, fail, sleep or defer."""

    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        self.started = True

    async def on_stop(self) -> None:
        self.stopped = True

    async def handle(self, message: Any) -> Any:
        self.seen.append(message)
        match message:
            case ("crash", text):
                raise RuntimeError(text)
            case ("fail", text):
                return Failure(ValueError(text))
            case ("sleep", seconds):
                await trio.sleep(seconds)
                return "slept"
            case ("defer", seconds):
                reply = self.defer()
                self.spawn(self._later, reply, seconds)
                return "ignored"
            case ("defer-crash", seconds):
                self.defer()
                self.spawn(self._explode, seconds)
                return None
            case "deadline":
                return self.deadline
            case "seen":
                return list(self.seen)
            case "stop":
                self.stop()
                return "stopping"
        return message

    async def _later(self, reply: Reply[Any], seconds: float) -> None:
        await trio.sleep(seconds)
        reply.set(("later", seconds))

    async def _explode(self, seconds: float) -> None:
        await trio.sleep(seconds)
        raise OSError("background task failed")


async def occupy(ref: ActorRef[Any, Any], seconds: float) -> None:
    """Keep the actor busy for ``seconds`` (the outcome of this ask is not the point)."""
    try:
        await ref.ask(("sleep", seconds), timeout=10 * seconds)
    except (ActorStopped, ActorCrashed):
        pass


async def test_ask_returns_the_reply() -> None:
    """An ask gets what handle returned."""
    async with open_actor(Echo, name="echo") as ref:
        assert await ref.ask(41) == 41
        assert await ref.ask("hello") == "hello"


async def test_failure_reply_raises_in_caller_without_crashing() -> None:
    """Returning Failure(exc) raises exc in the caller; the actor keeps its state."""
    async with open_actor(Echo) as ref:
        await ref.ask(1)
        with pytest.raises(ValueError, match="bad input"):
            await ref.ask(("fail", "bad input"))
        assert await ref.ask("seen") == [1, ("fail", "bad input"), "seen"]
        assert ref.statistics().incarnation == 1


async def test_crash_delivers_actor_crashed_with_cause_and_ends_block() -> None:
    """A crash answers the message's caller with ActorCrashed(cause) and leaves open_actor."""
    with pytest.raises(RuntimeError, match="kaput"):
        async with open_actor(Echo, name="echo") as ref:
            with pytest.raises(ActorCrashed) as info:
                await ref.ask(("crash", "kaput"))
            assert isinstance(info.value.cause, RuntimeError)
            assert info.value.__cause__ is info.value.cause
            assert info.value.actor == "echo"
            assert info.value.category is ErrorCategory.DEPENDENCY
            await trio.sleep_forever()


async def test_ask_timeout_fires_at_the_timeout(mock_clock: trio.testing.MockClock) -> None:
    """An ask to a busy actor fails with AskTimeout exactly when its timeout passes."""
    async with open_actor(Echo, name="slow") as ref, trio.open_nursery() as nursery:
        nursery.start_soon(occupy, ref, 100.0)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(AskTimeout) as info:
            await ref.ask("late", timeout=2.5)
        assert trio.current_time() - start == pytest.approx(2.5)
        assert isinstance(info.value, TimeoutError)
        assert info.value.timeout == 2.5
        nursery.cancel_scope.cancel()


async def test_default_ask_timeout_applies(mock_clock: trio.testing.MockClock) -> None:
    """Without a timeout argument, the slot's ask_timeout bounds the wait."""
    async with open_actor(Echo, ask_timeout=7.0) as ref, trio.open_nursery() as nursery:
        nursery.start_soon(occupy, ref, 100.0)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await ref.ask("late")
        assert trio.current_time() - start == pytest.approx(7.0)
        nursery.cancel_scope.cancel()


async def test_timed_out_message_is_never_handled(mock_clock: trio.testing.MockClock) -> None:
    """A message whose caller gave up before it was handled is dropped, not handled late."""
    async with open_actor(Echo) as ref:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(occupy, ref, 10.0)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(AskTimeout):
                await ref.ask("dropped", timeout=1.0)
        seen = await ref.ask("seen")
        assert "dropped" not in seen
        assert ref.statistics().dropped == 1


async def test_caller_deadline_bounds_the_ask(mock_clock: trio.testing.MockClock) -> None:
    """The caller's trio deadline cuts an ask short even when the ask timeout is longer."""
    async with open_actor(Echo) as ref, trio.open_nursery() as nursery:
        nursery.start_soon(occupy, ref, 100.0)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        with trio.move_on_after(1.5) as scope:
            await ref.ask("x", timeout=30.0)
        assert scope.cancelled_caught
        assert trio.current_time() - start == pytest.approx(1.5)
        nursery.cancel_scope.cancel()


async def test_actor_sees_the_callers_deadline(mock_clock: trio.testing.MockClock) -> None:
    """Actor.deadline is the earlier of the ask timeout and the caller's own deadline."""
    async with open_actor(Echo) as ref:
        now = trio.current_time()
        assert await ref.ask("deadline", timeout=4.0) == pytest.approx(now + 4.0)
        with trio.move_on_after(2.0):
            assert await ref.ask("deadline", timeout=4.0) == pytest.approx(now + 2.0)
        ref.tell_nowait("deadline")  # a tell has no deadline; handled without error
        assert await ref.ask("seen")


async def test_cancelled_caller_leaves_actor_healthy(mock_clock: trio.testing.MockClock) -> None:
    """Cancelling callers mid-ask neither crashes the actor nor loses other callers' replies."""
    async with open_actor(Echo) as ref:
        results: list[Any] = []

        async def patient(i: int) -> None:
            results.append(await ref.ask(i))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(occupy, ref, 5.0)
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as impatient:
                for i in range(10):
                    impatient.start_soon(ref.ask, ("impatient", i))
                await trio.testing.wait_all_tasks_blocked()
                impatient.cancel_scope.cancel()
            for i in range(5):
                nursery.start_soon(patient, i)
        assert sorted(results) == [0, 1, 2, 3, 4]
        stats = ref.statistics()
        assert stats.dropped == 10
        assert stats.crashed == 0
        assert stats.incarnation == 1


async def test_deferred_reply_does_not_block_the_mailbox(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A deferred ask is answered later while the actor keeps handling other messages."""
    async with open_actor(Echo) as ref:
        async with trio.open_nursery() as nursery:
            got: list[Any] = []

            async def slow() -> None:
                got.append(await ref.ask(("defer", 10.0)))

            nursery.start_soon(slow)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            assert await ref.ask("quick") == "quick"
            assert trio.current_time() == start
        assert got == [("later", 10.0)]


async def test_deferred_reply_fails_when_actor_crashes(mock_clock: trio.testing.MockClock) -> None:
    """Outstanding deferred replies get ActorCrashed when a background task crashes the actor."""
    with pytest.raises(OSError, match="background task failed"):
        async with open_actor(Echo, name="bg") as ref:
            with pytest.raises(ActorCrashed) as info:
                await ref.ask(("defer-crash", 1.0))
            assert isinstance(info.value.cause, OSError)


async def test_deferred_reply_fails_when_actor_stops(mock_clock: trio.testing.MockClock) -> None:
    """A deferred reply still pending when the actor stops gets ActorStopped."""
    outcome: list[BaseException] = []
    async with open_actor(Echo) as ref:

        async def waiter() -> None:
            try:
                await ref.ask(("defer", 100.0))
            except ActorStopped as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert await ref.ask("stop") == "stopping"
    assert len(outcome) == 1


async def test_ask_to_stopped_actor_fails_fast(mock_clock: trio.testing.MockClock) -> None:
    """Once an actor is stopped, ask and tell raise ActorStopped at once."""
    async with open_actor(Echo, name="gone") as ref:
        pass
    start = trio.current_time()
    with pytest.raises(ActorStopped) as info:
        await ref.ask(1)
    assert trio.current_time() == start
    assert info.value.actor == "gone"
    with pytest.raises(ActorStopped):
        await ref.tell(1)
    with pytest.raises(ActorStopped):
        ref.tell_nowait(1)
    assert ref.statistics().state is CellState.STOPPED


async def test_queued_asks_get_actor_stopped_at_shutdown(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Asks still queued when the actor stops for good are answered with ActorStopped."""
    errors: list[BaseException] = []

    async def asker(ref: ActorRef[Any, Any], i: int) -> None:
        try:
            await ref.ask(i)
        except ActorStopped as exc:
            errors.append(exc)

    async with trio.open_nursery() as outer:
        async with open_actor(Echo, shutdown=1.0) as ref:
            outer.start_soon(occupy, ref, 50.0)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(3):
                outer.start_soon(asker, ref, i)
            await trio.testing.wait_all_tasks_blocked()
        outer.cancel_scope.cancel()
    assert len(errors) == 3


async def test_on_start_and_on_stop_run_on_graceful_stop() -> None:
    """on_start runs before the first message and on_stop when the block ends normally."""
    actor = Echo()
    async with open_actor(actor) as ref:
        assert actor.started
        await ref.ask(1)
        assert not actor.stopped
    assert actor.stopped


async def test_tell_waits_for_room_and_tell_nowait_raises(
    mock_clock: trio.testing.MockClock,
) -> None:
    """tell() applies backpressure on a full mailbox; tell_nowait() raises MailboxFull."""
    async with open_actor(Echo, capacity=2, name="tiny") as ref:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(occupy, ref, 10.0)
            await trio.testing.wait_all_tasks_blocked()
            ref.tell_nowait("a")
            ref.tell_nowait("b")
            with pytest.raises(MailboxFull) as info:
                ref.tell_nowait("c")
            assert info.value.capacity == 2
            assert ref.statistics().mailbox_depth == 2
            start = trio.current_time()
            await ref.tell("c")  # waits until the sleeper finishes and room appears
            assert trio.current_time() - start == pytest.approx(10.0)
        assert (await ref.ask("seen"))[-4:] == ["a", "b", "c", "seen"]


async def test_ask_on_full_mailbox_waits_then_times_out(
    mock_clock: trio.testing.MockClock,
) -> None:
    """An ask on a full mailbox waits for room, but never past its timeout."""
    async with open_actor(Echo, capacity=1) as ref, trio.open_nursery() as nursery:
        nursery.start_soon(occupy, ref, 10.0)
        await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait("filler")
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await ref.ask("no room", timeout=3.0)
        assert trio.current_time() - start == pytest.approx(3.0)
        nursery.cancel_scope.cancel()


async def test_self_stop_ends_the_actor_normally() -> None:
    """Actor.stop() ends the actor after the current message, without an error."""
    async with open_actor(Echo) as ref:
        assert await ref.ask("stop") == "stopping"
        with pytest.raises(ActorStopped):
            for _ in range(10):
                await ref.ask(1)


async def test_busy_actor_yields_to_other_tasks() -> None:
    """An actor draining a long queue of instant messages still lets other tasks run."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with open_actor(Echo, capacity=2000) as ref, trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        for i in range(1000):
            ref.tell_nowait(i)
        before = ticks
        await ref.ask("sync")
        assert ticks - before >= 1000 // 64 - 1
        nursery.cancel_scope.cancel()


async def test_bad_arguments_are_rejected_clearly() -> None:
    """Bad timeouts and capacities raise ValueError naming the problem."""
    async with open_actor(Echo) as ref:
        for bad in (0, -1, math.nan):
            with pytest.raises(ValueError, match="timeout"):
                await ref.ask(1, timeout=bad)
        assert await ref.ask(2) == 2
    with pytest.raises(ValueError, match="capacity"):
        async with open_actor(Echo, capacity=0):
            pass
    with pytest.raises(TypeError, match="cannot be constructed"):
        ActorRef()
    with pytest.raises(TypeError, match="runtime"):
        Reply()
    with pytest.raises(TypeError, match="exception"):
        Failure("not an exception")  # type: ignore[arg-type]


async def test_actor_helpers_outside_runtime_raise() -> None:
    """Helpers on an actor that is not running say so instead of failing obscurely."""
    with pytest.raises(RuntimeError, match="not running"):
        _ = Echo().path


async def test_timer_heap_stays_bounded(mock_clock: trio.testing.MockClock) -> None:
    """Answered asks do not accumulate in the timeout heap (memory independent of traffic)."""
    timers: list[_Timers] = []
    async with open_actor(Echo) as ref:
        timers.append(ref._cell.timers)
        for i in range(10_000):
            await ref.ask(i)
        assert len(timers[0]) <= 2048


class Silent(Actor[Any, Any]):
    """Never answers: each ask waits for its timeout."""

    async def handle(self, message: Any) -> Any:
        self.defer()
        return None


async def test_an_ask_reads_the_run_clock_under_the_default_clock() -> None:
    """Under trio's own clock an ask reads ``perf_counter() + offset`` (one call cheaper than
    the clock's method): the same reading as ``trio.current_time()``, so the reply's deadline
    is the call's time plus its timeout, and the timeout fires then, not before."""
    async with open_actor(Silent) as ref:
        timers = ref._cell.timers
        assert timers.offset == trio.lowlevel.current_clock().offset  # type: ignore[attr-defined]
        for _ in range(100):
            before = trio.current_time()
            reading = timers.read() + timers.offset
            after = trio.current_time()
            assert before <= reading <= after
        start = trio.current_time()
        with trio.fail_after(30), pytest.raises(AskTimeout):
            await ref.ask("anyone?", timeout=0.05)
        assert trio.current_time() - start >= 0.05


async def test_an_ask_reads_any_other_clock_through_its_method(
    mock_clock: trio.testing.MockClock,
) -> None:
    """With another clock (here ``MockClock``) an ask reads the clock's own method, plus 0."""
    mock_clock.jump(1234.5)
    async with open_actor(Silent) as ref:
        timers = ref._cell.timers
        assert timers.offset == 0.0
        assert timers.read() + timers.offset == trio.current_time()
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await ref.ask("anyone?", timeout=7.0)
        assert trio.current_time() - start == pytest.approx(7.0)


async def test_ref_equality_and_repr() -> None:
    """Refs to one slot are equal and hash alike; repr names the path."""
    async with open_actor(Echo, name="eq") as ref:
        other = ActorRef._create(ref._cell)
        assert ref == other
        assert hash(ref) == hash(other)
        assert "eq" in repr(ref)
        assert ref.path == "eq"
        assert ref.name == "eq"


async def test_answered_asks_leave_the_timer_heap_at_once() -> None:
    """With one timeout for every ask, an answered ask's entry goes as the next is added, so
    replies die by reference counting instead of waiting in the heap for a compaction."""
    async with open_actor(Echo) as ref:
        timers = ref._cell.timers
        for i in range(3000):
            await ref.ask(i, timeout=30.0)
            assert len(timers) <= 2, f"{len(timers)} entries after ask {i}"


async def test_ask_on_a_full_mailbox_waits_its_timeout_in_all(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The time an ask spends waiting for mailbox room counts against its timeout: room that
    appears late leaves only the rest of the timeout for the reply."""
    async with open_actor(Echo, capacity=1) as ref, trio.open_nursery() as nursery:
        nursery.start_soon(occupy, ref, 9.0)
        await trio.testing.wait_all_tasks_blocked()
        ref.tell_nowait(("sleep", 100.0))  # fills the mailbox, then keeps the actor busy
        start = trio.current_time()
        with pytest.raises(AskTimeout):
            await ref.ask("late", timeout=10.0)  # room at 9 s, no reply before 10 s
        assert trio.current_time() - start == pytest.approx(10.0)
        nursery.cancel_scope.cancel()


class Spinner(Actor[Any, Any]):
    """Keeps its own mailbox non-empty: each message tells itself the next one."""

    def __init__(self) -> None:
        self.handled = 0

    async def handle(self, message: Any) -> None:
        self.handled += 1
        if self.handled < 200_000:  # a bound, so a runtime that cannot cancel it still ends
            self.ref.tell_nowait(message)


async def test_an_actor_feeding_its_own_mailbox_can_be_cancelled() -> None:
    """An actor whose handle never awaits and whose mailbox never empties still sees
    cancellation at its periodic yield."""
    spinner = Spinner()
    with trio.CancelScope() as scope:
        async with open_actor(spinner) as ref:
            ref.tell_nowait("go")
            for _ in range(10):
                await trio.lowlevel.checkpoint()
            scope.cancel()
            await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert spinner.handled < 10_000, spinner.handled


async def test_an_actor_feeding_its_own_mailbox_stops_when_asked() -> None:
    """The same actor stops gracefully when its block ends normally."""
    spinner = Spinner()
    async with open_actor(spinner) as ref:
        ref.tell_nowait("go")
        for _ in range(10):
            await trio.lowlevel.checkpoint()
    assert spinner.handled < 10_000, spinner.handled


class StrayCancel(Actor[Any, Any]):
    """Raises a trio.Cancelled caught from a scope that has already ended."""

    async def handle(self, message: Any) -> Any:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.lowlevel.checkpoint()
            except trio.Cancelled as exc:
                stray = exc
        raise stray


async def test_a_stray_cancelled_from_handle_is_a_crash(
    mock_clock: trio.testing.MockClock,
) -> None:
    """trio.Cancelled raised by actor code outside any cancelled scope is a crash: the caller
    gets ActorCrashed and the block raises, instead of the actor exiting as if stopped."""
    with pytest.raises(RuntimeError, match=r"stray trio\.Cancelled") as info:
        async with open_actor(StrayCancel, name="stray") as ref:
            with pytest.raises(ActorCrashed):
                await ref.ask("x")
            await trio.sleep(1.0)
    assert isinstance(info.value.__cause__, trio.Cancelled)


class StopsWhenIdle(Actor[Any, Any]):
    """Stops itself from a background task after a while, with no message in sight."""

    stopped_at: float | None = None

    async def on_start(self) -> None:
        self.spawn(self._later)

    async def _later(self) -> None:
        await trio.sleep(3.0)
        self.stop()

    async def on_stop(self) -> None:
        StopsWhenIdle.stopped_at = trio.current_time()

    async def handle(self, message: Any) -> Any:
        return message


async def test_stop_from_a_background_task_stops_an_idle_actor_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Actor.stop() called while no message is handled stops the actor then, not at the next
    message."""
    StopsWhenIdle.stopped_at = None
    async with open_actor(StopsWhenIdle) as ref:
        await trio.sleep(10.0)
        assert StopsWhenIdle.stopped_at == pytest.approx(3.0)
        with pytest.raises(ActorStopped):
            await ref.ask(1)
