"""SQLite journal: durability, group commit, file checks, cancellation, failures, crashes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import given, settings

from actors._errors import ErrorCategory
from actors._saga._journals._records import JournalError, SagaEvent, SagaEventKind, SagaHeader
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._journals._sqlite._schema import APPLICATION_ID, SCHEMA_VERSION
from actors._saga._journals._state import SagaState, saga_state
from tests.test_journal import Driver, draw_recorded, header

K = SagaEventKind


async def opened(path: Path, **options: object) -> SqliteJournal:
    journal = SqliteJournal(path, **options)  # type: ignore[arg-type]
    await journal.open()
    return journal


class Gate:
    """A before-commit hook that holds the writer thread inside its first commit until opened."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, conn: sqlite3.Connection) -> None:
        if not self.release.is_set():
            self.entered.set()
            self.release.wait(10)
            if self.fail is not None:
                raise self.fail

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 10)


def install(journal: SqliteJournal, hook: Callable[[sqlite3.Connection], None]) -> None:
    assert journal._writer is not None
    journal._writer.before_commit = hook


# ------------------------------------------------------------------------------ durability


async def test_acknowledged_writes_survive_close_and_reopen(tmp_path: Path) -> None:
    """Everything written before aclose is there after reopening (default synchronous=FULL)."""
    path = tmp_path / "j.db"
    journal = await opened(path)
    sagas = []
    for i in range(20):
        saga = await Driver(journal, f"s{i}", created_at=float(i)).start()
        await saga.steps(i % 4)
        if i % 3 == 0:
            await saga.finish()
        elif i % 3 == 1:
            await saga.go(K.COMPENSATING, data=b"boom")
        sagas.append(saga)
    before = await journal.list_unfinished()
    await journal.aclose()

    async with SqliteJournal(path) as again:
        loaded = {h.saga_id: saga_state(h, events) for h, events in await again.load_unfinished()}
        assert loaded == {s.header.saga_id: s.state for s in sagas if not s.state.finished}
        for saga in sagas:
            found = await again.get(saga.header.saga_id)
            assert found is not None
            assert saga_state(*found) == saga.state
        assert await again.list_unfinished() == before


async def test_concurrent_appenders_share_commits(tmp_path: Path) -> None:
    """Group commit at the size it is claimed: 100 sagas stepping together commit each round
    of their 1,200 rows in one transaction (12 rounds: create, 5 x 2 steps, finish), about
    100 rows per commit."""
    async with SqliteJournal(tmp_path / "j.db") as journal:

        async def run(i: int) -> None:
            saga = await Driver(journal, f"s{i}").start()
            await saga.steps(5)
            await saga.finish()

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(run, i)
        stats = journal.statistics()
    assert stats.rows == 1200
    assert stats.appends == 1200
    assert stats.commits <= 14
    assert stats.rows_per_commit >= 90


async def test_everything_queued_during_a_commit_goes_in_the_next_one(tmp_path: Path) -> None:
    """While the writer commits one request, 99 more queue; they all share the next commit."""
    async with SqliteJournal(tmp_path / "j.db") as journal:
        sagas = [await Driver(journal, f"s{i}").start() for i in range(100)]
        gate = Gate()
        install(journal, gate)
        base = journal.statistics()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sagas[0].go, K.STEP_STARTED, 0)
            await gate.wait_entered()
            for saga in sagas[1:]:
                nursery.start_soon(saga.go, K.STEP_STARTED, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert journal.statistics().queue_depth == 100
            gate.release.set()
        stats = journal.statistics()
    assert stats.rows - base.rows == 100
    assert stats.commits - base.commits == 2
    assert stats.queue_depth == 0


# ------------------------------------------------------------------------------ file checks


def contents(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


async def expect_refused(path: Path, match: str) -> JournalError:
    before = contents(path)
    with pytest.raises(JournalError, match=match) as info:
        async with SqliteJournal(path):
            pass  # pragma: no cover - opening must fail
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    if before is not None:
        assert contents(path) == before, "the file must never be reset or overwritten"
    return info.value


async def make_journal_file(path: Path, sagas: int = 150) -> None:
    async with SqliteJournal(path, synchronous="NORMAL") as journal:
        for i in range(sagas):
            saga = await Driver(journal, f"s{i}").start()
            await saga.steps(3)
            await saga.go(K.STEP_STARTED, 3, b"x" * 200)


async def test_a_file_of_random_bytes_is_refused(tmp_path: Path) -> None:
    """Random bytes: JournalError (configuration) naming the path; the file is untouched."""
    path = tmp_path / "random.db"
    path.write_bytes(random.Random(1).randbytes(8192))
    error = await expect_refused(path, "not a SQLite database")
    assert error.category is ErrorCategory.CONFIGURATION


async def test_a_sqlite_header_followed_by_garbage_is_refused(tmp_path: Path) -> None:
    """A valid SQLite magic string over random pages is reported as corrupt."""
    path = tmp_path / "garbage.db"
    path.write_bytes(b"SQLite format 3\x00" + random.Random(2).randbytes(8192 - 16))
    await expect_refused(path, "corrupt|not a SQLite")


@pytest.mark.parametrize("app_id", [0, 0x12345678])
async def test_a_sqlite_database_of_another_application_is_refused(
    tmp_path: Path, app_id: int
) -> None:
    """A SQLite file with another (or no) application_id is refused, not adopted."""
    path = tmp_path / "foreign.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers VALUES (1, 'Ada')")
    conn.execute(f"PRAGMA application_id = {app_id}")
    conn.commit()
    conn.close()
    error = await expect_refused(path, "another application")
    assert error.category is ErrorCategory.CONFIGURATION


async def test_a_journal_with_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A journal whose user_version is newer than this code supports is refused."""
    path = tmp_path / "future.db"
    await make_journal_file(path, sagas=2)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    await expect_refused(path, "newer")


@pytest.mark.parametrize("keep", [0.5, 50])
async def test_a_truncated_journal_is_refused(tmp_path: Path, keep: float) -> None:
    """A journal cut short (to half its size, or to 50 bytes) is refused at open."""
    path = tmp_path / "cut.db"
    await make_journal_file(path)
    data = path.read_bytes()
    assert len(data) > 16 * 4096
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    await expect_refused(path, "corrupt|truncated|not a SQLite")


async def test_a_journal_with_a_damaged_page_is_refused(tmp_path: Path) -> None:
    """Garbage written over pages in the middle of a journal is found by the open check."""
    path = tmp_path / "damaged.db"
    await make_journal_file(path)
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle : middle + 2 * page] = random.Random(3).randbytes(2 * page)
    path.write_bytes(bytes(data))
    await expect_refused(path, "corrupt")


async def test_unusable_paths_are_refused_with_a_configuration_error(tmp_path: Path) -> None:
    """A directory, or a file in a missing directory, gives a configuration JournalError."""
    error = await expect_refused(tmp_path, "is a directory")
    assert error.category is ErrorCategory.CONFIGURATION
    error = await expect_refused(tmp_path / "missing" / "j.db", "cannot be opened")
    assert error.category is ErrorCategory.CONFIGURATION


async def test_new_files_carry_the_application_id_and_schema_version(tmp_path: Path) -> None:
    """A fresh journal file is marked with our application_id, user_version and meta table."""
    path = tmp_path / "new.db"
    async with SqliteJournal(path):
        pass
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert meta == {
        "application": "aura-actors saga journal",
        "schema_version": str(SCHEMA_VERSION),
    }
    conn.close()


async def test_an_empty_file_becomes_a_new_journal(tmp_path: Path) -> None:
    """A zero-byte file holds nothing to lose: it is initialised as a journal."""
    path = tmp_path / "empty.db"
    path.touch()
    async with SqliteJournal(path) as journal:
        await Driver(journal, "a").start()
    async with SqliteJournal(path) as journal:
        assert [s.saga_id for s in await journal.list_unfinished()] == ["a"]


async def test_a_second_journal_on_the_same_file_is_refused(tmp_path: Path) -> None:
    """The file is locked while a journal has it open: a second one gets JournalError."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        await Driver(journal, "a").start()
        with pytest.raises(JournalError, match="in use") as info:
            async with SqliteJournal(path):
                pass  # pragma: no cover - opening must fail
        assert info.value.path == str(path)
        await Driver(journal, "b").start()


async def test_a_cancelled_open_leaves_the_file_closed_and_reusable(tmp_path: Path) -> None:
    """Cancelling open() closes the journal behind it; the file can be opened again."""
    path = tmp_path / "j.db"
    journal = SqliteJournal(path)
    with trio.CancelScope() as scope:
        scope.cancel()
        await journal.open()
    assert scope.cancelled_caught
    with trio.fail_after(10):
        await journal.aclose()
    async with SqliteJournal(path) as again:
        await Driver(again, "a").start()


# ---------------------------------------------------------------- cancellation, backpressure


async def test_a_caller_cancelled_while_its_write_is_queued_stops_waiting_and_it_lands(
    tmp_path: Path,
) -> None:
    """Cancelled after queueing: the caller returns at once; the write still commits."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        saga = await Driver(journal, "a").start()
        gate = Gate()
        install(journal, gate)
        event = saga.event(K.STEP_STARTED, 0)
        scope = trio.CancelScope()

        async def appender() -> None:
            with scope:
                await journal.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(appender)
            await gate.wait_entered()
            scope.cancel()
        assert scope.cancelled_caught
        assert journal.statistics().queue_depth == 1  # still committing
        gate.release.set()
        found = await journal.get("a")  # queued behind the write: sees it
        assert found is not None
        assert found[1][-1] == event
        await saga.go(K.STEP_COMPLETED, 0)
    async with SqliteJournal(path) as again:
        ((h, events),) = await again.load_unfinished()
        assert saga_state(h, events) == saga.state


async def test_callers_wait_for_room_and_a_cancelled_waiter_writes_nothing(
    tmp_path: Path,
) -> None:
    """With max_pending=2, later writers park; one cancelled while parked writes nothing."""
    async with SqliteJournal(tmp_path / "j.db", max_pending=2) as journal:
        sagas = [await Driver(journal, f"s{i}").start() for i in range(5)]
        gate = Gate()
        install(journal, gate)
        parked = trio.CancelScope()

        async def parked_writer() -> None:
            with parked:
                await sagas[4].go(K.STEP_STARTED, 0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sagas[0].go, K.STEP_STARTED, 0)
            await gate.wait_entered()
            for saga in sagas[1:4]:
                nursery.start_soon(saga.go, K.STEP_STARTED, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert journal.statistics().queue_depth == 2  # two of sagas 1-3 wait for room
            nursery.start_soon(parked_writer)
            await trio.testing.wait_all_tasks_blocked()
            assert journal.statistics().queue_depth == 2
            parked.cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert parked.cancelled_caught
        for i, saga in enumerate(sagas):
            found = await journal.get(saga.header.saga_id)
            assert found is not None
            assert len(found[1]) == (1 if i == 4 else 2)
        assert journal.statistics().queue_depth == 0


# --------------------------------------------------------------------------- writer failure


async def test_a_failing_commit_fails_every_waiter_and_every_later_call(tmp_path: Path) -> None:
    """An I/O error in a commit: queued and later callers get JournalError; nothing hangs."""
    path = tmp_path / "j.db"
    journal = await opened(path)
    sagas = [await Driver(journal, f"s{i}").start() for i in range(10)]
    gate = Gate(fail=sqlite3.OperationalError("disk I/O error"))
    install(journal, gate)
    errors: list[BaseException] = []

    async def write(saga: Driver) -> None:
        try:
            await saga.go(K.STEP_STARTED, 0)
        except JournalError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, sagas[0])
            await gate.wait_entered()
            for saga in sagas[1:]:
                nursery.start_soon(write, saga)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
    assert len(errors) == 10
    assert len({id(e) for e in errors}) == 10, "every caller gets its own error object"
    for error in errors:
        assert str(path) in str(error)
        assert "disk I/O error" in str(error)
        assert isinstance(error.__cause__, sqlite3.OperationalError)
    with pytest.raises(JournalError, match="disk I/O error"):
        await Driver(journal, "later").start()
    with pytest.raises(JournalError):
        await journal.get("s0")
    with trio.fail_after(10):
        await journal.aclose()
    async with SqliteJournal(path) as again:  # the failed batch was rolled back
        loaded = await again.load_unfinished()
        assert sorted(len(events) for _, events in loaded) == [1] * 10


async def test_a_full_disk_surfaces_as_a_journal_error(tmp_path: Path) -> None:
    """SQLITE_FULL (the file may not grow) fails the write with a JournalError, not a hang."""
    async with SqliteJournal(tmp_path / "j.db") as journal:
        saga = await Driver(journal, "a").start()

        def cap(conn: sqlite3.Connection) -> None:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages + 2}")

        install(journal, cap)
        await saga.go(K.STEP_STARTED, 0)
        with trio.fail_after(10), pytest.raises(JournalError, match="full"):
            await saga.go(K.STEP_COMPLETED, 0, b"x" * 200_000)
        assert isinstance(journal.statistics().queue_depth, int)
        with pytest.raises(JournalError, match="full"):
            await journal.list_unfinished()


# -------------------------------------------------------------------------- crash (SIGKILL)

CHILD = """
import sys, time, trio
from actors import SagaEventKind as K, SagaHeader, SagaState, SqliteJournal

def ack(saga_id, seq):
    sys.stdout.write(f"ACK {saga_id} {seq}\\n")  # one write: a kill cannot split a line

async def worker(journal, w):
    for i in range(10**9):
        header = SagaHeader(f"{sys.argv[2]}-w{w}-{i}", "crash", time.time())
        state = SagaState.new(header)
        if i % 2:  # as a coordinator writes: pairs of events sharing a row
            first = state.next_event(K.STARTED)
            state = state.advance(first)
            then = state.next_event(K.STEP_STARTED, 0, at=first.at)
            state = state.advance(then)
            await journal.create(header, first, then=[then])
            ack(header.saga_id, then.seq)
            for s in range(4):
                done = state.next_event(K.STEP_COMPLETED, s, b"r")
                state = state.advance(done)
                kind, step = (K.STEP_STARTED, s + 1) if s < 3 else (K.COMPLETED, None)
                then = state.next_event(kind, step, at=done.at)
                state = state.advance(then)
                await journal.append_many([done, then])
                ack(header.saga_id, then.seq)
            continue
        event = state.next_event(K.STARTED)
        state = state.advance(event)
        await journal.create(header, event)
        ack(header.saga_id, event.seq)
        moves = [m for s in range(4) for m in ((K.STEP_STARTED, s), (K.STEP_COMPLETED, s))]
        for kind, step in [*moves, (K.COMPLETED, None)]:
            event = state.next_event(kind, step, b"r")
            state = state.advance(event)
            await journal.append(event)
            ack(header.saga_id, event.seq)

async def main(path):
    async with SqliteJournal(path) as journal:
        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(worker, journal, w)

trio.run(main, sys.argv[1])
"""


def kill_after_acks(path: Path, acks: int, prefix: str) -> dict[str, int]:
    """Run the child until it acknowledged ``acks`` appends, SIGKILL it; return saga -> max seq."""
    acked: dict[str, int] = {}
    seen = 0
    with subprocess.Popen(
        [sys.executable, "-u", "-c", CHILD, str(path), prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    ) as child:
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            # Lines still in the pipe after the kill were printed after their append returned:
            # they are acknowledged too, so read to the end.
            for line in child.stdout:
                if not line.endswith("\n"):
                    break  # cut short by the kill: not an acknowledgement
                _, saga_id, seq = line.split()
                acked[saga_id] = max(acked.get(saga_id, -1), int(seq))
                seen += 1
                if seen == acks:
                    os.kill(child.pid, signal.SIGKILL)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(10)
        stderr = child.stderr.read()
    assert child.returncode == -signal.SIGKILL, stderr
    assert seen >= acks, stderr
    return acked


async def check_after_crash(path: Path, acked: dict[str, int]) -> None:
    async with SqliteJournal(path) as journal:
        for saga_id, seq in acked.items():
            found = await journal.get(saga_id)
            assert found is not None, f"acknowledged saga {saga_id} lost"
            assert len(found[1]) > seq, f"acknowledged event {saga_id}#{seq} lost"
        for h, events in await journal.load_unfinished():
            assert not saga_state(h, events).finished


def crash_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    """Kill the child ``rounds`` times over ONE journal file, checking it after every restart."""
    rng = random.Random(seed)
    path = tmp_path / "crash.db"
    acked: dict[str, int] = {}
    for round_ in range(rounds):
        acked |= kill_after_acks(path, rng.randint(20, 600), prefix=f"r{round_}")
        trio.run(check_after_crash, path, acked)


def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    """A child killed with SIGKILL mid-stream loses no append it had acknowledged (3 rounds)."""
    crash_rounds(tmp_path, rounds=3, seed=5)


@pytest.mark.slow
def test_every_acknowledged_append_survives_30_sigkills(tmp_path: Path) -> None:
    """30 SIGKILLs at seeded random moments: every acknowledged append is in the journal."""
    crash_rounds(tmp_path, rounds=30, seed=11)


# ------------------------------------------------------------------ rows, batches, upgrades


def _events_table(path: Path) -> tuple[int, list[tuple[object, ...]]]:
    """(rows in ``events``, every event of the ``event_log`` view in order)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        log = conn.execute(
            "SELECT saga_no, seq, kind, step, at, data FROM event_log ORDER BY saga_no, seq"
        ).fetchall()
    finally:
        conn.close()
    return rows, log


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_events_written_in_any_grouping_read_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """A valid history written as a create (with some events after it), single appends and
    append_many groups, with events sharing their time or not, reads back event for event
    (after a restart too), and the event_log view lists the same events."""
    ref = draw_recorded(data, max_events=30)
    if not ref.history:
        return
    times: list[float] = []
    events = []
    for seq, (kind, step) in enumerate(ref.history):
        same = bool(times) and data.draw(st.booleans())
        times.append(times[-1] if same else 1000.0 + seq)
        body = b"" if data.draw(st.booleans()) else b"d%d" % seq
        events.append(SagaEvent("s", seq, kind, step, times[-1], body))
    state = SagaState.new(header("s"))
    states = [state := state.advance(e) for e in events]
    # The create carries the events after `started` up to the first that ends the saga.
    limit = next((i for i, s in enumerate(states) if s.finished), len(events))
    first = data.draw(st.integers(1, max(1, min(limit, 4))))
    path = tmp_path_factory.mktemp("rows") / "j.db"

    async def main() -> None:
        async with SqliteJournal(path, synchronous="NORMAL") as journal:
            await journal.create(header("s"), events[0], then=events[1:first])
            i = first
            while i < len(events):
                size = data.draw(st.integers(1, 3))
                group = events[i : i + size]
                if len(group) == 1 and data.draw(st.booleans()):
                    await journal.append(group[0])
                else:
                    await journal.append_many(group)
                i += size
            found = await journal.get("s")
            assert found is not None
            assert found[1] == events
        async with SqliteJournal(path) as again:
            found = await again.get("s")
            assert found is not None
            assert found[1] == events
            assert saga_state(*found) == states[-1]

    trio.run(main)
    rows, log = _events_table(path)
    assert rows <= len(events)
    assert log == [(1, e.seq, e.kind.value, e.step, e.at, e.data) for e in events]


async def test_a_step_and_the_next_start_share_one_row(tmp_path: Path) -> None:
    """A saga written as a coordinator writes it (its start with its first step's start, then
    each completion with the next start) takes one row per step."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        saga = Driver(journal, "a", at=5.0)
        started = saga.event(K.STARTED)
        await journal.create(saga.header, started, then=[saga.event(K.STEP_STARTED, 0)])
        for i in range(3):
            done = saga.event(K.STEP_COMPLETED, i, b"r%d" % i)
            then = (
                SagaEvent("a", done.seq + 1, K.STEP_STARTED, i + 1, done.at)
                if i < 2
                else SagaEvent("a", done.seq + 1, K.COMPLETED, None, done.at)
            )
            saga.state = saga.state.advance(then)
            await journal.append_many([done, then])
        found = await journal.get("a")
        assert found is not None
        assert saga_state(*found) == saga.state
        assert saga.state.phase.value == "completed"
        assert journal.statistics().rows == 8
    rows, log = _events_table(path)
    assert rows == 4
    assert [seq for _, seq, *_ in log] == list(range(8))


async def test_creates_and_finishes_in_one_commit_each_get_their_own_outcome(
    tmp_path: Path,
) -> None:
    """Many creates and finishes queued behind one commit share the next one; a create whose
    id is already in the journal (even from the same batch) fails alone."""
    async with SqliteJournal(tmp_path / "j.db") as journal:
        sagas = [await Driver(journal, f"old{i}").start() for i in range(40)]
        gate = Gate()
        install(journal, gate)
        results: dict[str, object] = {}

        async def create(saga_id: str) -> None:
            try:
                await Driver(journal, saga_id).start()
            except JournalError as exc:
                results[saga_id] = exc
            else:
                results[saga_id] = "ok"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sagas[0].finish)
            await gate.wait_entered()
            for saga in sagas[1:]:
                nursery.start_soon(saga.finish)
            for i in range(30):
                nursery.start_soon(create, f"new{i}")
            nursery.start_soon(create, "old5")  # finishing in this batch: still there
            await trio.testing.wait_all_tasks_blocked()
            base = journal.statistics().commits
            gate.release.set()
        assert journal.statistics().commits - base == 2  # the held one, then all the rest
        assert all(results[f"new{i}"] == "ok" for i in range(30))
        assert isinstance(results["old5"], JournalError)
        assert "already exists" in str(results["old5"])
        with pytest.raises(JournalError, match="already exists"):
            await Driver(journal, "new3").start()
    async with SqliteJournal(tmp_path / "j.db") as again:
        listed = {s.saga_id for s in await again.list_unfinished()}
        assert listed == {f"new{i}" for i in range(30)}
        for i in range(40):
            found = await again.get(f"old{i}")
            assert found is not None
            assert saga_state(*found).phase.value == "completed"


# A journal file as version 1 of the schema made it (one event per row).
_SCHEMA_V1 = """
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE sagas (
    saga_no INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL UNIQUE,
    definition TEXT NOT NULL,
    created_at REAL NOT NULL,
    payload BLOB NOT NULL,
    metadata TEXT NOT NULL,
    outcome TEXT,
    finished_at REAL
);
CREATE INDEX sagas_open ON sagas (created_at) WHERE outcome IS NULL;
CREATE INDEX sagas_prunable ON sagas (finished_at)
    WHERE outcome IS NOT NULL AND outcome != 'compensation_failed';
CREATE TABLE events (
    saga_no INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    step INTEGER,
    at REAL NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (saga_no, seq)
) WITHOUT ROWID;
INSERT INTO meta VALUES ('application', 'aura-actors saga journal');
INSERT INTO meta VALUES ('schema_version', '1');
PRAGMA application_id = 1096110666;
PRAGMA user_version = 1;
COMMIT;
"""


V1Saga = tuple[list[tuple[str, int | None, bytes]], str | None]


def _write_v1(path: Path, sagas: dict[str, V1Saga]) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(_SCHEMA_V1)
    for number, (saga_id, (moves, outcome)) in enumerate(sagas.items(), start=1):
        conn.execute(
            "INSERT INTO sagas VALUES (?, ?, 'video', ?, X'', '{}', ?, ?)",
            (number, saga_id, float(number), outcome, 2000.0 if outcome else None),
        )
        for seq, (kind, step, data) in enumerate(moves):
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                (number, seq, kind, step, 1000.0 + seq, data),
            )
    conn.close()


async def test_a_journal_of_the_previous_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    """A version-1 file is checked, then upgraded (new columns, view, version 2) and every saga
    in it resumes where it was; new writes land and survive a restart."""
    path = tmp_path / "v1.db"
    _write_v1(
        path,
        {
            "running": (
                [
                    ("started", None, b""),
                    ("step_started", 0, b""),
                    ("step_completed", 0, b"r"),
                    ("step_started", 1, b""),
                ],
                None,
            ),
            "done": ([("started", None, b""), ("completed", None, b"")], "completed"),
            "stuck": (
                [
                    ("started", None, b""),
                    ("step_started", 0, b""),
                    ("step_completed", 0, b"r"),
                    ("compensating", None, b"why"),
                    ("compensation_started", 0, b""),
                    ("compensation_failed", 0, b"e"),
                ],
                "compensation_failed",
            ),
        },
    )
    assert APPLICATION_ID == 1096110666  # the value in _SCHEMA_V1
    async with SqliteJournal(path) as journal:
        ((h, events),) = await journal.load_unfinished()
        state = saga_state(h, events)
        assert (h.saga_id, state.phase.value, state.step_in_flight) == (
            "running",
            "step_in_flight",
            1,
        )
        listed = {s.saga_id: s.phase.value for s in await journal.list_unfinished()}
        assert listed == {"running": "step_in_flight", "stuck": "compensation_failed"}
        found = await journal.get("done")
        assert found is not None
        assert saga_state(*found).phase.value == "completed"
        done = state.next_event(K.STEP_COMPLETED, 1, b"r1")
        end = SagaEvent("running", done.seq + 1, K.COMPLETED, None, done.at)
        await journal.append_many([done, end])
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert dict(conn.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == "2"
    conn.close()
    async with SqliteJournal(path) as again:
        assert [s.saga_id for s in await again.list_unfinished()] == ["stuck"]
        found = await again.get("running")
        assert found is not None
        assert [e.kind.value for e in found[1]][-2:] == ["step_completed", "completed"]
    rows, log = _events_table(path)
    assert len(log) == 14  # 4 + 2 written now, 2, 6
    assert rows == 13  # the two written now share a row


async def test_a_damaged_journal_of_the_previous_schema_is_refused_not_upgraded(
    tmp_path: Path,
) -> None:
    """A version-1 file with an inconsistent meta table is refused and left as it was."""
    path = tmp_path / "v1.db"
    _write_v1(path, {"a": ([("started", None, b"")], None)})
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    await expect_refused(path, "inconsistent meta")


# -------------------------------------------------------------- durability level, group size


async def journal_pragma(journal: SqliteJournal, name: str) -> object:
    """A PRAGMA of the journal's own connection, read on its writer thread."""
    from actors._saga._journals._sqlite._writer import _READ, _Request

    request = _Request(_READ)
    request.fn = lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0]
    await journal._wait_for_room()
    return await journal._submit(request)


@pytest.mark.parametrize(("level", "value"), [(None, 2), ("FULL", 2), ("NORMAL", 1)])
async def test_the_connection_runs_at_the_synchronous_level_promised(
    tmp_path: Path, level: str | None, value: int
) -> None:
    """FULL by default (every commit fsyncs the WAL: durable across a power cut), NORMAL when
    asked: read back from the live connection after writes, so a journal whose connection ran
    at OFF (or any other level than promised) fails here."""
    options = {} if level is None else {"synchronous": level}
    async with SqliteJournal(tmp_path / "j.db", **options) as journal:  # type: ignore[arg-type]
        saga = await Driver(journal, "a").start()
        await saga.steps(2)
        assert await journal_pragma(journal, "synchronous") == value
        assert await journal_pragma(journal, "journal_mode") == "wal"
        await saga.finish()
        assert await journal_pragma(journal, "synchronous") == value


async def test_a_connection_that_does_not_keep_its_synchronous_level_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the library ignored the requested level (every connection stuck at OFF), opening
    the journal fails: durability is never silently weaker than promised."""
    real_connect = sqlite3.connect

    class StuckOff(sqlite3.Connection):
        def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
            if sql.upper().replace(" ", "").startswith("PRAGMASYNCHRONOUS="):
                sql = "PRAGMA synchronous = OFF"
            return super().execute(sql, *args)  # type: ignore[arg-type]

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        return real_connect(*args, factory=StuckOff, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(sqlite3, "connect", connect)
    await expect_refused(tmp_path / "j.db", "synchronous")


# --------------------------------------------------------------- bad requests stay their own


@pytest.mark.parametrize("saga_id", ["\udc80", "x\udcff"])
async def test_an_id_that_cannot_be_stored_never_reaches_the_writer(
    tmp_path: Path, saga_id: str
) -> None:
    """A lone surrogate in a saga id: create raises ValueError naming the field; discard and
    get answer "unknown" (no such saga can exist); the journal keeps working and reopens."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        header = SagaHeader(saga_id, "d", 1.0)
        first = SagaEvent(saga_id, 0, K.STARTED, None, 1.0)
        with pytest.raises(ValueError, match="saga_id"):
            await journal.create(header, first)
        with pytest.raises(ValueError, match="definition"):
            await journal.create(
                SagaHeader("ok", "d\udcff", 1.0), SagaEvent("ok", 0, K.STARTED, None, 1.0)
            )
        assert await journal.discard(saga_id) is False
        assert await journal.get(saga_id) is None
        saga = await Driver(journal, "fine").start()
        await saga.steps(1)
    async with SqliteJournal(path) as again:
        assert [s.saga_id for s in await again.list_unfinished()] == ["fine"]


async def test_a_nan_time_is_refused_before_it_reaches_the_writer(tmp_path: Path) -> None:
    """A NaN ``at`` (stored as NULL, violating NOT NULL) is a SagaSequenceError for its
    caller; nothing else fails."""
    async with SqliteJournal(tmp_path / "j.db") as journal:
        header = SagaHeader("n", "d", 1.0)
        with pytest.raises(ValueError, match="finite"):
            await journal.create(header, SagaEvent("n", 0, K.STARTED, None, float("nan")))
        with pytest.raises(ValueError, match="finite"):
            await journal.create(
                SagaHeader("n", "d", float("nan")), SagaEvent("n", 0, K.STARTED, None, 1.0)
            )
        saga = await Driver(journal, "a").start()
        with pytest.raises(ValueError, match="finite"):
            await journal.append(saga.state.next_event(K.STEP_STARTED, 0, at=float("nan")))
        await saga.steps(2)
        await saga.finish()


async def test_a_request_the_writer_cannot_store_fails_alone_and_its_saga_stays_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails inside the writer's transaction (something no trio-side check
    caught) fails only its caller: the others in its batch commit, the journal stays open,
    the saga's state is rolled back so its caller can write the same event again, and a
    write of that saga queued behind the bad one fails too rather than leave a gap."""
    import actors._saga._journals._sqlite._journal as module

    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        good = await Driver(journal, "good").start()
        bad = await Driver(journal, "bad").start()
        bad_number = journal._index.open["bad"].number
        real_rows = module.event_rows
        poisoned = {"on": True}

        def rows(number: int, events: Any) -> list[Any]:
            found = real_rows(number, events)
            if number == bad_number and poisoned["on"]:  # only the first write of "bad"
                return [(*r[:4], None, *r[5:]) if r[1] == 1 else r for r in found]
            return found

        monkeypatch.setattr(module, "event_rows", rows)
        gate = Gate()
        install(journal, gate)
        results: dict[str, object] = {}
        bad_first = bad.event(K.STEP_STARTED, 0)
        bad_second = bad.event(K.STEP_COMPLETED, 0, b"r")

        async def write(name: str, event: SagaEvent) -> None:
            try:
                await journal.append(event)
            except JournalError as exc:
                results[name] = exc
            else:
                results[name] = "ok"

        async with trio.open_nursery() as nursery:
            filler = await Driver(journal, "filler").start()
            nursery.start_soon(filler.go, K.STEP_STARTED, 0)
            await gate.wait_entered()
            nursery.start_soon(write, "good", good.event(K.STEP_STARTED, 0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "bad", bad_first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(write, "bad-next", bad_second)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert results["good"] == "ok"
        assert isinstance(results["bad"], JournalError)
        assert "could not be stored" in str(results["bad"])
        assert isinstance(results["bad-next"], JournalError)
        poisoned["on"] = False
        again = Driver(journal, "bad")
        again.state = journal._index.open["bad"].state
        assert again.state.next_seq == 1  # rolled back to before the failed write
        await again.steps(1)
        await good.go(K.STEP_COMPLETED, 0, b"r")
    async with SqliteJournal(path) as reopened:
        loaded = {h.saga_id: saga_state(h, e) for h, e in await reopened.load_unfinished()}
    assert loaded["bad"] == again.state
    assert loaded["good"] == good.state


@settings(max_examples=25, deadline=None)
@given(
    sagas=st.integers(min_value=1, max_value=4),
    steps=st.integers(min_value=1, max_value=5),
    poison=st.sets(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=11)),
        max_size=5,
    ),
)
def test_refused_writes_leave_every_saga_as_its_writer_believes(
    tmp_path_factory: pytest.TempPathFactory,
    sagas: int,
    steps: int,
    poison: set[tuple[int, int]],
) -> None:
    """Concurrent sagas write their steps while random writes are refused by SQLite (once
    each): each refused caller gets a JournalError and finds its saga's state rolled back,
    writes the same transition again, and in the end the file holds exactly what every
    writer believes, and nothing else failed."""
    import actors._saga._journals._sqlite._journal as module

    path = tmp_path_factory.mktemp("refused") / "j.db"
    real_rows = module.event_rows
    numbers: dict[int, int] = {}  # saga_no -> saga index
    pending = set(poison)
    refused: list[tuple[int, int]] = []

    def rows(number: int, events: Any) -> list[Any]:
        found = real_rows(number, events)
        index = numbers.get(number)
        for k, row in enumerate(found):
            if (index, row[1]) in pending:
                pending.discard((index, row[1]))
                refused.append((index, row[1]))
                found[k] = (*row[:4], None, *row[5:])  # NULL time: NOT NULL refuses it
        return found

    drivers: list[Driver] = []
    errors: list[str] = []

    async def main() -> None:
        async with SqliteJournal(path, synchronous="NORMAL") as journal:
            for i in range(sagas):
                drivers.append(await Driver(journal, f"s{i}").start())
                numbers[journal._index.open[f"s{i}"].number] = i

            async def write(driver: Driver, kind: SagaEventKind, *args: Any) -> None:
                for _ in range(3):  # a write is refused at most once: the retry must land
                    try:
                        await driver.go(kind, *args)
                        return
                    except JournalError as exc:
                        errors.append(str(exc))
                        driver.state = journal._index.open[driver.header.saga_id].state
                raise AssertionError(f"{driver.header.saga_id}: refused again: {errors[-1]}")

            async def run(driver: Driver) -> None:
                for i in range(steps):
                    await write(driver, K.STEP_STARTED, i)
                    await write(driver, K.STEP_COMPLETED, i, b"r%d" % i)
                await write(driver, K.COMPLETED)

            original = module.event_rows
            module.event_rows = rows
            try:
                async with trio.open_nursery() as nursery:
                    for driver in drivers:
                        nursery.start_soon(run, driver)
            finally:
                module.event_rows = original
        async with SqliteJournal(path) as again:
            for driver in drivers:
                found = await again.get(driver.header.saga_id)
                assert found is not None
                assert saga_state(*found) == driver.state
                assert driver.state.phase.value == "completed"

    trio.run(main)
    assert sorted(refused) == sorted(p for p in poison if p[0] < sagas and p[1] <= 2 * steps + 1)
    assert len(errors) == len(refused)
    assert all("could not be stored" in error for error in errors)


async def test_a_failing_auto_prune_does_not_fail_the_batch_that_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch committed, then the retention transaction after it failed: the batch's
    callers succeed, the failure is logged, the journal keeps working and prunes later."""
    import actors._saga._journals._sqlite._writer as module

    real_prune = module._prune
    failures = {"left": 1}

    def prune(conn: sqlite3.Connection, cutoff: float, keep: int) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("prune went wrong")
        return real_prune(conn, cutoff, keep)

    monkeypatch.setattr(module, "_prune", prune)
    async with SqliteJournal(tmp_path / "j.db", retain_last=1, retain_for=1e12) as journal:
        first = await Driver(journal, "a").start()
        await first.finish()  # commits, then the auto-prune fails
        second = await Driver(journal, "b").start()
        await second.finish()  # the next auto-prune works: "a" goes
        assert await journal.get("a") is None
        assert await journal.get("b") is not None
        assert journal.statistics().sagas_pruned == 1
    assert any("prune went wrong" in r.getMessage() for r in caplog.records)


async def test_a_saga_finished_and_discarded_in_one_batch_is_discarded(tmp_path: Path) -> None:
    """Writes run in the order they were queued: the append that finishes a saga and the
    discard queued after it in the same batch remove it."""
    async with SqliteJournal(tmp_path / "j.db") as journal:
        saga = await Driver(journal, "x").start()
        filler = await Driver(journal, "filler").start()
        gate = Gate()
        install(journal, gate)
        found: list[bool] = []

        async def discard() -> None:
            found.append(await journal.discard("x"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(filler.go, K.STEP_STARTED, 0)
            await gate.wait_entered()
            nursery.start_soon(saga.finish)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(discard)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert found == [True]
        assert await journal.get("x") is None


# ------------------------------------------------------------------------ the file on disk


async def test_journal_files_are_private_to_their_owner(tmp_path: Path) -> None:
    """A new journal and its WAL are created 0600 whatever the umask: the file holds saga
    inputs and errors."""
    path = tmp_path / "j.db"
    old = os.umask(0o022)
    try:
        async with SqliteJournal(path) as journal:
            saga = await Driver(journal, "a").start()
            await saga.steps(2)
            modes = {
                name: os.stat(tmp_path / name).st_mode & 0o777
                for name in os.listdir(tmp_path)
                if name.startswith("j.db")
            }
    finally:
        os.umask(old)
    assert modes["j.db"] == 0o600
    assert modes["j.db-wal"] == 0o600
    assert set(modes.values()) == {0o600}


async def test_a_symlink_at_the_journal_path_is_refused(tmp_path: Path) -> None:
    """A dangling symlink (or one to an existing file) at the path is refused: the journal
    never writes through a link someone planted."""
    target = tmp_path / "elsewhere.db"
    link = tmp_path / "j.db"
    link.symlink_to(target)
    await expect_refused(link, "symbolic link")
    assert not target.exists()
    async with SqliteJournal(target):
        pass
    await expect_refused(link, "symbolic link")


async def test_a_planted_wal_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink planted at the journal's -wal path is refused too."""
    (tmp_path / "j.db-wal").symlink_to(tmp_path / "stolen")
    await expect_refused(tmp_path / "j.db", "symbolic link")
    assert not (tmp_path / "stolen").exists()


async def test_a_world_writable_journal_file_is_refused(tmp_path: Path) -> None:
    """A journal file anyone may write (planted, or left so) is refused with a clear error."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        await Driver(journal, "a").start()
    path.chmod(0o666)
    error = await expect_refused(path, "writable by other users")
    assert error.category is ErrorCategory.CONFIGURATION


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
async def test_a_journal_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A file owned by someone else (planted in a shared directory) is refused."""
    path = tmp_path / "j.db"
    async with SqliteJournal(path) as journal:
        await Driver(journal, "a").start()
    os.chown(path, 65534, 65534)
    await expect_refused(path, "owned by")
