"""The fleet soak: N instances of the soak's tree share one PostgreSQL journal and one Redis.

Run by ``python -m bench.soak --instances N --journal postgres [--kill-instances]``.

Theory of operation
-------------------
The parent starts a Redis and a PostgreSQL server (:mod:`actors.testing`) unless it is given
their URLs, then N instance processes (``bench/_soak_instance.py``): each runs the soak's tree
with every chaos injector on, over one shared journal (a fresh schema), its sagas' step targets
applying each effect once across the fleet through the shared store.  With
``--kill-instances`` it kills a random instance with ``kill -9`` every few seconds (first
counting the sagas it owned unfinished: the ones the survivors must take over) and starts it
again at once, as a new instance with fresh saga ids.  After ``--seconds`` it tells every
instance to drain: each stops its load, switches its injectors off, waits until no saga of the
fleet is running, checks its own invariants and prints them.

Invariants: each instance that ran to the end checks the single-process soak's eight for
itself (asks, deadlines (the tolerance scaled by N: the instances share the cores), keys, its
drain, monitor counts, tells, tasks, memory when it ran long
enough to sample it); a killed incarnation can check nothing, and its sagas are the fleet's to
finish.  Across the fleet, from the journal's tables and the shared store's effect counts:

* every instance started, and every one still running at the end exited cleanly;
* every saga completed or was compensated, or failed or was cancelled (a caller's timeout)
  with its effects undone (``compensation_failed`` only where a failure was injected on
  purpose, listed for an operator);
* each step's effect and each compensation happened exactly once across the fleet
  (:func:`bench._fleet_effects.audit`), and no effect belongs to a saga the journal does not
  know;
* nothing was lost: every saga whose start was answered is in the journal, and every saga in
  the journal was started by an instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import msgspec
import psycopg
import trio

from actors import FleetSettings
from actors._fleet._client import open_store_client
from actors._saga._journals._records import SagaEvent, SagaEventKind, SagaHeader
from actors._saga._journals._state import SagaState, saga_state
from actors._saga._messages import decode_error
from bench._children import Child
from bench._fleet_effects import audit, read_effects
from bench._soak_truth import INJECTED

__all__ = ["FleetResult", "Instance", "report", "run_fleet", "stored_sagas"]

ROOT: Final = Path(__file__).parent.parent
#: Seconds between kills: uniform in this range.
KILL_EVERY: Final = (2.0, 5.0)
#: Seconds an instance's lease lasts (survivors take its sagas over after it).
LEASE: Final = 2.0
#: Seconds the drain (and each instance's start) may take before the run fails.
WITHIN: Final = 180.0
STEPS: Final = ("reserve", "charge", "ship")
COMPENSATABLE: Final = frozenset({"reserve", "charge"})
#: How a saga may end (as in the single-process soak: a caller's timeout cancels some; the
#: effects audit checks that whatever they did was undone).
ENDED: Final = frozenset({"completed", "compensated", "failed", "cancelled"})
#: Outcomes of ``StartSaga`` that prove the saga was created.
CREATED: Final = frozenset({"ok", "SagaFailed", "CompensationFailed"})
LABELS: Final = "abcdefghijklmnopqrstuvwxyz"


class Instance(Child):
    """One incarnation of an instance and what it printed."""

    def __init__(self, label: str, argv: list[str], fleet: Fleet) -> None:
        log = Path(fleet.logs) / f"{label}.log" if fleet.logs else None
        super().__init__(label, [*argv, "--label", label], ROOT, log)
        self.fleet = fleet
        self.instance_id = ""
        self.result: dict[str, Any] | None = None
        self.killed = False

    def take(self, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == "S":
            self.fleet.started.add(rest)
        elif word == "A":
            saga_id, _, outcome = rest.partition(" ")
            self.fleet.answered[saga_id] = outcome
        elif word == "READY":
            self.instance_id = rest.strip()
        elif word == "RESULT":
            self.result = json.loads(rest)


@attrs.define
class Fleet:
    """What the parent learns from every incarnation."""

    started: set[str] = attrs.field(factory=set)
    answered: dict[str, str] = attrs.field(factory=dict)
    #: A directory for each incarnation's stderr (``<label>.log``), or "" to discard them.
    logs: str = ""


@attrs.frozen
class FleetCheck:
    name: str
    ok: bool
    detail: str


@attrs.frozen
class FleetResult:
    """What a fleet run measured and checked."""

    seconds: float
    seed: int
    instances: int
    kills: int
    orphaned: int
    taken_over: int
    incarnations: int
    results: dict[str, dict[str, Any]]
    sagas: dict[str, int]
    operator: list[str]
    checks: list[FleetCheck]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


@contextlib.contextmanager
def servers(redis_url: str | None, postgres_url: str | None) -> Iterator[tuple[str, str]]:
    """The URLs given, or those of servers started (and stopped) here."""
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            from actors.testing import RedisServer

            redis_url = stack.enter_context(RedisServer()).url
        if postgres_url is None:
            from actors.testing import PostgresServer

            postgres_url = stack.enter_context(PostgresServer()).url
        yield redis_url, postgres_url


def run_fleet(
    seconds: float,
    seed: int,
    instances: int,
    *,
    kill: bool,
    redis_url: str | None = None,
    postgres_url: str | None = None,
) -> FleetResult:
    """Run the fleet soak (see the module docstring) and check its invariants."""
    with servers(redis_url, postgres_url) as (redis, url):
        token = secrets.token_hex(4)
        schema, prefix = f"soak_{token}", f"soak-{token}"
        argv = [
            sys.executable,
            "-m",
            "bench._soak_instance",
            *("--url", url, "--schema", schema, "--redis", redis, "--prefix", prefix),
            *("--seed", str(seed), "--seconds", str(seconds), "--lease", str(LEASE)),
            *("--instances", str(instances)),
        ]
        fleet = Fleet(logs=os.environ.get("AURA_SOAK_LOGS", ""))
        rng = random.Random(f"{seed}:kills")
        running = [Instance(LABELS[i], argv, fleet) for i in range(instances)]
        everyone = list(running)
        kills = orphaned = 0
        try:
            for instance in running:
                instance.start()
            _wait(running, lambda: all(i.instance_id for i in running), "every instance ready")
            started = time.monotonic()
            next_kill = started + rng.uniform(*KILL_EVERY)
            while time.monotonic() < started + seconds:
                for instance in running:
                    instance.read()
                if kill and time.monotonic() >= next_kill:
                    ready = [i for i in running if i.instance_id]
                    if ready:
                        victim = rng.choice(ready)
                        orphaned += _owned(url, schema, victim.instance_id)
                        victim.kill()
                        victim.read()  # what it printed up to its death
                        victim.killed = True
                        kills += 1
                        fresh = Instance(f"{victim.label[0]}{kills}", argv, fleet)
                        fresh.start()
                        running[running.index(victim)] = fresh
                        everyone.append(fresh)
                    next_kill = time.monotonic() + rng.uniform(*KILL_EVERY)
                time.sleep(0.05)
            load_seconds = time.monotonic() - started
            _wait(running, lambda: all(i.instance_id for i in running), "every instance ready")
            for instance in running:
                instance.send("drain")
            _wait(
                running,
                lambda: all(i.result is not None or i.process.poll() is not None for i in running),  # type: ignore[union-attr]
                "every instance drained",
            )
            codes = {}
            for instance in running:
                assert instance.process is not None
                codes[instance.label] = instance.process.wait(timeout=WITHIN)
                instance.read()
                instance.close()
        finally:
            for instance in everyone:
                if instance.process is not None and instance.process.poll() is None:
                    instance.kill()
        return _verdict(
            seconds=load_seconds,
            seed=seed,
            url=url,
            schema=schema,
            redis=redis,
            prefix=prefix,
            fleet=fleet,
            running=running,
            everyone=everyone,
            codes=codes,
            kills=kills,
            orphaned=orphaned,
        )


def _wait(instances: list[Instance], condition: Any, what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while True:
        for instance in instances:
            instance.read()
        if condition():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"fleet soak: {what}: not within {WITHIN:g} s")
        time.sleep(0.05)


def _query(url: str, statement: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        return conn.execute(statement, params).fetchall()


def _owned(url: str, schema: str, instance_id: str) -> int:
    """Unfinished sagas ``instance_id`` owns (the survivors' to take over once it dies)."""
    rows = _query(
        url,
        f'SELECT count(*) FROM "{schema}".sagas WHERE owner = %s AND outcome IS NULL',
        (instance_id,),
    )
    return int(rows[0][0])


def stored_sagas(url: str, schema: str) -> list[tuple[str, SagaState, str | None, int]]:
    """Every saga of the journal's tables: ``(saga_id, state folded from its events, stored
    outcome, epoch)``."""
    s = f'"{schema}"'
    sagas = _query(
        url,
        f"SELECT saga_no, saga_id, definition, created_at, payload, metadata, outcome, epoch "
        f"FROM {s}.sagas",
    )
    events: dict[int, list[tuple[Any, ...]]] = {}
    for row in _query(
        url, f"SELECT saga_no, seq, kind, step, at, data FROM {s}.events ORDER BY saga_no, seq"
    ):
        events.setdefault(row[0], []).append(row)
    found = []
    for number, saga_id, name, created_at, payload, metadata, outcome, epoch in sagas:
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
        found.append((saga_id, state, outcome, epoch))
    return found


async def _effects(redis: str, prefix: str) -> dict[str, int]:
    settings = FleetSettings(redis_url=redis, key_prefix=prefix, command_timeout=10.0)
    async with open_store_client(settings) as client:
        return await read_effects(client, prefix)


def _verdict(
    *,
    seconds: float,
    seed: int,
    url: str,
    schema: str,
    redis: str,
    prefix: str,
    fleet: Fleet,
    running: list[Instance],
    everyone: list[Instance],
    codes: dict[str, int],
    kills: int,
    orphaned: int,
) -> FleetResult:
    checks: list[FleetCheck] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(FleetCheck(name, ok, detail))

    results = {i.label: i.result for i in running if i.result is not None}
    # Each instance's own invariants, one line per invariant across the instances.
    names = [c["name"] for c in next(iter(results.values()))["checks"]] if results else []
    for index, name in enumerate(names):
        verdicts = [(label, r["checks"][index]) for label, r in results.items()]
        check(
            f"{name} (each instance)",
            all(v["ok"] for _, v in verdicts),
            "".join(
                f"\n      {label}: {'' if v['ok'] else 'FAIL '}{v['detail']}"
                for label, v in verdicts
            ),
        )
    unready = [i.label for i in everyone if not i.instance_id]
    failed = {label: code for label, code in codes.items() if code != 0}
    check(
        "every instance started, and ran to the end unless killed",
        not unready and not failed and len(results) == len(running),
        f"{len(everyone)} incarnations of {len(running)} instances, {kills} killed with "
        f"kill -9; {len(results)} reported their invariants; never ready: {unready or 'none'}; "
        f"exit codes other than 0: {failed or 'none'}",
    )
    stored = stored_sagas(url, schema)
    outcomes = Counter(state.phase.value for _, state, _, _ in stored)
    operator: list[str] = []
    wrong: list[str] = []
    for saga_id, state, outcome, _ in stored:
        phase = state.phase.value
        if outcome is not None and outcome != phase:
            wrong.append(f"{saga_id}: stored outcome {outcome}, events say {phase}")
        elif phase == "compensation_failed":
            reason = decode_error(state.reason).describe()
            operator.append(f"{saga_id}: {reason}")
            if INJECTED not in reason:
                wrong.append(f"{saga_id} failed to compensate: {reason}")
        elif phase not in ENDED:
            wrong.append(f"{saga_id} ended {phase}")
    check(
        "every saga of the fleet completed or compensated",
        not wrong,
        f"{len(stored):,} sagas ({dict(outcomes.most_common())}); compensation_failed where "
        f"a failure was injected, listed for an operator: {len(operator)}"
        + "".join(f"\n      VIOLATION {w}" for w in wrong[:10]),
    )
    effects = trio.run(_effects, redis, prefix)
    known = {saga_id for saga_id, _, _, _ in stored}
    strays = sorted({k.rsplit(":", 2)[0] for k in effects} - known)
    problems = audit(
        [(saga_id, state.phase.value) for saga_id, state, _, _ in stored],
        effects,
        STEPS,
        COMPENSATABLE,
        left_to_operator=("compensation_failed",),
    )
    check(
        "each effect and compensation exactly once across the fleet",
        not problems and not strays,
        f"{sum(effects.values()):,} effects and compensations counted in the shared store; "
        f"violations: {len(problems)}; effects of sagas not in the journal: {len(strays)}"
        + "".join(f"\n      VIOLATION {p}" for p in [*problems, *strays][:10]),
    )
    created = {saga_id for saga_id, outcome in fleet.answered.items() if outcome in CREATED}
    lost = sorted(created - known)
    unknown = sorted(known - fleet.started)
    taken_over = sum(1 for _, _, _, epoch in stored if epoch > 0)
    check(
        "nothing lost",
        not lost and not unknown,
        f"{len(fleet.started):,} starts, {len(created):,} answered as created; created but "
        f"not in the journal: {lost[:10] or 'none'}; in the journal but never started: "
        f"{unknown[:10] or 'none'}; unfinished sagas an instance owned when it was killed: "
        f"{orphaned} (counted at each kill); sagas taken over by another instance: "
        f"{taken_over}",
    )
    return FleetResult(
        seconds=seconds,
        seed=seed,
        instances=len(running),
        kills=kills,
        orphaned=orphaned,
        taken_over=taken_over,
        incarnations=len(everyone),
        results=results,
        sagas=dict(outcomes),
        operator=operator,
        checks=checks,
    )


def report(result: FleetResult, out: Any = sys.stdout) -> None:
    """Print what the fleet survived and each invariant with its verdict."""
    print(
        f"soak: {result.seconds:.1f} s of load, seed {result.seed}, {result.instances} instances "
        f"sharing a postgres journal and a Redis store, {result.kills} killed with kill -9 and "
        f"restarted ({result.incarnations} incarnations), {result.orphaned} unfinished sagas "
        f"owned by an instance when it was killed",
        file=out,
    )
    for label, r in result.results.items():
        outcomes = r["outcomes"]
        print(
            f"instance {label}: {r['seconds']:.1f} s, {r['asks']:,} asks "
            f"({outcomes.get('ok', 0):,} ok; {r['asks_per_s']:,.0f} asks/s), "
            f"{r['faults']:,} injected faults, {r['crashes']:,} crashes while handling and "
            f"{r['start_crashes']:,} at start, {r['escalations']:,} escalations, "
            f"{r['tells']:,} tells",
            file=out,
        )
    if result.operator:
        print(
            f"sagas that need an operator (compensation_failed, {len(result.operator)}):",
            file=out,
        )
        for line in result.operator[:5]:
            print(f"  {line}", file=out)
        if len(result.operator) > 5:
            print(f"  ... and {len(result.operator) - 5} more", file=out)
    for check in result.checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}", file=out)
    failed = sum(not check.ok for check in result.checks)
    sagas = sum(result.sagas.values())
    print(
        f"soak summary: {len(result.checks)} invariants checked, {failed} violated, "
        f"{sagas:,} sagas, {result.kills} kills, {result.taken_over} sagas taken over",
        file=out,
    )


def env_url(name: str) -> str | None:
    return os.environ.get(name) or None
