"""Fingerprints and outcomes of the shared idempotency store, stable across deploys.

Theory of operation
-------------------
**Fingerprints.**  The in-process table's :func:`~actors.fingerprint` includes the
request's class name, which is right inside one process and wrong across a fleet: a deploy that
renames a class (or moves it to another module) would make every retried request conflict
with its own earlier run.  :func:`stable_fingerprint` hashes the request's *content* only:
msgspec Structs become maps of their encoded field names (without their tag, which is the class
name by default), fields still at their default are left out (so adding a field with a default
in a later deploy keeps old fingerprints), dataclasses and attrs classes are encoded by msgspec
as maps, and the whole is encoded as deterministic msgpack (sorted maps and sets) and hashed
with BLAKE2b-128 under a versioned prefix.  Renaming a class keeps the fingerprint; renaming a
field or changing a value changes it.

Integers must fit in 64 bits (msgpack's range); a request that cannot be encoded raises
TypeError.

**Outcomes.**  What a shared record can hold is what msgspec can encode as msgpack: None, bool,
int (64-bit), float, str, bytes, lists, tuples, dicts, sets, datetimes, UUIDs, Decimals,
enums, msgspec Structs, dataclasses and attrs classes.  A joiner on another instance decodes it
to ``value_type`` when one is given (so a Struct comes back as that Struct) and to plain
builtins otherwise (datetimes stay datetimes; UUIDs, Decimals and enums come back as their
encoded form, Structs and dataclasses as dicts).  A failed outcome is stored as its error's
category, class name, message, and Retry-After / HTTP status when it has them, and replayed as a
:class:`~actors._errors.ProviderError` with that category (an exception object cannot cross
processes faithfully).  A value that cannot be encoded raises TypeError before anything is
stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any, Final

import msgspec

from actors._errors import AuraError, ErrorCategory, ProviderError

__all__ = ["OutcomeCodec", "StoredFailure", "stable_fingerprint"]

_VERSION: Final = b"aura-fp-1:"
_ENCODER: Final = msgspec.msgpack.Encoder(order="deterministic")
_FIELDS: dict[type, tuple[tuple[str, str, Any], ...]] = {}
_NODEFAULT: Final = msgspec.NODEFAULT


def _struct_fields(kind: type[msgspec.Struct]) -> tuple[tuple[str, str, Any], ...]:
    found = _FIELDS.get(kind)
    if found is None:
        items = []
        for field in msgspec.structs.fields(kind):
            if field.default is not _NODEFAULT:
                default = field.default
            elif field.default_factory is not _NODEFAULT:
                default = field.default_factory()
            else:
                default = _NODEFAULT
            items.append((field.name, field.encode_name, default))
        found = _FIELDS[kind] = tuple(items)
    return found


def _canonical(value: Any) -> Any:
    """``value`` with every Struct turned into a map of its non-default fields, untagged."""
    if isinstance(value, msgspec.Struct):
        out = {}
        for name, encoded, default in _struct_fields(type(value)):
            item = getattr(value, name)
            if default is not _NODEFAULT and item == default:
                continue
            out[encoded] = _canonical(item)
        return out
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def stable_fingerprint(request: object) -> str:
    """A 128-bit hex fingerprint of ``request``'s content (see the module docstring).

    Raises:
        TypeError: the request cannot be encoded by msgspec.
    """
    try:
        data = _ENCODER.encode(_canonical(request))
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"cannot fingerprint a request of type {type(request).__qualname__}: {exc} "
            "(use msgspec-encodable types)"
        ) from exc
    return hashlib.blake2b(_VERSION + data, digest_size=16).hexdigest()


class StoredFailure(msgspec.Struct, frozen=True, array_like=True):
    """A failed outcome as the shared store keeps it."""

    category: str
    error_type: str
    message: str
    retry_after: float | None = None
    status_code: int | None = None


class _Success(msgspec.Struct, frozen=True, array_like=True, tag=0):
    value: msgspec.Raw


class _Failure(msgspec.Struct, frozen=True, array_like=True, tag=1):
    failure: StoredFailure


class OutcomeCodec:
    """Encodes outcomes for the shared store and decodes them on any instance.

    Args:
        value_type: the type successful values decode to (default: plain builtins).
        enc_hook / dec_hook: msgspec hooks for other types.
    """

    def __init__(
        self,
        value_type: Any = Any,
        *,
        enc_hook: Callable[[Any], Any] | None = None,
        dec_hook: Callable[[type, Any], Any] | None = None,
    ) -> None:
        self._encoder = msgspec.msgpack.Encoder(enc_hook=enc_hook)
        self._value = msgspec.msgpack.Decoder(value_type, dec_hook=dec_hook)
        self._outer = msgspec.msgpack.Decoder(_Success | _Failure)

    def encode_value(self, value: object) -> bytes:
        """A successful outcome.  Raises TypeError when msgspec cannot encode it."""
        try:
            raw = msgspec.Raw(self._encoder.encode(value))
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"cannot store an outcome of type {type(value).__qualname__} in the shared "
                f"idempotency store: {exc}"
            ) from exc
        return self._encoder.encode(_Success(raw))

    def encode_error(self, error: BaseException) -> bytes:
        """A failed outcome: its category, class name, message, Retry-After and status."""
        category = getattr(error, "category", ErrorCategory.UNKNOWN)
        if not isinstance(category, ErrorCategory):
            category = ErrorCategory.UNKNOWN
        message = error.message if isinstance(error, AuraError) else str(error)
        retry_after = getattr(error, "retry_after", None)
        status = getattr(error, "status_code", None)
        failure = StoredFailure(
            category.value,
            f"{type(error).__module__}.{type(error).__qualname__}",
            message[:2000],
            float(retry_after) if isinstance(retry_after, int | float) else None,
            status if isinstance(status, int) and not isinstance(status, bool) else None,
        )
        return self._encoder.encode(_Failure(failure))

    def decode(self, data: bytes, *, service: str = "") -> tuple[object, bool]:
        """``(value, failed)``: the value, or a ProviderError replaying the stored failure.

        Raises msgspec.DecodeError / ValidationError when the record does not match.
        """
        outer = self._outer.decode(data)
        if isinstance(outer, _Success):
            return self._value.decode(outer.value), False
        failure = outer.failure
        try:
            category = ErrorCategory(failure.category)
        except ValueError:
            category = ErrorCategory.UNKNOWN
        error = ProviderError(
            f"{failure.error_type.rsplit('.', 1)[-1]}: {failure.message} (the stored outcome "
            "of an earlier call with this idempotency key)",
            service=service,
            category=category,
            retry_after=failure.retry_after,
            status_code=failure.status_code,
        )
        return error, True
