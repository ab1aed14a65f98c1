"""Correlation ids (saga id, idempotency key, service) carried by the current context.

The built-in actors bind them around the work they do for a call (a provider around each
attempt, the saga coordinator around each step), so every log record written meanwhile, by
aura-actors or by the user's service code, can carry them.  ``supervisors``' logging support
(``correlation()``, ``CorrelationFilter``, ``JsonFormatter``) reads and binds the same variable.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["CORRELATION", "EMPTY_IDS", "ServiceCall", "ids"]

EMPTY_IDS: Final[Mapping[str, str]] = MappingProxyType({})

#: The correlation ids bound in the current context (an immutable mapping).
CORRELATION: Final = contextvars.ContextVar[Mapping[str, str]](
    "aura_correlation_ids", default=EMPTY_IDS
)


def ids(**values: str | None) -> Mapping[str, str]:
    """An immutable mapping of the given ids, leaving out those that are ``None``."""
    return MappingProxyType({k: v for k, v in values.items() if v is not None})


class ServiceCall(Mapping[str, str]):
    """The ids of one provider call (``service``, ``idempotency_key``): a read-only mapping
    that costs one small object per call (bound around every attempt, read only by logging)."""

    __slots__ = ("_key", "_service")

    def __init__(self, service: str, key: str) -> None:
        self._service = service
        self._key = key

    def __getitem__(self, name: str) -> str:
        if name == "service":
            return self._service
        if name == "idempotency_key":
            return self._key
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(("service", "idempotency_key"))

    def __len__(self) -> int:
        return 2
