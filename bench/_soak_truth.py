"""Ground truth and accounting of the reliability suite (``bench/soak.py``).

Theory of operation
-------------------
The fake services and step targets keep the ground truth the soak's invariants are checked
against: every attempt a provider made (:class:`Service`), every effect per idempotency key
(:class:`Backend`, :class:`Inventory` through :class:`Sagas`), every tell handled
(:class:`Ledger`).  :class:`AskBook` accounts for every ask (ended once, on time, with a typed
outcome).  The auditor verifies each saga against the ground truth shortly after it finishes
and then forgets it, so the ground truth stays bounded however long the soak runs.
"""

from __future__ import annotations

import gc
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import attrs
import trio

from actors import Actor, AuraError, Failure, chaos
from actors._saga._definition import SagaStepMessage
from actors._saga._journals._records import Journal
from actors._saga._journals._state import saga_state
from actors._saga._messages import decode_error
from supervisors import Supervisor

#: Seconds an ask may end after its deadline (see ``bench/soak.py``).
TOLERANCE: Final = 0.25
#: The text every injected failure carries.
INJECTED: Final = "injected by chaos"


# ------------------------------------------------------------------------------ ground truth


class Sagas:
    """Ground truth of the sagas in progress: which are open, and the effects of their keys."""

    def __init__(self) -> None:
        self.open: dict[str, bool] = {}  # saga id -> poisoned
        self.inventory: dict[str, int] = {}  # inventory effects by key
        self.payments: dict[str, int] = {}  # payments effects by key
        self.late = 0  # effects for sagas already audited
        self.redeliveries = 0  # steps delivered again with a key already applied

    @staticmethod
    def saga_of(key: str) -> str:
        return key.partition(":")[0]

    def keys(self, saga_id: str) -> list[str]:
        names = ("reserve", "charge", "ship")
        return [f"{saga_id}:{n}{suffix}" for n in names for suffix in ("", ":compensate")]

    def effects(self, saga_id: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for key in self.keys(saga_id):
            count = self.inventory.get(key, 0) + self.payments.get(key, 0)
            if count:
                found[key.partition(":")[2]] = count
        return found

    def close(self, saga_id: str) -> None:
        self.open.pop(saga_id, None)
        for key in self.keys(saga_id):
            self.inventory.pop(key, None)
            self.payments.pop(key, None)


class Backend:
    """A fake external service: counts requests, and effects per idempotency key."""

    def __init__(self, name: str, seed: int, sagas: Sagas | None = None) -> None:
        self.name = name
        self.rng = random.Random(f"{seed}:{name}:backend")
        self.requests = 0
        self.effects: Counter[str] = Counter()
        self.doubles: list[str] = []
        self.sagas = sagas

    async def __call__(self, payload: tuple[str, str | None, int]) -> Any:
        self.requests += 1
        delay = self.rng.choice((0.0, 0.0, 0.001, 0.003))
        if delay:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        op, key, value = payload
        if key is not None:
            if self.sagas is None:
                table: dict[str, int] = self.effects
            else:
                if Sagas.saga_of(key) not in self.sagas.open:
                    self.sagas.late += 1
                    return (op, key, value)
                table = self.sagas.payments
            table[key] = table.get(key, 0) + 1
            if table[key] > 1 and len(self.doubles) < 20:
                self.doubles.append(key)
        return (op, key, value)


class Service:
    """What a provider calls: counts every attempt (the ground truth the monitor must match),
    then the backend behind its chaos injectors."""

    def __init__(self, backend: Backend, injectors: list[chaos.Injector]) -> None:
        self.backend = backend
        self.attempts = 0
        self.injectors = injectors
        self._fn = chaos.wrap(backend, *injectors)

    async def call(self, payload: Any) -> Any:
        self.attempts += 1
        return await self._fn(payload)


class Inventory(Actor[Any, Any]):
    """A saga step target that honours idempotency keys (reserve / release)."""

    def __init__(self, sagas: Sagas) -> None:
        self.sagas = sagas

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, SagaStepMessage):
            return Failure(TypeError(f"inventory accepts saga steps, not {message!r}"))
        sagas, key = self.sagas, message.key
        if Sagas.saga_of(key) not in sagas.open:
            sagas.late += 1
        elif key in sagas.inventory:
            sagas.redeliveries += 1
        else:
            sagas.inventory[key] = 1
        return ("released" if message.compensate else "reserved", key)


@attrs.define
class LedgerTruth:
    sent: int = 0
    handled: int = 0
    refused: int = 0  # tells refused while an operator had the ledger terminated
    discarded: int = 0  # tells queued when an operator terminated it (its slot's count)


class Ledger(Actor[Any, Any]):
    """Receives tells; counts what it handled."""

    def __init__(self, truth: LedgerTruth) -> None:
        self.truth = truth

    async def handle(self, message: Any) -> Any:
        self.truth.handled += 1
        return None


# ---------------------------------------------------------------------------------- accounting


class AskBook:
    """Every ask: started, ended once, on time; outcomes by kind."""

    def __init__(self, tolerance: float = TOLERANCE) -> None:
        #: Seconds an ask may end after its deadline.
        self.tolerance = tolerance
        self.started = 0
        self.ended = 0
        self.twice = 0
        self.pending: set[int] = set()
        self.outcomes: Counter[str] = Counter()
        self.late = 0
        self.max_late = 0.0
        self.untyped: Counter[str] = Counter()
        self.wrong_replies = 0

    def begin(self) -> int:
        self.started += 1
        self.pending.add(self.started)
        return self.started

    def end(self, ask: int, deadline: float, outcome: str) -> None:
        now = trio.current_time()
        if ask in self.pending:
            self.pending.discard(ask)
        else:
            self.twice += 1
        self.ended += 1
        self.outcomes[outcome] += 1
        over = now - deadline
        if over > self.max_late:
            self.max_late = over
        if over > self.tolerance:
            self.late += 1

    @contextmanager
    def ask(self, timeout: float) -> Iterator[list[str]]:
        """Account one ask: the body sets ``outcome[0]``; exceptions are classified here."""
        ask = self.begin()
        deadline = trio.current_time() + timeout
        outcome = ["ok"]
        try:
            yield outcome
        except AuraError as exc:
            outcome[0] = type(exc).__name__
        except Exception as exc:
            outcome[0] = f"untyped {type(exc).__name__}"
            self.untyped[type(exc).__name__] += 1
        self.end(ask, deadline, outcome[0])


@attrs.define
class Soak:
    """Everything one run shares."""

    seed: int
    seconds: float
    rng: random.Random
    sagas: Sagas
    book: AskBook = attrs.field(factory=AskBook)
    ledger: LedgerTruth = attrs.field(factory=LedgerTruth)
    services: dict[str, Service] = attrs.field(factory=dict)
    injectors: list[chaos.Injector] = attrs.field(factory=list)
    start_injectors: list[chaos.Injector] = attrs.field(factory=list)
    ledger_crash: chaos.CrashInjector | None = None
    events: Counter[str] = attrs.field(factory=Counter)
    escalations: int = 0
    root: Supervisor | None = None
    stopping: bool = False
    next_key: dict[str, int] = attrs.field(factory=dict)
    next_saga: int = 0
    audit: deque[tuple[float, str]] = attrs.field(factory=deque)
    saga_outcomes: Counter[str] = attrs.field(factory=Counter)
    operator: list[str] = attrs.field(factory=list)
    violations: list[str] = attrs.field(factory=list)
    violation_count: int = 0
    rss_warm: int = 0
    rss_end: int = 0
    #: In a fleet: what makes this instance's saga ids unique, and who is told each saga's
    #: outcome instead of the auditor (``on_saga(saga_id, outcome)``; see ``bench/_soak_fleet``).
    saga_prefix: str = ""
    on_saga: Callable[[str, str], None] | None = None

    def injector_rng(self, *parts: object) -> random.Random:
        return random.Random(":".join(str(p) for p in (self.seed, *parts)))

    def violate(self, what: str) -> None:
        """Record a saga violation (the first 100 are kept for the report)."""
        self.violation_count += 1
        if len(self.violations) < 100:
            self.violations.append(what)

    def add(self, injector: chaos.Injector, *, at_start: bool = False) -> Any:
        self.injectors.append(injector)
        if at_start:
            self.start_injectors.append(injector)
        return injector


# ----------------------------------------------------------------------------------- auditing


async def auditor(soak: Soak, journal: Journal) -> None:
    """Verify each saga once its caller is done and it has finished (see the module docstring)."""
    while True:
        now = trio.current_time()
        queue = soak.audit
        for _ in range(len(queue)):
            due, saga_id = queue[0]
            if due > now:
                break
            queue.popleft()
            if not await audit_one(soak, journal, saga_id):
                queue.append((now + 0.2, saga_id))
        await trio.sleep(0.1)


async def audit_one(soak: Soak, journal: Journal, saga_id: str) -> bool:
    """Check one saga against the ground truth; ``False`` if it has not finished yet."""
    sagas = soak.sagas
    found = await journal.get(saga_id)
    effects = sagas.effects(saga_id)
    if found is None:
        soak.saga_outcomes["never started"] += 1
        if effects:
            soak.violate(f"saga {saga_id} is not in the journal but has {effects}")
        sagas.close(saga_id)
        return True
    state = saga_state(*found)
    if not state.finished:
        return False
    phase = state.phase.value
    soak.saga_outcomes[phase] += 1
    if phase == "completed":
        expected = {"reserve": 1, "charge": 1, "ship": 1}
        if effects != expected:
            soak.violate(f"completed saga {saga_id} has effects {effects}")
    elif phase == "compensation_failed":
        reason = decode_error(state.reason).describe()
        soak.operator.append(f"{saga_id}: {reason}")
        if INJECTED not in reason:
            soak.violate(f"saga {saga_id} failed to compensate: {reason}")
        await journal.discard(saga_id)  # what the operator does once it is handled
    else:
        for step in ("reserve", "charge"):
            if effects.get(step) and not effects.get(f"{step}:compensate"):
                soak.violate(f"{phase} saga {saga_id}: {step} was not undone")
    sagas.close(saga_id)
    return True


# ---------------------------------------------------------------------------------- measuring


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm (peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sample_rss() -> int:
    gc.collect()
    return rss_bytes()


def all_tasks() -> set[trio.lowlevel.Task]:
    found: set[trio.lowlevel.Task] = set()
    root = trio.lowlevel.current_root_task()
    assert root is not None
    todo = [root]
    while todo:
        task = todo.pop()
        found.add(task)
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return found
