"""Idempotency table: one execution per key, its outcome replayed to every later caller.

Theory of operation
-------------------
A caller that may send a request twice (a retrying client, a saga step replayed after a crash)
gives it an *idempotency key*.  The table maps each key to either

* an **in-flight** call (:class:`InFlight`): the first caller runs it; callers arriving with the
  same key meanwhile *join* it instead of running it again.  The entry carries a ``waiters``
  list the trio shell fills with whatever it wakes them with; the table never looks inside; or
* a **completed** outcome: a value, or an error that retrying will not fix.  Later callers get
  it back (:class:`Completed`) until the record expires ``ttl`` seconds after completion.

Every entry stores a *fingerprint* of the request (:func:`fingerprint`: msgspec's deterministic
msgpack encoding hashed with BLAKE2b to 128 bits).  The same key with a different fingerprint is
a caller's mistake and raises :class:`~actors._errors.IdempotencyConflict`, whether the first
call is in flight or completed.

Outcomes: a success and a non-transient failure are cached.  A transient failure (and an
abandoned call) removes the entry, so a later attempt with the same key runs again: caching
"the network was down" for a day would be wrong.

Bounds.  At most ``max_records`` entries (in flight and completed together).  A new key on a
full table first drops expired records, then evicts the *oldest completed* record.  In-flight
entries are never evicted: someone is waiting on them and dropping one silently would let a
duplicate run.  A table whose every entry is in flight refuses new keys with
:class:`IdempotencyTableFull` (transient: retry when calls finish), never silently.

Expiry is amortised O(1): the TTL is uniform, so completed records expire in completion order.
Completed records sit in lists in completion order, and each write (and a lookup that meets an
expired record) drops the expired ones from their head.  A ``now`` earlier than one already seen
counts as the latest time seen for computing expiries, which keeps them sorted.

Memory.  The layout is designed for about 190 bytes per completed record at a million records
with 40-character keys (the key string itself is ~90 of them), the reply object excluded: one
dict entry and one int per record, plus two list slots.

* ``_meta``: key -> one int packing ``seq | fingerprint << 40 | expiry_ms << 168`` (a 200-bit
  int is 52 bytes; an object with three attributes would be ~150), where ``seq`` is the
  record's position in completion order (modulo 2**40);
* ``_keys`` and ``_values``: the completed keys (shared with the dict) and their reply objects
  (the value, or the error), in completion order from index ``_head``; the record of ``seq``
  sits at index ``seq - _base``.  Dropped records leave ``None`` until they are a quarter of
  the lists, which are then compacted (amortised O(1); at most a third more slots than
  records).  A second dict from key to reply would cost 21-31 bytes a record, a slot 8;
* ``_failed``: the set of keys whose outcome is an error (failures are the exception, so they
  pay the ~30 bytes of a set entry rather than every record paying for a flag).

In-flight entries are few (bounded by concurrency) and are plain ``__slots__`` objects in a
separate dict.

Persistence.  :class:`IdempotencyStore` is the protocol callers depend on; this module's
:class:`IdempotencyTable` is the in-memory store.  A SQLite store would keep one row per key
(``key`` primary key, ``fingerprint`` blob, ``state``, ``expires`` with an index, the outcome
encoded with msgspec) and a lease on in-flight rows (owner and lease expiry, so a crashed
process's claims lapse); ``begin`` is one ``INSERT ... ON CONFLICT DO NOTHING`` plus a ``SELECT``
in a transaction, expiry a ``DELETE ... WHERE expires <= ?`` in batches, and eviction orders by
``expires``.  A Redis store would claim with ``SET key claim NX PX lease``, store the outcome
with ``SET ... PX ttl`` and let Redis expire and evict.  Either keeps waiters in process: the
``waiters`` list is local bookkeeping, never stored.  Their methods would be ``async`` versions
of the same names.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import msgspec

from actors._errors import ErrorCategory, IdempotencyConflict, ResilienceError
from actors._policies._backoff import _duration, _integer

__all__ = [
    "Completed",
    "IdempotencySettings",
    "IdempotencyStatistics",
    "IdempotencyStore",
    "IdempotencyTable",
    "IdempotencyTableFull",
    "InFlight",
    "Joined",
    "Started",
    "fingerprint",
]

_FP_BITS: Final = 128
_FP_MASK: Final = (1 << _FP_BITS) - 1
#: A completed record's packed int: ``seq | fingerprint << 40 | expiry_ms << 168`` (``seq``, its
#: position in completion order modulo 2**40, locates its key and outcome in the lists).
_SEQ_BITS: Final = 40
_SEQ_MASK: Final = (1 << _SEQ_BITS) - 1
_EXPIRY_SHIFT: Final = _SEQ_BITS + _FP_BITS


class IdempotencySettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Settings of an idempotency table (default: 24 h, 10,000 records).

    Attributes:
        ttl: seconds a completed outcome is kept (default 86400.0, 24 h; > 0).
        max_records: entries kept, in flight and completed together (default 10,000; >= 1).

    ``ttl`` accepts float seconds or :class:`datetime.timedelta`.  Invalid values raise
    :class:`~actors._errors.ConfigError` naming the field.
    """

    ttl: float = 86400.0
    max_records: int = 10_000

    if TYPE_CHECKING:

        def __init__(
            self, *, ttl: float | datetime.timedelta = ..., max_records: int = ...
        ) -> None: ...

    def __post_init__(self) -> None:
        _duration(self, "ttl", positive=True)
        _integer(self, "max_records", minimum=1)


class IdempotencyTableFull(ResilienceError):
    """Every entry of the idempotency table is an in-flight call: a new key cannot be admitted.

    In-flight entries are never evicted (their callers wait on them), so the new call is
    refused instead.  Transient: it succeeds once calls finish.
    """

    default_category = ErrorCategory.RATE_LIMIT

    def __init__(self, *, service: str = "", max_records: int) -> None:
        super().__init__(
            f"The idempotency table{' of ' + service if service else ''} is full: all "
            f"{max_records} entries are calls in flight, none can be evicted.",
            service=service,
            suggested_action=(
                "Retry when calls finish; raise max_records if this many concurrent calls are "
                "expected."
            ),
        )
        self.max_records = max_records


# ---------------------------------------------------------------------------- fingerprints

_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_blake2b: Final = hashlib.blake2b
_PREFIXES: dict[type, bytes] = {}
_MAX_PREFIXES: Final = 4096


def fingerprint(request: object, *, enc_hook: Callable[[Any], Any] | None = None) -> int:
    """A 128-bit fingerprint of ``request``: its type name and deterministic msgpack encoding.

    Dicts and sets are encoded in sorted order, so equal requests have equal fingerprints
    whatever their insertion order.  Two values of different types that encode alike (a
    Struct and an equal dict) have different fingerprints.

    Arguments:
        request: anything msgspec can encode (Structs, dataclasses, dicts, lists, str, ...).
        enc_hook: msgspec's hook for other types.

    Raises:
        TypeError: the request cannot be encoded.
    """
    encoder = (
        _ENCODER
        if enc_hook is None
        else msgspec.msgpack.Encoder(enc_hook=enc_hook, order="deterministic")
    )
    try:
        data = encoder.encode(request)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"cannot fingerprint a request of type {type(request).__qualname__}: {exc} "
            "(pass an enc_hook, or use msgspec-encodable types)"
        ) from exc
    kind = type(request)
    prefix = _PREFIXES.get(kind)
    if prefix is None:
        if len(_PREFIXES) >= _MAX_PREFIXES:  # only types made at run time can get here
            _PREFIXES.clear()
        prefix = _PREFIXES[kind] = f"{kind.__module__}.{kind.__qualname__}:".encode()
    return int.from_bytes(_blake2b(prefix + data, digest_size=16).digest())


# ----------------------------------------------------------------------------- outcomes


class Completed(msgspec.Struct, frozen=True):
    """``begin`` found a completed call: ``value`` is its reply, or its error if ``failed``.

    The error is the stored exception object; raise a new error chained to it rather than the
    object itself, so tracebacks do not pile up on one instance.
    """

    value: object
    failed: bool


class InFlight:
    """A call in progress under one key.

    Attributes:
        key: the idempotency key.
        fingerprint: the request's fingerprint.
        started_at: the ``now`` it began.
        waiters: a list the shell fills with its waiters (opaque to the table).
        joins: how many callers joined it.
    """

    __slots__ = ("fingerprint", "joins", "key", "started_at", "waiters")

    def __init__(self, key: str, fingerprint: int, started_at: float) -> None:
        self.key = key
        self.fingerprint = fingerprint
        self.started_at = started_at
        self.waiters: list[object] = []
        self.joins = 0

    def __repr__(self) -> str:
        return f"<InFlight {self.key!r} since {self.started_at:g} joins={self.joins}>"


class Started(msgspec.Struct, frozen=True):
    """``begin`` admitted a new call: the caller runs it and then completes ``entry``."""

    entry: InFlight


class Joined(msgspec.Struct, frozen=True):
    """``begin`` found the same call in flight: the caller waits on ``entry`` (via waiters)."""

    entry: InFlight


@attrs.frozen
class IdempotencyStatistics:
    """A snapshot of an idempotency table.

    Attributes:
        records: entries held (in flight + completed, expired ones not yet swept included).
        in_flight: calls in flight.
        completed: completed outcomes held.
        max_records: the capacity.
        hits: ``begin`` calls answered from a completed outcome.
        joins: ``begin`` calls that joined an in-flight call.
        misses: ``begin`` calls that started a new call.
        conflicts: ``begin`` calls refused with IdempotencyConflict.
        evictions: completed records evicted (oldest first) to make room.
        expirations: completed records dropped after their TTL.
        rejections: new keys refused with IdempotencyTableFull.
    """

    records: int
    in_flight: int
    completed: int
    max_records: int
    hits: int
    joins: int
    misses: int
    conflicts: int
    evictions: int
    expirations: int
    rejections: int


class IdempotencyStore(Protocol):
    """What a provider actor needs from an idempotency store (see the module docstring)."""

    def begin(self, key: str, fingerprint: int, now: float) -> Completed | Started | Joined:
        """Look ``key`` up and, if it is unknown, admit a new call under it."""
        ...

    def complete(self, entry: InFlight, now: float, value: object) -> list[object]:
        """Store the successful reply of ``entry``; return its waiters."""
        ...

    def fail(
        self, entry: InFlight, now: float, error: BaseException, *, transient: bool
    ) -> list[object]:
        """Store ``error`` (or, if ``transient``, forget the entry); return its waiters."""
        ...

    def abandon(self, entry: InFlight) -> list[object]:
        """Forget ``entry`` without an outcome (its caller gave up); return its waiters."""
        ...

    def expire(self, now: float) -> int:
        """Drop completed records expired at ``now``; return how many."""
        ...

    def statistics(self) -> IdempotencyStatistics:
        """A snapshot of the store's counters."""
        ...


# --------------------------------------------------------------------------------- table


class IdempotencyTable:
    """The in-memory :class:`IdempotencyStore` (see the module docstring).

    Example::

        table = IdempotencyTable(IdempotencySettings(ttl=3600))
        fp = fingerprint(request)
        match table.begin("order-42", fp, now):
            case Completed(value, failed): ...           # replay the outcome
            case Joined(entry): entry.waiters.append(w)  # wait for the running call
            case Started(entry):
                ...                                      # run it, then:
                table.complete(entry, now, reply)
    """

    __slots__ = (
        "_base",
        "_conflicts",
        "_evictions",
        "_expirations",
        "_failed",
        "_head",
        "_hits",
        "_inflight",
        "_joins",
        "_keys",
        "_latest",
        "_meta",
        "_misses",
        "_rejections",
        "_ttl_ms",
        "_values",
        "max_records",
        "service",
        "settings",
    )

    def __init__(self, settings: IdempotencySettings | None = None, *, service: str = "") -> None:
        self.settings = settings = IdempotencySettings() if settings is None else settings
        self.service = service
        self.max_records = settings.max_records
        self._ttl_ms = settings.ttl * 1000.0
        # Completed records (see the module docstring): key -> packed int; keys and
        # outcomes in completion order from index `_head`; `_base` is the sequence number of
        # index 0 (modulo 2**40).
        self._meta: dict[str, int] = {}
        self._keys: list[str | None] = []
        self._values: list[object] = []
        self._head = 0
        self._base = 0
        self._failed: set[str] = set()
        self._inflight: dict[str, InFlight] = {}
        self._latest = -math.inf
        self._hits = self._joins = self._misses = self._conflicts = 0
        self._evictions = self._expirations = self._rejections = 0

    def __len__(self) -> int:
        return len(self._meta) + len(self._inflight)

    def begin(self, key: str, fingerprint: int, now: float) -> Completed | Started | Joined:
        """Look ``key`` up at ``now``; admit a new call under it if it is unknown.

        Returns:
            :class:`Completed` with the cached outcome; :class:`Joined` with the in-flight
            entry (append your waiter to ``entry.waiters``); or :class:`Started` with a new
            in-flight entry that you must finish with :meth:`complete`, :meth:`fail` or
            :meth:`abandon`.

        Raises:
            IdempotencyConflict: ``key`` is held with a different fingerprint.
            IdempotencyTableFull: a new key, and every entry is in flight.
            TypeError / ValueError: ``key`` is not a str, or ``fingerprint`` not a 128-bit
                unsigned int (checked only when a new entry is made).
        """
        meta = self._meta.get(key)
        if meta is not None:
            if meta >> _EXPIRY_SHIFT > now * 1000.0:
                if meta >> _SEQ_BITS & _FP_MASK != fingerprint:
                    self._conflicts += 1
                    raise IdempotencyConflict(key=key)
                self._hits += 1
                value = self._values[(meta - self._base) & _SEQ_MASK]
                return Completed(value, key in self._failed)
            self.expire(now)  # this record and every older one
        entry = self._inflight.get(key)
        if entry is not None:
            if entry.fingerprint != fingerprint:
                self._conflicts += 1
                raise IdempotencyConflict(key=key)
            entry.joins += 1
            self._joins += 1
            return Joined(entry)
        return Started(self._admit(key, fingerprint, now))

    def holds(self, key: str, now: float) -> bool:
        """Whether ``key`` has a call in flight or an outcome not expired at ``now``.

        Read-only (nothing is counted or expired): a caller that must refuse a new call
        anyway (an open breaker) checks this first and computes no fingerprint when the key
        holds nothing, since :meth:`begin` would only admit it.
        """
        meta = self._meta.get(key)
        if meta is not None and meta >> _EXPIRY_SHIFT > now * 1000.0:
            return True
        return key in self._inflight

    def peek(self, key: str, fingerprint: int, now: float) -> Completed | InFlight | None:
        """:meth:`begin` without admitting or joining: the answer a held key gives now.

        Returns:
            :class:`Completed` with the cached outcome (counted as a hit, as by
            :meth:`begin`); the :class:`InFlight` entry running the same request (nothing
            counted: the caller joins it through :meth:`begin` later); or ``None`` when
            ``key`` holds nothing (nothing counted or made).

        Raises:
            IdempotencyConflict: ``key`` is held with a different fingerprint (counted).
        """
        meta = self._meta.get(key)
        if meta is not None and meta >> _EXPIRY_SHIFT > now * 1000.0:
            if meta >> _SEQ_BITS & _FP_MASK != fingerprint:
                self._conflicts += 1
                raise IdempotencyConflict(key=key)
            self._hits += 1
            value = self._values[(meta - self._base) & _SEQ_MASK]
            return Completed(value, key in self._failed)
        entry = self._inflight.get(key)
        if entry is None:
            return None
        if entry.fingerprint != fingerprint:
            self._conflicts += 1
            raise IdempotencyConflict(key=key)
        return entry

    def _admit(self, key: str, fingerprint: int, now: float) -> InFlight:
        if not isinstance(key, str):
            raise TypeError(f"an idempotency key must be a str, not {type(key).__name__}")
        if isinstance(fingerprint, bool) or not isinstance(fingerprint, int):
            raise TypeError(f"a fingerprint must be an int, not {type(fingerprint).__name__}")
        if not 0 <= fingerprint <= _FP_MASK:
            raise ValueError("a fingerprint must be an unsigned 128-bit int (see fingerprint())")
        if len(self._meta) + len(self._inflight) >= self.max_records:
            self.expire(now)
            if len(self._meta) + len(self._inflight) >= self.max_records:
                if not self._meta:
                    self._rejections += 1
                    raise IdempotencyTableFull(service=self.service, max_records=self.max_records)
                self._drop_oldest()
                self._evictions += 1
                self._compact()
        entry = InFlight(key, fingerprint, now)
        self._inflight[key] = entry
        self._misses += 1
        return entry

    def _finish(self, entry: InFlight, action: str) -> None:
        key = entry.key
        if self._inflight.get(key) is not entry:
            raise ValueError(
                f"cannot {action} the call for idempotency key {entry.key!r}: it is not in "
                "flight here (already finished or abandoned)"
            )
        del self._inflight[key]

    def _store(self, entry: InFlight, now: float, value: object, failed: bool) -> None:
        if now > self._latest:
            self._latest = now
        expiry_ms = math.ceil(self._latest * 1000.0 + self._ttl_ms)
        key = entry.key
        keys = self._keys
        seq = (self._base + len(keys)) & _SEQ_MASK
        self._meta[key] = seq | entry.fingerprint << _SEQ_BITS | expiry_ms << _EXPIRY_SHIFT
        keys.append(key)
        self._values.append(value)
        if failed:
            self._failed.add(key)
        self.expire(now)

    def _drop_oldest(self) -> None:
        """Forget the oldest completed record (there is one)."""
        head = self._head
        key = self._keys[head]
        assert key is not None
        del self._meta[key]
        self._failed.discard(key)
        self._keys[head] = None
        self._values[head] = None
        self._head = head + 1

    def _compact(self) -> None:
        """Drop the slots of forgotten records once they are a quarter of the lists (the lists
        then hold at most a third more slots than records: amortised O(1) per record)."""
        head = self._head
        if head >= 32 and head * 4 >= len(self._keys):
            del self._keys[:head], self._values[:head]
            self._base = (self._base + head) & _SEQ_MASK
            self._head = 0

    def complete(self, entry: InFlight, now: float, value: object) -> list[object]:
        """Cache ``value`` as the outcome of ``entry`` at ``now``; return its waiters.

        Raises ValueError when ``entry`` is not in flight in this table.
        """
        self._finish(entry, "complete")
        self._store(entry, now, value, False)
        return entry.waiters

    def fail(
        self, entry: InFlight, now: float, error: BaseException, *, transient: bool
    ) -> list[object]:
        """``entry`` failed with ``error``: cache it, or forget the entry if ``transient``.

        A transient failure is not cached so a later call with the same key runs again.
        Returns the entry's waiters.  Raises ValueError when ``entry`` is not in flight here.
        """
        self._finish(entry, "fail")
        if not transient:
            self._store(entry, now, error, True)
        return entry.waiters

    def abandon(self, entry: InFlight) -> list[object]:
        """Forget in-flight ``entry`` without an outcome; return its waiters.

        Raises ValueError when ``entry`` is not in flight here.
        """
        self._finish(entry, "abandon")
        return entry.waiters

    def abandon_all(self) -> int:
        """Forget every call in flight (their owner restarted); return how many.

        Completed outcomes are kept: the table can outlive the actor incarnation that filled it.
        """
        count = len(self._inflight)
        self._inflight.clear()
        return count

    def expire(self, now: float) -> int:
        """Drop the completed records that have expired at ``now``; return how many."""
        keys, meta = self._keys, self._meta
        limit = now * 1000.0
        head = start = self._head
        end = len(keys)
        while head < end:
            key = keys[head]
            assert key is not None
            if meta[key] >> _EXPIRY_SHIFT > limit:
                break
            self._drop_oldest()
            head += 1
        dropped = head - start
        if dropped:
            self._expirations += dropped
            self._compact()
        return dropped

    def next_expiry(self) -> float:
        """When the oldest completed record expires (``math.inf`` with none): the time a
        sweep is next useful."""
        if not self._meta:
            return math.inf
        key = self._keys[self._head]
        assert key is not None
        return float(self._meta[key] >> _EXPIRY_SHIFT) / 1000.0

    def _completed_keys(self) -> list[str]:
        """The completed records' keys, oldest first (the expiry and eviction order)."""
        return [key for key in self._keys[self._head :] if key is not None]

    def statistics(self) -> IdempotencyStatistics:
        """Counts of entries and of what ``begin`` answered."""
        return IdempotencyStatistics(
            records=len(self._meta) + len(self._inflight),
            in_flight=len(self._inflight),
            completed=len(self._meta),
            max_records=self.max_records,
            hits=self._hits,
            joins=self._joins,
            misses=self._misses,
            conflicts=self._conflicts,
            evictions=self._evictions,
            expirations=self._expirations,
            rejections=self._rejections,
        )

    def __repr__(self) -> str:
        return (
            f"<IdempotencyTable {len(self._meta)} completed, {len(self._inflight)} in flight, "
            f"max {self.max_records}>"
        )
