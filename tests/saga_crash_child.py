"""The process the saga crash test kills: sagas over fake providers that keep an effect ledger.

Run by ``tests/test_saga_crash.py`` (``python -m tests.saga_crash_child ...``).  It opens the
saga journal (a :class:`~actors.SqliteJournal` at its default durability) and
a supervision tree with three provider actors and a saga coordinator, which resumes every
unfinished saga of the journal.  It prints ``READY``, starts sagas ``t{first}`` ..
``t{first + count - 1}`` (``StartSaga`` with their ids is idempotent: sagas already in the
journal are not started again), waits until no saga is unfinished and prints ``DONE``.  The
test kills it with SIGKILL at random moments before that.

The fake providers apply effects to their own SQLite ledger (``effects``: one row per applied
effect, keyed by the idempotency key, with the saga, step and kind it belongs to) in one
transaction per call, so an effect is either fully applied or not at all when the process
dies.  A key applied before answers its stored result again (a provider that honours
idempotency keys); an effect applied twice would show as two rows for one (saga, step, kind).
Faults are seeded per key: some steps are always rejected (a definite failure: the saga is
compensated) and some compensations fail once with a transient error (retried).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import trio

from actors._policies._backoff import BackoffSettings
from actors._policies._breaker import BreakerSettings
from actors._policies._bulkhead import BulkheadSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep, StepContext
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._messages import ListSagas, StartSaga
from supervisors import ChildSpec, open_supervisor

STEPS = 3
LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS effects (
    key TEXT PRIMARY KEY, saga TEXT NOT NULL, step INTEGER NOT NULL, kind TEXT NOT NULL,
    result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (key TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


class Ledger:
    """The fake providers' durable state: effects applied, and deliveries per key."""

    def __init__(self, path: str, seed: int) -> None:
        self.seed = seed
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")  # durable across a process kill
        self.conn.executescript(LEDGER_SCHEMA)

    def fault(self, key: str, kind: str, delivery: int) -> str | None:
        rng = random.Random(f"{self.seed}:{key}")
        if kind == "do" and rng.random() < 0.15:
            return "reject"  # on every delivery: a definite failure
        if kind == "undo" and delivery == 1 and rng.random() < 0.3:
            return "flaky"  # the first delivery fails with a transient error
        return None

    def apply(self, provider: str, payload: dict[str, Any]) -> dict[str, Any]:
        key, saga, step, kind = payload["key"], payload["saga"], payload["step"], payload["kind"]
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT INTO deliveries VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET n = n + 1",
                (key,),
            )
            (delivery,) = conn.execute("SELECT n FROM deliveries WHERE key = ?", (key,)).fetchone()
            row = conn.execute("SELECT result FROM effects WHERE key = ?", (key,)).fetchone()
            fault = None if row is not None else self.fault(key, kind, delivery)
            if row is None and fault is None and kind == "do":
                late = conn.execute(
                    "SELECT 1 FROM effects WHERE saga = ? AND step = ? AND kind = 'undo'",
                    (saga, step),
                ).fetchone()
                if late is not None:
                    fault = "after compensation"
            if row is None and fault is None:
                result = json.dumps({"by": provider, "key": key})
                conn.execute(
                    "INSERT INTO effects VALUES (?, ?, ?, ?, ?)", (key, saga, step, kind, result)
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if fault == "reject":
            raise ValueError(f"{provider} rejects {key}")
        if fault == "flaky":
            raise ConnectionError(f"{provider} lost the connection during {key}")
        if fault is not None:
            raise ValueError(f"{provider} refuses {key}: it arrived {fault}")
        return json.loads(row[0] if row is not None else result)  # type: ignore[no-any-return]

    def service(self, provider: str, rng: random.Random) -> Any:
        async def call(payload: dict[str, Any]) -> dict[str, Any]:
            await trio.sleep(rng.uniform(0.0, 0.02))  # requests take a while: kills land mid-step
            return self.apply(provider, payload)

        return call


def definition() -> SagaDefinition:
    def message(kind: str) -> Any:
        def build(ctx: StepContext) -> dict[str, Any]:
            return {"key": ctx.key, "saga": ctx.saga_id, "step": ctx.step, "kind": kind}

        return build

    quick = RetrySettings(
        max_attempts=50,
        retry_on=["timeout", "network", "dependency", "rate_limit", "unknown"],
        total_timeout=None,
        backoff=BackoffSettings(kind="constant", base_delay=0.02, jitter="none"),
    )
    return SagaDefinition(
        "trip",
        [
            SagaStep(
                f"step{i}",
                f"p{i}",
                action=message("do"),
                compensate=message("undo"),
                timeout=5.0,
                compensation_retry=quick,
            )
            for i in range(STEPS)
        ],
    )


def provider_settings() -> ProviderSettings:
    return ProviderSettings(
        retry=RetrySettings(
            max_attempts=2,
            attempt_timeout=2.0,
            backoff=BackoffSettings(kind="constant", base_delay=0.01, jitter="none"),
        ),
        breaker=BreakerSettings(failure_threshold=100_000, minimum_throughput=100_000),
        bulkhead=BulkheadSettings(max_concurrent=100, max_queued=1000),
    )


def provider(
    name: str, ledger: Ledger, rng: random.Random, settings: ProviderSettings
) -> Callable[[], ProviderActor]:
    service = ledger.service(name, random.Random(rng.random()))
    return lambda: ProviderActor(name, service, settings)


async def main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    ledger = Ledger(args.ledger, args.seed)
    saga = definition()
    settings = provider_settings()
    async with SqliteJournal(args.journal) as journal:
        tree: list[Any] = [
            ChildSpec(f"p{i}", provider(f"p{i}", ledger, rng, settings)) for i in range(STEPS)
        ]
        tree.append(ChildSpec("sagas", lambda: SagaCoordinator(journal, [saga])))
        async with open_supervisor(tree) as root:
            coordinator = root.ref("sagas")
            print("READY", flush=True)
            for n in range(args.first, args.first + args.count):
                await coordinator.ask(
                    StartSaga("trip", {"n": n}, saga_id=f"t{n}", wait=False), timeout=60
                )
            while True:
                listed = await coordinator.ask(ListSagas())
                if all(s.phase.value == "compensation_failed" for s in listed):
                    break
                await trio.sleep(0.02)
    print("DONE", flush=True)
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--journal", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    return trio.run(main, args)


if __name__ == "__main__":
    sys.exit(cli())
