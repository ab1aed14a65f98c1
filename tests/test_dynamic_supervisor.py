"""The dynamic supervisor (Elixir's DynamicSupervisor, Erlang/OTP's simple_one_for_one).

Each test is named after the behaviour it checks, most after OTP's ``supervisor_SUITE`` case
for it (``simple_one_for_one``, ``child_adm_simple``, ``simple_one_for_one_shutdown``,
``simple_one_for_one_escalation``, ``count_children``); a model-based test drives random
operations against a small reference model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import Actor, ActorCrashed, ActorRef, ActorStopped
from supervisors import (
    ChildCounts,
    ChildSpec,
    ChildStartFailed,
    DynamicSupervisor,
    DynamicSupervisorSpec,
    EventKind,
    MaxChildrenReached,
    NoSuchChild,
    SupervisionEvent,
    Supervisor,
    SupervisorGaveUp,
    SupervisorSpec,
    open_supervisor,
)

STARTS: list[tuple[str, tuple[Any, ...]]] = []
STOPS: list[str] = []


class Session(Actor[Any, Any]):
    """A per-session actor: remembers its user; "crash" crashes it, "exit" stops it."""

    def __init__(self, user: str = "", *, stop_delay: float = 0.0, fail: bool = False) -> None:
        self.user = user
        self.stop_delay = stop_delay
        self.fail = fail
        self.seen = 0

    async def on_start(self) -> None:
        if self.fail:
            raise OSError(f"no session for {self.user}")
        STARTS.append((self.path, (self.user,)))

    async def on_stop(self) -> None:
        await trio.sleep(self.stop_delay)
        STOPS.append(self.path)

    async def handle(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("session crashed")
        if message == "exit":
            self.stop()
            return "bye"
        self.seen += 1
        return (self.user, self.seen)


@pytest.fixture(autouse=True)
def _reset() -> None:
    STARTS.clear()
    STOPS.clear()


def sessions(restart: str = "permanent", **kw: Any) -> DynamicSupervisorSpec:
    template = ChildSpec("session", Session, restart=restart)
    return DynamicSupervisorSpec("sessions", template=template, **kw)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_simple_one_for_one_template_children_under_generated_names(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP simple_one_for_one: start_child(*args) calls the template's factory with them;
    children get generated names (the spec's name and a number), ordinary refs that the tree
    finds by path too, and are restarted alone (one_for_one) with the same arguments."""
    async with open_supervisor([sessions()]) as root:
        pool = root.dynamic_supervisor("sessions")
        ada = await pool.start_child("ada")
        bob = await pool.start_child("bob")
        assert (ada.path, bob.path) == ("sessions/session-1", "sessions/session-2")
        assert ada.name == "session-1"
        assert root.ref("sessions/session-2") == bob
        assert pool.ref("session-1") == ada
        assert await ada.ask("hi") == ("ada", 1)
        with pytest.raises(ActorCrashed):
            await ada.ask("crash")
        await settle()
        assert await ada.ask("hi") == ("ada", 1)  # a fresh instance, same user
        assert await bob.ask("hi") == ("bob", 1)  # untouched
        assert STARTS.count(("sessions/session-1", ("ada",))) == 2
        snapshot = pool.snapshot()
        assert snapshot.strategy == "dynamic"
        assert [(n.name, n.restarts) for n in snapshot.children] == [
            ("session-1", 1),
            ("session-2", 0),
        ]


async def test_start_child_spec_starts_ad_hoc_children(mock_clock: trio.testing.MockClock) -> None:
    """Elixir's DynamicSupervisor.start_child(spec): any spec, even a subtree; names from the
    spec's name; no template needed."""
    spec = DynamicSupervisorSpec("jobs")
    async with open_supervisor([spec]) as root:
        jobs = root.dynamic_supervisor("jobs")
        with pytest.raises(TypeError, match="no template"):
            await jobs.start_child()
        ref = await jobs.start_child_spec(ChildSpec("upload", lambda: Session("u")))
        sub = await jobs.start_child_spec(
            SupervisorSpec("pipeline", [ChildSpec("stage", lambda: Session("s"))])
        )
        again = await jobs.start_child_spec(ChildSpec("upload", lambda: Session("v")))
        assert (ref.path, sub.path, again.path) == (
            "jobs/upload-1",
            "jobs/pipeline-2",
            "jobs/upload-3",
        )
        assert isinstance(sub, Supervisor)
        assert await sub.ref("stage").ask(1) == ("s", 1)
        assert jobs.count_children() == ChildCounts(specs=3, active=3, supervisors=1, workers=2)
        await jobs.terminate_child(sub)
        assert jobs.count_children() == ChildCounts(specs=2, active=2, supervisors=0, workers=2)


async def test_child_adm_simple(mock_clock: trio.testing.MockClock) -> None:
    """OTP child_adm_simple: terminate_child by ref removes the child (its ref is stopped);
    terminating a former child is fine; a child of another supervisor, or an unknown name, is
    not found; restart_child and delete_child do not exist for dynamic children."""
    async with open_supervisor(
        [sessions(), SupervisorSpec("other", [ChildSpec("x", Session)])]
    ) as root:
        pool = root.dynamic_supervisor("sessions")
        first = await pool.start_child("a")
        second = await pool.start_child("b")
        assert pool.count_children() == ChildCounts(specs=2, active=2, supervisors=0, workers=2)
        await pool.terminate_child(first)
        assert pool.count_children() == ChildCounts(specs=1, active=1, supervisors=0, workers=1)
        with pytest.raises(ActorStopped):
            await first.ask(1)
        await pool.terminate_child(first)  # a former child: nothing to do
        await pool.terminate_child("session-2")  # by name
        assert pool.count_children().specs == 0
        with pytest.raises(ActorStopped):
            await second.ask(1)
        with pytest.raises(NoSuchChild):
            await pool.terminate_child("session-9")
        with pytest.raises(NoSuchChild):
            await pool.terminate_child(root.ref("other/x"))
        assert not hasattr(pool, "restart_child")
        assert not hasattr(pool, "delete_child")
        with pytest.raises(NoSuchChild, match="dynamic supervisor"):
            root.supervisor("sessions")
        with pytest.raises(NoSuchChild, match="no dynamic supervisor"):
            root.dynamic_supervisor("other")


async def test_max_children(mock_clock: trio.testing.MockClock) -> None:
    """Elixir's max_children: past it start_child raises MaxChildrenReached and starts
    nothing; a child waiting to be restarted still counts; room comes back as children go."""
    async with open_supervisor([sessions(max_children=2)]) as root:
        pool = root.dynamic_supervisor("sessions")
        assert pool.max_children == 2
        first = await pool.start_child("a")
        await pool.start_child("b")
        with pytest.raises(MaxChildrenReached) as info:
            await pool.start_child("c")
        assert (info.value.path, info.value.max_children) == ("sessions", 2)
        assert len(STARTS) == 2
        await pool.terminate_child(first)
        third = await pool.start_child("c")
        assert third.path == "sessions/session-3"  # names are never reused


async def test_restart_types_of_dynamic_children(mock_clock: trio.testing.MockClock) -> None:
    """A temporary child is never restarted and a transient one not after a normal exit:
    both are then removed (OTP keeps no spec for a dynamic child that stopped)."""
    tree = [
        sessions("temporary"),
        DynamicSupervisorSpec("t", template=ChildSpec("s", Session, restart="transient")),
    ]
    async with open_supervisor(tree) as root:
        temporary = root.dynamic_supervisor("sessions")
        transient = root.dynamic_supervisor("t")
        tmp = await temporary.start_child("a")
        tr_crash = await transient.start_child("b")
        tr_exit = await transient.start_child("c")
        with pytest.raises(ActorCrashed):
            await tmp.ask("crash")
        with pytest.raises(ActorCrashed):
            await tr_crash.ask("crash")
        assert await tr_exit.ask("exit") == "bye"
        await settle()
        assert temporary.count_children().specs == 0
        assert [n.name for n in transient.snapshot().children] == ["s-1"]
        assert await tr_crash.ask(1) == ("b", 1)
        for gone in (tmp, tr_exit):
            with pytest.raises(ActorStopped):
                await gone.ask(1)


async def test_a_failed_start_keeps_nothing(mock_clock: trio.testing.MockClock) -> None:
    """Elixir/OTP: a child whose start fails is discarded and the error returned; the
    supervisor and its other children are unaffected, and nothing is counted."""
    spec = DynamicSupervisorSpec("sessions", template=ChildSpec("session", Session), max_restarts=0)
    async with open_supervisor([spec]) as root:
        pool = root.dynamic_supervisor("sessions")
        ok = await pool.start_child("a")
        with pytest.raises(ChildStartFailed) as info:
            await pool.start_child("b", fail=True)
        assert info.value.path == "sessions/session-2"
        assert isinstance(info.value.cause, OSError)
        assert pool.count_children() == ChildCounts(specs=1, active=1, supervisors=0, workers=1)
        with pytest.raises(NoSuchChild):
            root.ref("sessions/session-2")
        assert await ok.ask(1) == ("a", 1)


async def test_simple_one_for_one_escalation(mock_clock: trio.testing.MockClock) -> None:
    """OTP simple_one_for_one_escalation: past the intensity the dynamic supervisor stops its
    children and gives up to its parent."""
    with pytest.raises(SupervisorGaveUp) as info:
        async with open_supervisor([sessions(max_restarts=1)], max_restarts=0) as root:
            pool = root.dynamic_supervisor("sessions")
            first = await pool.start_child("a")
            await pool.start_child("b")
            for _ in range(2):
                with pytest.raises(ActorCrashed):
                    await first.ask("crash")
                await settle()
            await trio.sleep_forever()
    assert info.value.cause is not None
    assert sorted(STOPS) == ["sessions/session-2"]  # the crashed one stopped without on_stop


async def test_simple_one_for_one_shutdown_stops_every_child_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    """OTP simple_one_for_one_shutdown: children are stopped all at once, each within its own
    grace (a slow one is cancelled at the end of it), not one after the other."""
    spec = DynamicSupervisorSpec("pool")
    async with open_supervisor([spec]) as root:
        pool = root.dynamic_supervisor("pool")
        for delay, grace in ((1.0, 5.0), (1.0, 5.0), (3.0, 5.0), (60.0, 2.0)):
            await pool.start_child_spec(
                ChildSpec("s", lambda d=delay: Session(stop_delay=d), shutdown=grace)
            )
        began = trio.current_time()
    assert trio.current_time() - began == pytest.approx(3.0)  # not 1 + 1 + 3 + 2
    assert sorted(STOPS) == ["pool/s-1", "pool/s-2", "pool/s-3"]  # s-4 was cancelled


async def test_dynamic_children_are_kept_when_their_supervisor_restarts(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A difference from OTP, on purpose: a dynamic supervisor restarted by its parent starts
    its permanent and transient children again (same slots, same refs), where OTP's comes back
    empty; its temporary children are dropped, as OTP drops them."""
    tree = [
        DynamicSupervisorSpec("p", template=ChildSpec("s", Session), max_restarts=0),
        DynamicSupervisorSpec(
            "t", template=ChildSpec("s", Session, restart="temporary"), max_restarts=0
        ),
    ]
    async with open_supervisor(tree, max_restarts=5) as root:
        kept = await root.dynamic_supervisor("p").start_child("kept")
        other = await root.dynamic_supervisor("p").start_child("other")
        gone = await root.dynamic_supervisor("t").start_child("gone")
        crasher = await root.dynamic_supervisor("t").start_child("crasher")
        with pytest.raises(ActorCrashed):
            await kept.ask("crash")  # p gives up; root restarts it with its children
        with pytest.raises(ActorCrashed):
            await crasher.ask("crash")  # temporary: removed, t carries on
        await settle()
        assert await kept.ask(1) == ("kept", 1)
        assert await other.ask(1) == ("other", 1)
        assert root.dynamic_supervisor("p").count_children().active == 2
        assert await gone.ask(1) == ("gone", 1)


async def test_count_children_does_not_list_them(mock_clock: trio.testing.MockClock) -> None:
    """OTP count_children: counts without building the list of children; active excludes a
    child waiting out its restart backoff."""
    from supervisors import RestartBackoff

    spec = DynamicSupervisorSpec(
        "pool",
        template=ChildSpec("s", Session),
        backoff=RestartBackoff(min_delay=5, max_delay=5, jitter=0),
    )
    async with open_supervisor([spec]) as root:
        pool = root.dynamic_supervisor("pool")
        refs = [await pool.start_child(str(i)) for i in range(50)]
        assert pool.count_children() == ChildCounts(specs=50, active=50, supervisors=0, workers=50)
        with pytest.raises(ActorCrashed):
            await refs[7].ask("crash")
        await settle()
        assert pool.count_children() == ChildCounts(specs=50, active=49, supervisors=0, workers=50)
        await trio.sleep(5)
        await settle()
        assert pool.count_children().active == 50
        assert root.count_children() == ChildCounts(specs=1, active=1, supervisors=1, workers=0)


# ------------------------------------------------------------------------ model-based


@dataclass
class ModelChild:
    user: str
    restart: str
    alive: bool = True


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["start", "crash", "exit", "terminate", "ask", "count", "time"]),
            st.integers(0, 30),
            st.sampled_from(["permanent", "transient", "temporary"]),
        ),
        max_size=40,
    ),
    limit=st.sampled_from([None, 3, 8]),
)
def test_dynamic_supervisor_against_a_model(
    ops: list[tuple[str, int, str]], limit: int | None
) -> None:
    """Random starts (each restart type), crashes, normal exits, terminations and time: the
    children, their counts and every ask's outcome match a model of simple_one_for_one."""

    async def main() -> None:
        pool_spec = DynamicSupervisorSpec("pool", max_children=limit, max_restarts=10**6)
        async with open_supervisor([pool_spec]) as root:
            pool = root.dynamic_supervisor("pool")
            model: dict[str, ModelChild] = {}
            refs: dict[str, ActorRef[Any, Any]] = {}
            for op, index, restart in ops:
                names = sorted(refs)
                name = names[index % len(names)] if names else None
                if op == "start":
                    live = sum(c.alive for c in model.values())
                    spec = ChildSpec("c", lambda u=str(index): Session(u), restart=restart)
                    if limit is not None and live >= limit:
                        with pytest.raises(MaxChildrenReached):
                            await pool.start_child_spec(spec)
                        continue
                    ref = await pool.start_child_spec(spec)
                    refs[ref.name] = ref
                    model[ref.name] = ModelChild(str(index), restart)
                elif op in ("crash", "exit", "ask") and name is not None:
                    child = model[name]
                    try:
                        await refs[name].ask(op)
                        result = "reply"
                    except ActorCrashed:
                        result = "crashed"
                    except ActorStopped:
                        result = "stopped"
                    if not child.alive:
                        assert result == "stopped"
                        continue
                    assert result == ("crashed" if op == "crash" else "reply")
                    if op == "crash" and child.restart == "temporary":
                        child.alive = False
                    if op == "exit" and child.restart != "permanent":
                        child.alive = False
                elif op == "terminate" and name is not None:
                    await pool.terminate_child(refs[name])
                    model[name].alive = False
                elif op == "time":
                    await trio.sleep(index)
                await trio.testing.wait_all_tasks_blocked()
                alive = sorted(n for n, c in model.items() if c.alive)
                assert [n.name for n in pool.snapshot().children] == alive
                live = len(alive)
                assert pool.count_children() == ChildCounts(
                    specs=live, active=live, supervisors=0, workers=live
                )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_events_of_dynamic_children(mock_clock: trio.testing.MockClock) -> None:
    """Dynamic children's starts, crashes, restarts and terminations are supervision events
    like any other (what the monitor and the logs see)."""
    events: list[SupervisionEvent] = []
    async with open_supervisor([sessions()]) as root:
        root.add_listener(events.append)
        pool: DynamicSupervisor = root.dynamic_supervisor("sessions")
        ref = await pool.start_child("a")
        with pytest.raises(ActorCrashed):
            await ref.ask("crash")
        await settle()
        await pool.terminate_child(ref)
    kinds = [(e.kind, e.path) for e in events if e.path.startswith("sessions/")]
    assert kinds == [
        (EventKind.STARTED, "sessions/session-1"),
        (EventKind.CRASHED, "sessions/session-1"),
        (EventKind.RESTARTED, "sessions/session-1"),
        (EventKind.STOPPED, "sessions/session-1"),
    ]


def test_the_sessions_example_keeps_its_invariants(capsys: pytest.CaptureFixture[str]) -> None:
    """examples.sessions (per-session and per-request actors) ends with every invariant held."""
    from examples.sessions import main

    clock = trio.testing.MockClock(autojump_threshold=0)
    assert trio.run(main, 7, 5.0, 30, clock=clock) == 0
    out = capsys.readouterr().out
    assert "all invariants held" in out
    assert "'busy'" in out  # max_children refused some renders
