"""Three coordinator processes share one PostgreSQL journal; one of them is killed with
``kill -9`` twenty times mid-saga, and the server restarts mid-run.

Each process (``tests/fleet_saga_child.py``) runs a saga coordinator whose step targets dedupe
by key through the shared Redis store and apply each effect atomically with the key's record,
counting it in Redis by what it is (saga, step, do or undo).  The test picks a victim each
round, waits until it drives a saga with a step or a compensation in flight (read from the
journal's tables), kills it, waits until the survivors have claimed every saga it owned, and
starts it again (re-starting a few of its saga ids, which may be running elsewhere).  Four of
the rounds first freeze the victim (SIGSTOP) until the survivors have taken its sagas over,
then let it run again: its late appends must be refused by the journal's fencing (its
coordinator stops those sagas, told ``OwnershipLost`` or, when the thawed writer was past
``write_timeout`` first, that the write is in doubt), before the kill.
Halfway, the PostgreSQL server itself restarts while all three run.

At the end every saga has completed or been compensated, each effect and each compensation
happened exactly once (``bench._fleet_effects.audit``), every saga's events fold into a valid
state matching its stored outcome, and no instance lost a saga.  Waits are on conditions with
generous bounds (a loaded 2-core machine), never timing assertions.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from actors._saga._journals._records import SagaEvent, SagaEventKind, SagaHeader
from actors._saga._journals._state import saga_state
from actors.testing import PostgresServer
from bench._children import Child as BaseChild
from bench._fleet_effects import audit, effects_key
from tests.fixtures_postgres import new_schema_name
from tests.saga_fleet import COMPENSATABLE, STEPS

ROOT = Path(__file__).parent.parent
KILLS = 20
FREEZES = frozenset({2, 7, 12, 17})  # rounds whose victim is frozen first, then killed
SERVER_RESTART = 10  # the round after which the server restarts
LEASE = 1.0
#: Generous bound on each wait (process starts and takeovers on a loaded machine).
WITHIN = 60.0


class Child(BaseChild):
    """One coordinator process and what it printed."""

    def __init__(self, label: str, argv: list[str]) -> None:
        super().__init__(label, argv, ROOT)
        self.instance = ""
        self.started_upto = -1
        self.stats: dict[str, Any] = {}
        self.drained = False
        self.instances: list[str] = []

    def start(self, first: int) -> None:  # type: ignore[override]
        self.stats = {}
        self.drained = False
        self.instance = ""
        super().start("--first", str(first))

    def take(self, line: str) -> None:
        word, _, rest = line.strip().partition(" ")
        if word == "READY":
            self.instance = rest.strip()
            self.instances.append(self.instance)
        elif word == "S":
            self.started_upto = max(self.started_upto, int(rest))
        elif word == "STATS":
            self.stats = json.loads(rest)
        elif word == "DRAINED":
            self.drained = True


def wait_for(
    children: list[Child],
    condition: Callable[[], bool],
    what: str,
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` (state of other processes and the database) until it holds."""
    deadline = time.monotonic() + WITHIN
    while True:
        for child in children:
            child.read()
        if condition():
            return
        if time.monotonic() > deadline:
            state = [(c.label, c.instance[:8], c.drained, c.stats) for c in children]
            extra = f"; {describe()}" if describe is not None else ""
            raise AssertionError(f"{what}: not within {WITHIN:g} s: {state}{extra}")
        time.sleep(0.02)


def query(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(statement, params).fetchall()
    except psycopg.OperationalError:
        return [(None,)]  # the server is restarting: the condition does not hold yet


@pytest.fixture
def server() -> Iterator[PostgresServer]:
    with PostgresServer() as running:
        yield running


@pytest.mark.slow
def test_a_coordinator_killed_twenty_times_loses_nothing_and_repeats_nothing(
    server: PostgresServer, redis_url: str, redis_prefix: str
) -> None:
    url = server.url
    schema = new_schema_name()
    rng = random.Random(17)
    children = [
        Child(
            label,
            [
                sys.executable,
                "-m",
                "tests.fleet_saga_child",
                "--url",
                url,
                "--schema",
                schema,
                "--redis",
                redis_url,
                "--prefix",
                redis_prefix,
                "--label",
                label,
                "--seed",
                "5",
                "--lease",
                str(LEASE),
            ],
        )
        for label in ("a", "b", "c")
    ]
    s = f'"{schema}"'

    def owned(instance: str, *, in_flight: bool = False) -> int:
        phases = "AND phase IN ('step_in_flight', 'compensation_in_flight')" if in_flight else ""
        ((count,),) = query(
            url,
            f"SELECT count(*) FROM {s}.sagas WHERE owner = %s AND outcome IS NULL {phases}",
            (instance,),
        )
        return count or 0

    try:
        for child in children:
            child.start(0)
        wait_for(children, lambda: all(c.instance for c in children), "every instance ready")
        for round_ in range(KILLS):
            kill_one(children, rng.choice(children), owned, freeze=round_ in FREEZES)
            if round_ == SERVER_RESTART:
                server.restart("fast")
        for child in children:
            child.send("drain")

        def unfinished() -> str:
            rows = query(
                url,
                f"SELECT saga_id, owner, epoch, phase FROM {s}.sagas WHERE outcome IS NULL",
            )
            return f"unfinished: {[(r[0], str(r[1])[:8], r[2], r[3]) for r in rows][:20]}"

        wait_for(
            children, lambda: all(c.drained for c in children), "every caller answered", unfinished
        )
        wait_for(
            children,
            lambda: query(url, f"SELECT count(*) FROM {s}.sagas WHERE outcome IS NULL") == [(0,)],
            "every saga finished",
        )
        for child in children:
            child.send("exit")
        for child in children:
            assert child.process is not None
            assert child.process.wait(timeout=WITHIN) == 0
            child.close()
        check(url, schema, redis_url, redis_prefix)
    finally:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.kill()


def kill_one(
    children: list[Child], victim: Child, owned: Callable[..., int], *, freeze: bool
) -> None:
    """Kill ``victim`` mid-saga (after freezing it until the survivors took its sagas over,
    and letting it run again, if ``freeze``), wait for the takeover, start it again."""
    dead = victim.instance
    lost_before = victim.stats.get("journal_ownership_lost", 0)
    while True:  # stop it while it owns a saga with a step or compensation in flight
        wait_for(children, lambda: owned(dead, in_flight=True) > 0, "the victim mid-saga")
        victim.signal(signal.SIGSTOP)
        if owned(dead) > 0:
            break
        victim.signal(signal.SIGCONT)  # it finished them just before: again
    if freeze:
        try:
            wait_for(children, lambda: owned(dead) == 0, "survivors take the frozen one's")
        finally:
            victim.signal(signal.SIGCONT)
        wait_for(
            children,
            lambda: victim.stats.get("journal_ownership_lost", 0) > lost_before,
            "the thawed owner's late append is refused",
        )
    victim.kill()
    wait_for(children, lambda: owned(dead) == 0, "survivors take the killed one's sagas")
    victim.read()
    victim.start(max(0, victim.started_upto - 3))  # some of its ids again
    wait_for(children, lambda: bool(victim.instance), "the victim restarted")


def check(url: str, schema: str, redis_url: str, prefix: str) -> None:
    """Every saga completed or compensated, each effect once, events consistent."""
    s = f'"{schema}"'
    sagas = query(
        url,
        f"SELECT saga_no, saga_id, definition, created_at, payload, metadata, outcome, epoch "
        f"FROM {s}.sagas",
    )
    events: dict[int, list[tuple[Any, ...]]] = {}
    for row in query(
        url, f"SELECT saga_no, seq, kind, step, at, data FROM {s}.events ORDER BY saga_no, seq"
    ):
        events.setdefault(row[0], []).append(row)
    assert len(sagas) >= 60, f"only {len(sagas)} sagas ran"
    outcomes: dict[str, str] = {}
    for number, saga_id, name, created_at, payload, metadata, outcome, _epoch in sagas:
        header = SagaHeader(
            saga_id, name, created_at, bytes(payload), msgspec.json.decode(metadata)
        )
        state = saga_state(
            header,
            [
                SagaEvent(saga_id, r[1], SagaEventKind(r[2]), r[3], r[4], bytes(r[5]))
                for r in events.get(number, [])
            ],
        )
        assert state.phase.value == outcome, (saga_id, state.phase, outcome)
        outcomes[saga_id] = outcome
    assert set(outcomes.values()) <= {"completed", "compensated"}, set(outcomes.values())
    assert "compensated" in outcomes.values()  # declined charges were undone
    effects = read_redis_hash(redis_url, effects_key(prefix))
    assert audit(outcomes.items(), effects, STEPS, COMPENSATABLE) == []
    taken = query(url, f"SELECT count(*) FROM {s}.sagas WHERE epoch > 0")
    assert taken[0][0] >= KILLS  # every kill left sagas for the survivors to take


def read_redis_hash(url: str, key: str) -> dict[str, int]:
    import redis as redis_client  # a sync client, for the test's own reading

    with redis_client.Redis.from_url(url) as connection:
        raw = connection.hgetall(key)
    return {k.decode(): int(v) for k, v in raw.items()}
