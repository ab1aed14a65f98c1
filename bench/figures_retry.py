"""Retry-side policy figures: budget check, idempotency lookup and memory, retry decisions.

* ``budget_check_ns``: one ``RetryBudget.deposit`` plus one ``try_withdraw``, the clock
  advancing 0.1 ms per pair so the bucket ring rolls over as it does under load.
* ``idempotency_lookup_ns``: ``IdempotencyTable.begin`` of a completed key (a hit, fingerprint
  precomputed) in a table of 10,000 records, keys in shuffled order;
  ``dict_get_floor_ns`` the same loop calling a bare ``dict.get`` (the floor of any lookup),
  and ``idempotency_lookup_vs_dict_get`` their ratio, which travels between machines.
* ``idempotency_fingerprint_ns``: ``fingerprint()`` of a small five-field msgspec Struct
  request (what a caller pays once per idempotent call, on top of the lookup).
* ``retry_decision_ns``: ``RetryPolicy.begin`` plus one ``on_failure`` that grants a retry,
  with a budget and full jitter.
* ``idempotency_bytes_per_record``: memory per completed record of a table filled through
  ``begin`` + ``complete`` with 40-character keys: everything the table holds per record (key
  string, its dict entry, the packed metadata int, its slots in the key and reply lists), the
  reply object excluded (all records share one).  Dict tables grow in steps, so the figure
  depends on how full they happen to be: it is the larger of the figures at 10,000 records
  (the default ``max_records``) and at 1,000,000 (``idempotency_bytes_per_record_10k`` and
  ``_1m``).  Bytes are counted by walking every object the table holds (``sys.getsizeof``; it
  agrees with ``tracemalloc`` to a fraction of a byte per record here and takes a fraction of
  its time).

Times are medians of per-round values over interleaved rounds, with their spread.
"""

from __future__ import annotations

import gc
import itertools
import random
import sys

import msgspec

from actors._errors import ErrorCategory
from actors._policies._backoff import BackoffSettings
from actors._policies._budget import BudgetSettings, RetryBudget
from actors._policies._idempotency import (
    IdempotencySettings,
    IdempotencyTable,
    Started,
    fingerprint,
)
from actors._policies._retry import RetryPolicy, RetrySettings
from bench._harness import Figure, measure, now_ns
from bench.figures_monitor import _held_bytes

GOALS = {"idempotency_bytes_per_record": ("<=", 180.0)}

_KEY_CHARS = 40
_MASK128 = (1 << 128) - 1


def _key(i: int) -> str:
    return f"key-{i:0{_KEY_CHARS - 4}d}"


def _fp(i: int) -> int:
    return (i * 0x9E3779B97F4A7C15F39CC0605CEDC835 + 0x5851F42D4C957F2D) & _MASK128


def _budget(n: int) -> float:
    budget = RetryBudget(BudgetSettings())
    deposit, try_withdraw = budget.deposit, budget.try_withdraw
    t0 = now_ns()
    now = 1000.0
    for _ in range(n):
        now += 1e-4
        deposit(now)
        try_withdraw(now)
    return (now_ns() - t0) / n


def _filled_table(records: int) -> tuple[IdempotencyTable, list[str], list[int]]:
    table = IdempotencyTable(IdempotencySettings(max_records=records))
    reply = object()
    keys = [_key(i) for i in range(records)]
    fps = [_fp(i) for i in range(records)]
    for key, fp in zip(keys, fps, strict=True):
        started = table.begin(key, fp, 0.0)
        assert isinstance(started, Started)
        table.complete(started.entry, 0.0, reply)
    return table, keys, fps


_TABLE, _KEYS, _FPS = _filled_table(10_000)


def _shuffled_pairs(n: int) -> list[tuple[str, int]]:
    pairs = list(zip(_KEYS, _FPS, strict=True))
    random.Random(1).shuffle(pairs)
    return list(itertools.islice(itertools.cycle(pairs), n))


def _lookup(n: int) -> float:
    begin = _TABLE.begin
    pairs = _shuffled_pairs(n)
    t0 = now_ns()
    for key, fp in pairs:
        begin(key, fp, 1.0)
    return (now_ns() - t0) / n


def _dict_get(n: int) -> float:
    get = dict.fromkeys(_KEYS, 0).get
    pairs = _shuffled_pairs(n)
    t0 = now_ns()
    for key, fp in pairs:
        get(key, fp)
    return (now_ns() - t0) / n


class _Request(msgspec.Struct, frozen=True):
    model: str
    prompt: str
    max_tokens: int
    temperature: float
    user: str


_REQUEST = _Request("gpt-4o", "Summarise the attached scene in two sentences.", 256, 0.2, "u-42")


def _fingerprint(n: int) -> float:
    request = _REQUEST
    t0 = now_ns()
    for _ in range(n):
        fingerprint(request)
    return (now_ns() - t0) / n


def _decision(n: int) -> float:
    policy = RetryPolicy(
        RetrySettings(max_attempts=4, backoff=BackoffSettings(base_delay=0.01)),
        budget=RetryBudget(BudgetSettings(min_retries_per_s=1e6)),
        random=random.Random(3),
    )
    timeout = ErrorCategory.TIMEOUT
    t0 = now_ns()
    now = 1000.0
    for _ in range(n):
        now += 1e-4
        policy.begin(now).on_failure(now, timeout)
    return (now_ns() - t0) / n


def _bytes_per_record(records: int) -> float:
    reply = object()  # shared by every record: the replies themselves are not counted
    table = IdempotencyTable(IdempotencySettings(max_records=records))
    empty = _held_bytes(table)
    begin, complete = table.begin, table.complete
    for i in range(records):
        now = i * 1e-3
        started = begin(_key(i), _fp(i), now)
        assert isinstance(started, Started)
        complete(started.entry, now, reply)
    assert len(table) == records
    gc.collect()
    held = _held_bytes(table) - sys.getsizeof(reply)
    return (held - empty) / records


def collect(quick: bool) -> dict[str, Figure]:
    """Measure the figures listed in the module docstring."""
    n, rounds = (20_000, 9) if quick else (200_000, 21)
    figures = measure(
        {
            "budget": _budget,
            "lookup": _lookup,
            "dict_get": _dict_get,
            "fingerprint": _fingerprint,
            "decision": _decision,
        },
        lambda ns: {
            "budget_check_ns": ns["budget"],
            "idempotency_lookup_ns": ns["lookup"],
            "dict_get_floor_ns": ns["dict_get"],
            "idempotency_lookup_vs_dict_get": ns["lookup"] / ns["dict_get"],
            "idempotency_fingerprint_ns": ns["fingerprint"],
            "retry_decision_ns": ns["decision"],
        },
        n=n,
        rounds=rounds,
    )
    small, large = _bytes_per_record(10_000), _bytes_per_record(1_000_000)
    figures["idempotency_bytes_per_record_10k"] = Figure.exact(small)
    figures["idempotency_bytes_per_record_1m"] = Figure.exact(large)
    figures["idempotency_bytes_per_record"] = Figure.exact(max(small, large))
    return figures
