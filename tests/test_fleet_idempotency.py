"""The shared idempotency store: stable fingerprints, stored outcomes, the record store's
contract on both backends, and joiners, takeovers and fencing between instances."""

from __future__ import annotations

import dataclasses
import datetime
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import ErrorCategory, IdempotencyConflict, ProviderError, RateLimited
from actors._fleet._idempotency_codec import OutcomeCodec, stable_fingerprint
from actors._fleet._idempotency_shared import SharedClaim, SharedIdempotency
from actors._policies._idempotency import Completed
from tests.fixtures_redis import StoreEnv

# -------------------------------------------------------------------------- fingerprints


class Charge(msgspec.Struct, frozen=True):
    amount: int
    currency: str
    note: str = ""


class Payment(msgspec.Struct, frozen=True):  # the same class after a rename
    amount: int
    currency: str
    note: str = ""


class ChargeV2(msgspec.Struct, frozen=True):  # a later deploy added a field with a default
    amount: int
    currency: str
    note: str = ""
    channel: str = "web"


class TaggedCharge(msgspec.Struct, frozen=True, tag=True):
    amount: int
    currency: str


class TaggedPayment(msgspec.Struct, frozen=True, tag=True):
    amount: int
    currency: str


@dataclasses.dataclass
class DataCharge:
    amount: int
    currency: str


def test_renaming_a_class_keeps_the_fingerprint() -> None:
    """Fingerprints hash content, not class names (tags included)."""
    assert stable_fingerprint(Charge(5, "EUR")) == stable_fingerprint(Payment(5, "EUR"))
    assert stable_fingerprint(TaggedCharge(5, "EUR")) == stable_fingerprint(TaggedPayment(5, "EUR"))
    assert stable_fingerprint(DataCharge(5, "EUR")) == stable_fingerprint(Charge(5, "EUR"))


def test_adding_a_defaulted_field_keeps_the_fingerprint() -> None:
    """A field added later with a default leaves old payloads' fingerprints alone."""
    assert stable_fingerprint(Charge(5, "EUR")) == stable_fingerprint(ChargeV2(5, "EUR"))
    assert stable_fingerprint(Charge(5, "EUR")) != stable_fingerprint(ChargeV2(5, "EUR", "", "pos"))


def test_content_changes_change_the_fingerprint() -> None:
    """A different value, or a renamed field, is a different request."""
    assert stable_fingerprint(Charge(5, "EUR")) != stable_fingerprint(Charge(6, "EUR"))
    assert stable_fingerprint({"amount": 5}) != stable_fingerprint({"amt": 5})
    assert stable_fingerprint([1, 2]) != stable_fingerprint([2, 1])


def test_fingerprints_are_fixed_across_releases() -> None:
    """The algorithm is part of the stored data: a known payload keeps a known fingerprint."""
    assert stable_fingerprint(Charge(5, "EUR", "x")) == stable_fingerprint(
        {"currency": "EUR", "note": "x", "amount": 5}
    )
    assert stable_fingerprint({"a": 1, "b": [1, "x", None]}) == "497f5db39048c7deb1a0cd784cb2d773"


@given(
    st.dictionaries(
        st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=6
    )
)
def test_dict_order_does_not_matter(data: dict[str, object]) -> None:
    """Equal dicts have equal fingerprints whatever their insertion order."""
    reordered = dict(reversed(list(data.items())))
    assert stable_fingerprint(data) == stable_fingerprint(reordered)


def test_an_unencodable_request_is_a_type_error() -> None:
    """A value msgspec cannot encode is refused with the type named."""
    with pytest.raises(TypeError, match="object"):
        stable_fingerprint(object())


# ------------------------------------------------------------------------------ outcomes


def test_outcomes_round_trip_to_their_type() -> None:
    """A Struct outcome decodes to the Struct with value_type; to builtins without."""
    typed = OutcomeCodec(Charge)
    assert typed.decode(typed.encode_value(Charge(5, "EUR"))) == (Charge(5, "EUR"), False)
    plain = OutcomeCodec()
    value = {"when": datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC), "id": uuid.UUID(int=7)}
    decoded, failed = plain.decode(plain.encode_value(value))
    assert not failed
    # msgpack keeps datetimes (a timestamp extension); a UUID comes back as its string.
    assert decoded == {
        "when": datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC),
        "id": str(uuid.UUID(int=7)),
    }


def test_a_failed_outcome_replays_as_a_provider_error() -> None:
    """The category, message, Retry-After and status survive; the error is a ProviderError."""
    codec = OutcomeCodec()
    data = codec.encode_error(RateLimited(service="pay", retry_after=2.5))
    error, failed = codec.decode(data, service="pay")
    assert failed
    assert isinstance(error, ProviderError)
    assert error.category is ErrorCategory.RATE_LIMIT
    assert error.retry_after == 2.5
    assert "rate limited" in error.message
    assert error.service == "pay"
    other, _ = codec.decode(codec.encode_error(KeyError("k")))
    assert isinstance(other, ProviderError)
    assert other.category is ErrorCategory.UNKNOWN


def test_an_unencodable_outcome_is_a_type_error() -> None:
    """An outcome msgspec cannot encode is refused before anything is stored."""
    with pytest.raises(TypeError, match="cannot store an outcome"):
        OutcomeCodec().encode_value(object())


# ----------------------------------------------------------------- record store contract

FP = stable_fingerprint({"n": 1})
OTHER = stable_fingerprint({"n": 2})


async def test_a_claim_is_exclusive_and_renewable(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """The first claim owns the key; the owner's claim renews; another token sees it running;
    another fingerprint is a conflict."""
    store = store_env.idempotency_store()
    assert (await store.claim("k", FP, "a", 5.0)).outcome == "claimed"
    assert (await store.claim("k", FP, "a", 5.0)).outcome == "claimed"
    running = await store.claim("k", FP, "b", 5.0)
    assert running.outcome == "running"
    assert 0 < running.lease_ms <= 5000
    assert (await store.claim("k", OTHER, "b", 5.0)).outcome == "conflict"


async def test_only_the_owner_finishes_and_the_outcome_is_served(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Fencing: a finish with another token is refused; the owner's is stored and served."""
    store = store_env.idempotency_store()
    await store.claim("k", FP, "a", 5.0)
    assert not await store.finish("k", "b", b"nope", False, 60.0, 100)
    assert await store.finish("k", "a", b"yes", False, 60.0, 100)
    assert not await store.finish("k", "a", b"again", False, 60.0, 100)
    done = await store.claim("k", FP, "c", 5.0)
    assert (done.outcome, done.data) == ("done", b"yes")
    assert (await store.claim("k", OTHER, "c", 5.0)).outcome == "conflict"
    await store.claim("f", FP, "a", 5.0)
    await store.finish("f", "a", b"err", True, 60.0, 100)
    failed = await store.claim("f", FP, "c", 5.0)
    assert (failed.outcome, failed.data) == ("failed", b"err")


async def test_a_lapsed_lease_is_taken_over_and_the_old_owner_fenced(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A claim not renewed for its lease is gone: another token claims it, and the first
    owner can neither finish nor release it."""
    store = store_env.idempotency_store()
    await store.claim("k", FP, "a", 0.2)
    with trio.fail_after(10):
        while (await store.claim("k", FP, "b", 5.0)).outcome != "claimed":  # noqa: ASYNC110
            await trio.sleep(0.02)
    assert not await store.finish("k", "a", b"late", False, 60.0, 100)
    assert not await store.release("k", "a")
    assert await store.renew(["k"], ["a"], 5.0) == [False]
    assert await store.finish("k", "b", b"ok", False, 60.0, 100)


async def test_renewal_keeps_a_claim_past_its_lease(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """An owner renewing every third of the lease keeps the key for many leases."""
    store = store_env.idempotency_store()
    await store.claim("k", FP, "a", 0.3)
    await store.claim("j", FP, "x", 0.3)
    for _ in range(8):
        await trio.sleep(0.1)
        assert await store.renew(["k", "j"], ["a", "wrong"], 0.3) == [True, False]
    assert (await store.claim("k", FP, "b", 0.3)).outcome == "running"


async def test_release_frees_the_key_at_once(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A released claim (caller gave up, or a transient failure) can be claimed again."""
    store = store_env.idempotency_store()
    await store.claim("k", FP, "a", 60.0)
    assert not await store.release("k", "b")
    assert await store.release("k", "a")
    assert (await store.claim("k", OTHER, "b", 60.0)).outcome == "claimed"


async def test_finished_records_are_capped_and_in_flight_ones_kept(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Past max_records the oldest finished records go; a claim in flight never does."""
    store = store_env.idempotency_store()
    await store.claim("running", FP, "r", 60.0)
    for i in range(5):
        await store.claim(f"k{i}", FP, "a", 60.0)
        await store.finish(f"k{i}", "a", f"v{i}".encode(), False, 60.0, 3)
        await trio.sleep(0.002)  # distinct finish times: the oldest is well defined
    outcomes = [(await store.claim(f"k{i}", FP, "z", 60.0)).outcome for i in range(5)]
    assert outcomes == ["claimed", "claimed", "done", "done", "done"]
    assert (await store.claim("running", FP, "z", 60.0)).outcome == "running"


async def test_the_cap_never_evicts_a_key_claimed_again(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A finished record that expired and was claimed again is still in the finished index;
    when the cap pops it, the running claim survives."""
    store = store_env.idempotency_store()
    await store.claim("a", FP, "t1", 60.0)
    await store.finish("a", "t1", b"old", False, 0.2, 100)  # a short TTL (an older deploy)
    with trio.fail_after(10):
        while (await store.claim("a", FP, "t2", 60.0)).outcome != "claimed":  # noqa: ASYNC110
            await trio.sleep(0.02)
    for i in range(3):
        await store.claim(f"k{i}", FP, "x", 60.0)
        await store.finish(f"k{i}", "x", b"v", False, 60.0, 1)
    assert (await store.claim("a", FP, "t3", 60.0)).outcome == "running"
    assert await store.finish("a", "t2", b"new", False, 60.0, 100)


async def test_finished_records_expire_after_their_ttl(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """An outcome is served until its TTL, then the key is new again."""
    store = store_env.idempotency_store()
    await store.claim("k", FP, "a", 60.0)
    await store.finish("k", "a", b"v", False, 0.2, 100)
    assert (await store.claim("k", FP, "b", 60.0)).outcome == "done"
    with trio.fail_after(10):
        while (await store.claim("k", FP, "b", 60.0)).outcome != "claimed":  # noqa: ASYNC110
            await trio.sleep(0.02)


async def test_finishing_and_releasing_are_published(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Subscribers hear each key finished or released."""
    store = store_env.idempotency_store()
    heard: list[str] = []
    subscribed = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: store.listen(
                heard.append, on_subscribed=subscribed.set, task_status=task_status
            )
        )
        await subscribed.wait()
        await store.claim("k1", FP, "a", 60.0)
        await store.finish("k1", "a", b"v", False, 60.0, 100)
        await store.claim("k:2", FP, "a", 60.0)
        await store.release("k:2", "a")
        await store_env.wait_until(lambda: len(heard) == 2)
        nursery.cancel_scope.cancel()
    assert heard == ["k1", "k:2"]


# ------------------------------------------------------------------ instances in a fleet


@asynccontextmanager
async def instances(
    env: StoreEnv, n: int, service: str = "svc", **overrides: object
) -> AsyncIterator[list[SharedIdempotency]]:
    """``n`` shared-idempotency tiers of one service on ``env``'s store, running."""
    tiers = [
        SharedIdempotency(
            env.idempotency_store(service), env.settings(f"i{i}", **overrides), service
        )
        for i in range(n)
    ]
    async with trio.open_nursery() as nursery:
        for tier in tiers:
            await nursery.start(tier.run)
        yield tiers
        nursery.cancel_scope.cancel()


async def test_a_joiner_on_another_instance_gets_the_owners_outcome(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """While one instance runs a key, another waits and then replays its outcome."""
    async with instances(store_env, 2) as (a, b):
        claim = await a.begin("order-1", {"amount": 5})
        assert isinstance(claim, SharedClaim)
        got: list[object] = []

        async def join() -> None:
            got.append(await b.begin("order-1", {"amount": 5}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(join)
            await store_env.wait_until(lambda: b.statistics().joins == 1)
            assert await a.complete(claim, {"charged": True})
        assert got == [Completed({"charged": True}, False)]
        assert b.statistics().replays == 1


async def test_a_joiner_takes_over_when_the_owner_dies(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """An owner that stops renewing (killed) loses the key after its lease: the waiting
    joiner claims it, and the dead owner's late finish is refused."""
    store = store_env.idempotency_store()
    settings = store_env.settings("dead", idempotency_lease=0.3)
    dead = SharedIdempotency(store, settings, "svc")  # never run: no renewals
    claim = await dead.begin("k", "req")
    assert isinstance(claim, SharedClaim)
    async with instances(store_env, 1, idempotency_lease=0.3) as (joiner,):
        taken = await joiner.begin("k", "req")
        assert isinstance(taken, SharedClaim)
        assert taken.took_over
        assert not await dead.complete(claim, "late")
        assert claim.lost
        assert await joiner.complete(taken, "fresh")
    assert joiner.statistics().takeovers == 1


async def test_a_running_owner_keeps_its_key_by_renewing(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """A call running for many leases is not taken over while its owner renews."""
    async with instances(store_env, 2, idempotency_lease=0.3) as (a, b):
        claim = await a.begin("k", "req")
        assert isinstance(claim, SharedClaim)
        with trio.move_on_after(1.5):
            await b.begin("k", "req")
            raise AssertionError("the joiner got an answer while the owner ran")
        assert await a.complete(claim, 42)
        assert await b.begin("k", "req") == Completed(42, False)
        assert not claim.lost


async def test_conflicts_failures_and_transient_failures(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """Another payload conflicts; a failure replays as a ProviderError; a transient failure
    releases the key so the call runs again."""
    async with instances(store_env, 2) as (a, b):
        claim = await a.begin("k", "req")
        assert isinstance(claim, SharedClaim)
        with pytest.raises(IdempotencyConflict):
            await b.begin("k", "other")
        assert await a.fail(claim, ValueError("bad card"), transient=False)
        replay = await b.begin("k", "req")
        assert isinstance(replay, Completed)
        assert replay.failed
        assert isinstance(replay.value, ProviderError)
        assert "bad card" in replay.value.message
        retry = await a.begin("t", "req")
        assert isinstance(retry, SharedClaim)
        assert await a.fail(retry, TimeoutError(), transient=True)
        assert isinstance(await b.begin("t", "req"), SharedClaim)


async def test_each_key_runs_once_across_instances(
    store_env: StoreEnv, store_clock: trio.testing.MockClock | None
) -> None:
    """200 calls over 20 keys spread across three instances: each key runs exactly once and
    every caller gets that run's outcome."""
    runs: dict[str, int] = {}
    answers: list[tuple[str, object]] = []
    rng = random.Random(7)
    # No owner is meant to lose its lease here (takeovers have their own tests): a lease far
    # longer than a loaded machine can stall the renewals keeps a stall from looking like one.
    async with instances(store_env, 3, idempotency_lease=10.0) as tiers:

        async def call(tier: SharedIdempotency, key: str, delay: float) -> None:
            await trio.sleep(delay)
            found = await tier.begin(key, {"key": key})
            if isinstance(found, SharedClaim):
                runs[key] = runs.get(key, 0) + 1
                await trio.sleep(0.01)
                result = f"{key}:{tier.settings.instance}"
                assert await tier.complete(found, result)
                answers.append((key, result))
            else:
                answers.append((key, found.value))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(call, rng.choice(tiers), f"key{i % 20}", rng.random() * 0.05)
    assert runs == {f"key{i}": 1 for i in range(20)}
    assert len(answers) == 200
    by_key: dict[str, set[object]] = {}
    for key, value in answers:
        by_key.setdefault(key, set()).add(value)
    assert all(len(values) == 1 for values in by_key.values())


async def test_a_success_costs_two_round_trips(mock_clock: trio.testing.MockClock) -> None:
    """Claim and finish: two round trips for a keyed call on the success path."""
    from actors._fleet._memory import MemoryServer

    server = MemoryServer()
    env = StoreEnv("memory", "rtt", "redis://127.0.0.1:1/0", server=server)
    tier = SharedIdempotency(env.idempotency_store(), env.settings(), "svc")
    before = server.round_trips
    claim = await tier.begin("k", "req")
    assert isinstance(claim, SharedClaim)
    assert await tier.complete(claim, "ok")
    assert server.round_trips - before == 2
