"""What the fleet saga tests share: the saga definition, its step targets, and one instance
(a PostgreSQL journal, a supervision tree with a monitor, two targets and a coordinator).

The targets (:class:`bench._fleet_effects.FleetTarget`) dedupe by key through the shared Redis
idempotency store and apply each effect atomically with the key's record, so the effects
counted in Redis are the ground truth of "exactly once across the fleet".  :class:`Gated`
adds a test's gates: a step of a saga that waits for an event before it is applied.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from actors import MonitorActor
from actors._fleet._client import StoreClient
from actors._policies._backoff import BackoffSettings
from actors._policies._retry import RetrySettings
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep, SagaStepMessage
from actors._saga._journals._postgres._journal import PostgresJournal
from bench._fleet_effects import FleetTarget, declined
from supervisors import ChildSpec, Supervisor, open_supervisor

STEPS: Final = ("reserve", "charge", "ship")
COMPENSATABLE: Final = frozenset({"reserve", "charge"})


def definition(timeout: float = 30.0) -> SagaDefinition:
    """reserve (undone by release) -> charge (undone by refund; some are declined) -> ship."""
    retry = RetrySettings(
        max_attempts=8,
        total_timeout=60.0,
        backoff=BackoffSettings(base_delay=0.05, max_delay=0.5),
    )
    common: dict[str, Any] = {
        "timeout": timeout,
        "delivery": "envelope",
        "retry": retry,
        "compensation_retry": retry,
        "compensation_timeout": timeout,
    }
    return SagaDefinition(
        "order",
        [
            SagaStep(
                "reserve",
                "inventory",
                action=lambda ctx: {"order": ctx.input["order"]},
                compensate=lambda ctx: {"release": ctx.input["order"]},
                **common,
            ),
            SagaStep(
                "charge",
                "payments",
                action=lambda ctx: {"charge": ctx.input["order"]},
                compensate=lambda ctx: {"refund": ctx.input["order"]},
                **common,
            ),
            SagaStep("ship", "payments", action=lambda ctx: {"ship": ctx.input["order"]}, **common),
        ],
        compensation_deadline=120.0,
    )


class Gated(FleetTarget):
    """A :class:`FleetTarget` that records what it was sent and holds a step while its gate
    (``gates[(saga_id, step)]``) is closed: before claiming the key, or (``after_claim``)
    between claiming it and applying the effect."""

    def __init__(self, box: Box, name: str, **options: Any) -> None:
        super().__init__(box.client, box.prefix, name, **options)
        self.box = box
        self.name = name

    async def handle(self, message: Any) -> Any:
        if isinstance(message, SagaStepMessage):
            self.box.received.append((self.box.label, message.saga_id, message.step))
            gate = self.box.gates.get((message.saga_id, message.step))
            if gate is not None and not self.box.after_claim:
                await gate.wait()
        return await super().handle(message)

    async def before_apply(self, message: SagaStepMessage) -> None:
        gate = self.box.gates.get((message.saga_id, message.step))
        if gate is not None and self.box.after_claim:  # the claim may lapse meanwhile
            self.box.claimed.set()
            await gate.wait()
        await super().before_apply(message)


@attrs.define
class Box:
    """One instance's shared pieces: its label, the store client, gates and what arrived."""

    label: str
    client: StoreClient
    prefix: str
    seed: int = 0
    decline_rate: float = 0.0
    after_claim: bool = False
    gates: dict[tuple[str, str], trio.Event] = attrs.field(factory=dict)
    received: list[tuple[str, str, str]] = attrs.field(factory=list)
    claimed: trio.Event = attrs.field(factory=trio.Event)


@attrs.define
class Instance:
    label: str
    journal: PostgresJournal
    root: Supervisor
    box: Box

    @property
    def sagas(self) -> Any:
        return self.root.ref("sagas")

    def coordinator(self) -> SagaCoordinator:
        actor = self.root.ref("sagas")._cell.incarnation
        assert actor is not None
        return actor.actor  # type: ignore[return-value]


@asynccontextmanager
async def instance(
    url: str,
    schema: str,
    box: Box,
    *,
    lease: float = 1.0,
    write_timeout: float = 1.0,
    claim_lease: float = 1.0,
) -> AsyncIterator[Instance]:
    """One coordinator instance of the fleet, for the duration of the block."""
    journal = PostgresJournal(url, schema=schema, lease_duration=lease, write_timeout=write_timeout)
    await journal.open()

    def declines(message: SagaStepMessage) -> bool:
        return declined(message.saga_id, message.step, box.seed, box.decline_rate)

    try:
        tree = [
            ChildSpec("monitor", MonitorActor),
            ChildSpec("inventory", lambda: Gated(box, "inventory", lease=claim_lease)),
            ChildSpec(
                "payments", lambda: Gated(box, "payments", lease=claim_lease, declines=declines)
            ),
            ChildSpec("sagas", lambda: SagaCoordinator(journal, [definition()], monitor="monitor")),
        ]
        async with open_supervisor(tree) as root:
            yield Instance(box.label, journal, root, box)
    finally:
        await journal.aclose()


async def eventually(predicate: Any, what: str, within: float = 30.0) -> None:
    """Wait until ``predicate()`` (a condition other threads or processes change) holds."""
    with trio.move_on_after(within):
        while not await predicate():  # noqa: ASYNC110 (state of other threads and servers)
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: not within {within:g} s")
