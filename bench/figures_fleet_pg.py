"""Fleet figures of the PostgreSQL saga journal: its throughput against plain psycopg writers on
the same server, and how long survivors take to resume a killed instance's sagas.

Theory of operation
-------------------
Every figure runs against a real PostgreSQL on loopback: ``$AURA_BENCH_POSTGRES_URL`` when it
is set, else a server the module starts (:class:`actors.testing.PostgresServer`, fsync on).
Each candidate writes into a fresh schema, created before its timing starts.

* ``pg_journal_steps_per_s_100``: 100 concurrent trio tasks each writing 10-step sagas through
  a :class:`~actors.PostgresJournal` as a saga coordinator does (``bench.figures_journal.
  journal_saga``: the saga with its first step's start, then each step's completion with the
  next step's start, one write each, awaited): steps per second.  While it runs, the
  statements and parameters its writer sends in each transaction are recorded.
* ``pg_journal_vs_floor`` (goal >= 10): those steps per second over the rate of **the floor**,
  a plain psycopg connection inserting one event row per transaction (autocommit), on the
  same server in the same round: what group commit buys over writing as the steps come.
* ``pg_journal_vs_ceiling`` (goal >= 0.8): **the ceiling**, a plain psycopg connection
  replaying the recorded transactions (the same statements with the same parameters, so the
  same batch sizes and rows, run as the journal runs them, in a fresh schema), over the
  journal's time for them:
  the journal's own cost (staging in trio, the hand-off to its writer thread and back, the
  validation of each write) beyond the database's.
* ``pg_rows_per_commit_100``: event rows per commit in those runs (group commit).
* ``takeover_vs_lease`` (goal <= 1.5): a victim process (this module run as a script) opens a
  journal with a lease of :data:`LEASE` seconds and a coordinator, starts :data:`ORPHANS`
  sagas whose step never answers, and waits; the bench process runs a survivor (a journal on
  the same schema, a coordinator whose step target notes when each saga's step arrives).  Once
  every saga of the victim is in flight, the victim is killed with ``kill -9``; the figure is
  the time from the kill until the survivor has re-sent the step of every one of them, over
  the lease.  Survivors can only claim after the lease expired (between two thirds of a lease
  and a whole one after the kill, the lease being renewed every third of it), and claim every
  quarter of a lease.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import trio

from bench._harness import Figure, default_logging, measure, now_ns, server_url

__all__ = ["GOALS", "collect"]

GOALS = {
    "pg_journal_vs_floor": (">=", 10.0),
    "pg_journal_vs_ceiling": (">=", 0.8),
    "takeover_vs_lease": ("<=", 1.5),
}

TASKS: Final = 100
STEPS: Final = 10
#: The victim's lease (seconds), and the sagas it leaves behind.
LEASE: Final = 2.0
ORPHANS: Final = 20
ROOT: Final = Path(__file__).parent.parent

Transaction = list[tuple[str, Any]]


def _schema() -> str:
    return f"bench_{secrets.token_hex(6)}"


def _connect(url: str) -> Any:
    import psycopg

    from actors._saga._journals._postgres._writer import conninfo

    return psycopg.connect(conninfo(url, "aura-actors bench"), autocommit=True)


def _create_schema(url: str, schema: str) -> None:
    from actors._saga._journals._postgres._schema import prepare

    with _connect(url) as conn:
        prepare(conn, schema, f"bench schema {schema}")


def _drop(url: str, schema: str) -> None:
    with _connect(url) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# ----------------------------------------------------------------------------- the journal


class _Recording:
    """A connection whose ``execute`` calls are noted (statement, parameters) first."""

    def __init__(self, conn: Any, log: Transaction) -> None:
        self._conn = conn
        self._log = log

    def execute(self, statement: str, params: Any = None, **options: Any) -> Any:
        self._log.append((statement, params))
        return self._conn.execute(statement, params, **options)


class JournalRun:
    """The journal candidate (see the module docstring); :meth:`ceiling` replays its last run
    and :meth:`floor` is the one-row-per-transaction yardstick."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.transactions: list[Transaction] = []
        self.warm: list[Transaction] = []  # before the timed part (replayed untimed)
        self.schema = ""
        self.elapsed = 0.0
        self.rows_per_commit = math.nan

    def __call__(self, steps: int) -> float:
        self.schema = _schema()
        try:
            return trio.run(self._run, max(1, steps // (STEPS * TASKS)))
        finally:
            _drop(self.url, self.schema)

    async def _run(self, sagas: int) -> float:
        from actors._saga._journals._postgres._journal import PostgresJournal
        from bench.figures_journal import journal_saga

        journal = PostgresJournal(self.url, schema=self.schema, auto_prune=False)
        await journal.open()
        try:
            self.transactions = []
            self._record(journal)
            await journal_saga(journal, "warm")  # the statements prepared
            self.warm, self.transactions = self.transactions, []
            t0 = now_ns()
            async with trio.open_nursery() as nursery:
                for task in range(TASKS):
                    nursery.start_soon(self._writer, journal, task, sagas)
            self.elapsed = now_ns() - t0
        finally:
            await journal.aclose()
        return self.elapsed / (sagas * TASKS * STEPS)

    @staticmethod
    async def _writer(journal: Any, task: int, sagas: int) -> None:
        from bench.figures_journal import journal_saga

        for k in range(sagas):
            await journal_saga(journal, f"j{task}-{k}")

    def _record(self, journal: Any) -> None:
        """Note every create and append statement its writer runs, transaction by
        transaction (a transaction ends just before its COMMIT)."""
        writer = journal._writer
        current: Transaction = []
        creates, appends = writer.creates, writer.appends

        def create(conn: Any, requests: Any, replay: bool) -> None:
            creates(_Recording(conn, current), requests, replay)

        def append(conn: Any, requests: Any, replay: bool) -> None:
            appends(_Recording(conn, current), requests, replay)

        def before_commit(conn: Any) -> None:
            self.transactions.append(list(current))
            current.clear()

        writer.creates, writer.appends, writer.before_commit = create, append, before_commit

    def ceiling(self, _: int) -> float:
        """Replay the last run's transactions in a fresh schema: total ns."""
        transactions = self.transactions
        rows = sum(
            _event_rows(statement, params) for tx in transactions for statement, params in tx
        )
        self.rows_per_commit = rows / max(1, len(transactions))
        schema = _schema()
        _create_schema(self.url, schema)
        old, new = f'"{self.schema}"', f'"{schema}"'
        try:
            with _connect(self.url) as conn:
                warm, prepared = (
                    [
                        [(statement.replace(old, new), params) for statement, params in tx]
                        for tx in run
                    ]
                    for run in (self.warm, transactions)
                )
                for tx in warm:  # the same saga numbers as the journal's
                    with conn.transaction():
                        for statement, params in tx:
                            conn.execute(statement, params, prepare=False).fetchall()
                t0 = now_ns()
                for tx in prepared:  # run as the journal runs them (not prepared: see there)
                    with conn.transaction():
                        for statement, params in tx:
                            conn.execute(statement, params, prepare=False).fetchall()
                return now_ns() - t0
        finally:
            _drop(self.url, schema)

    def floor(self, steps: int) -> float:
        """One event row per transaction (autocommit), ``steps // 20`` of them: ns per commit."""
        commits = max(50, steps // 20)
        schema = _schema()
        _create_schema(self.url, schema)
        statement = (
            f'INSERT INTO "{schema}".events (saga_no, seq, kind, step, at, data) '
            "VALUES (%s, %s, %s, %s, %s, %s)"
        )
        try:
            with _connect(self.url) as conn:
                conn.execute(statement, (1, -1, "step_completed", 0, time.time(), b"\x01"))
                t0 = now_ns()
                for seq in range(commits):
                    conn.execute(
                        statement, (1, seq, "step_completed", 0, time.time(), b"\x01"), prepare=True
                    )
                return (now_ns() - t0) / commits
        finally:
            _drop(self.url, schema)


def _event_rows(statement: str, params: Any) -> int:
    """Event rows a recorded create or append inserts (its last parameter: their data)."""
    return len(params[-1]) if "INSERT INTO" in statement and params else 0


# ----------------------------------------------------------------------------- takeover


class Takeover:
    """The takeover candidate (see the module docstring): returns the ns from the kill until
    every orphan's step arrived at the survivor."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, _: int) -> float:
        schema = _schema()
        _create_schema(self.url, schema)
        victim = subprocess.Popen(
            [sys.executable, "-m", "bench.figures_fleet_pg", "--victim", self.url, schema],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        try:
            assert victim.stdout is not None
            ready = victim.stdout.readline()
            if not ready.startswith("READY"):
                raise RuntimeError(f"the takeover victim did not start: {ready!r}")
            return trio.run(self._run, schema, victim)
        finally:
            if victim.poll() is None:
                victim.kill()
            victim.wait()
            if victim.stdout is not None:
                victim.stdout.close()
            _drop(self.url, schema)

    async def _run(self, schema: str, victim: subprocess.Popen[str]) -> float:
        from actors import Actor
        from actors._saga._coordinator import SagaCoordinator
        from actors._saga._definition import SagaStepMessage
        from actors._saga._journals._postgres._journal import PostgresJournal
        from supervisors import ChildSpec, open_supervisor

        arrived: dict[str, float] = {}
        all_arrived = trio.Event()

        class Survivor(Actor[Any, Any]):
            async def handle(self, message: Any) -> Any:
                if isinstance(message, SagaStepMessage):
                    arrived.setdefault(message.saga_id, time.monotonic())
                    if len(arrived) == ORPHANS:
                        all_arrived.set()
                return "done"

        journal = PostgresJournal(self.url, schema=schema, lease_duration=LEASE)
        await journal.open()
        try:
            tree = [
                ChildSpec("holder", Survivor),
                ChildSpec("sagas", lambda: SagaCoordinator(journal, [definition()])),
            ]
            async with open_supervisor(tree):
                killed = time.monotonic()
                os.kill(victim.pid, signal.SIGKILL)
                with trio.fail_after(30 * LEASE):
                    await all_arrived.wait()
                return (max(arrived.values()) - killed) * 1e9
        finally:
            await journal.aclose()


def definition() -> Any:
    """One step ("hold") sent to the actor ``holder``: the victim's never answers."""
    from actors._saga._definition import SagaDefinition, SagaStep

    return SagaDefinition(
        "takeover",
        [
            SagaStep(
                "hold", "holder", action=lambda ctx: ctx.input, timeout=600.0, delivery="envelope"
            )
        ],
    )


async def victim(url: str, schema: str) -> None:
    """The victim process: :data:`ORPHANS` sagas in flight, ``READY`` once they all are."""
    from actors import Actor
    from actors._saga._coordinator import SagaCoordinator
    from actors._saga._journals._postgres._journal import PostgresJournal
    from actors._saga._messages import StartSaga
    from supervisors import ChildSpec, open_supervisor

    class Hold(Actor[Any, Any]):
        async def handle(self, message: Any) -> Any:
            await trio.sleep_forever()

    journal = PostgresJournal(url, schema=schema, lease_duration=LEASE)
    await journal.open()
    tree = [
        ChildSpec("holder", Hold, mailbox_capacity=ORPHANS * 2),
        ChildSpec("sagas", lambda: SagaCoordinator(journal, [definition()])),
    ]
    async with open_supervisor(tree) as root:
        for n in range(ORPHANS):
            await root.ref("sagas").ask(StartSaga("takeover", n, saga_id=f"orphan-{n}", wait=False))
        while True:
            summaries = await journal.list_unfinished()
            if sum(s.phase.value == "step_in_flight" for s in summaries) == ORPHANS:
                break
            await trio.sleep(0.01)
        print("READY", flush=True)
        await trio.sleep_forever()


# ----------------------------------------------------------------------------- collect


def _postgres() -> contextlib.AbstractContextManager[str | None]:
    from actors.testing import PostgresServer

    def start() -> PostgresServer:
        server = PostgresServer()
        server.start()
        return server

    return server_url("AURA_BENCH_POSTGRES_URL", start, "fleet PostgreSQL figures")


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    nan = Figure(math.nan, rounds=0)
    with _postgres() as url, default_logging():
        if url is None:
            return dict.fromkeys(GOALS, nan)
        steps, rounds = (3_000, 5) if quick else (10_000, 11)
        run = JournalRun(url)

        def derive(ns: dict[str, float]) -> dict[str, float]:
            return {
                "pg_journal_steps_per_s_100": 1e9 / ns["journal"],
                "pg_journal_vs_floor": ns["floor"] / ns["journal"],
                "pg_journal_vs_ceiling": ns["ceiling"] / run.elapsed,
                "pg_rows_per_commit_100": run.rows_per_commit,
                "pg_commit_floor_us": ns["floor"] / 1000,
            }

        figures = measure(
            {"journal": run, "ceiling": run.ceiling, "floor": run.floor},
            derive,
            n=steps,
            rounds=rounds,
            rotate=False,
        )
        takeover = Takeover(url)

        def ratio(ns: dict[str, float]) -> dict[str, float]:
            return {"takeover_vs_lease": ns["takeover"] / 1e9 / LEASE}

        figures.update(
            measure({"takeover": takeover}, ratio, n=1, rounds=3 if quick else 7, warm_up=False)
        )
        return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.figures_fleet_pg")
    parser.add_argument("--victim", nargs=2, metavar=("URL", "SCHEMA"), required=True)
    arguments = parser.parse_args()
    trio.run(victim, *arguments.victim)
