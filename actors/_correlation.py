"""Correlation ids (saga id, idempotency key, service) carried by the current context.

The built-in actors bind them around the work they do for a call (a provider around each
attempt, the saga coordinator around each step), so every log record written meanwhile, by
aura-actors or by the user's service code, can carry them.  ``supervisors``' logging support
(``correlation()``, ``CorrelationFilter``, ``JsonFormatter``) reads and binds the same variable.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["CORRELATION", "EMPTY_IDS", "ids"]

EMPTY_IDS: Final[Mapping[str, str]] = MappingProxyType({})

#: The correlation ids bound in the current context (an immutable mapping).
CORRELATION: Final = contextvars.ContextVar[Mapping[str, str]](
    "aura_correlation_ids", default=EMPTY_IDS
)


def ids(**values: str | None) -> Mapping[str, str]:
    """An immutable mapping of the given ids, leaving out those that are ``None``."""
    return MappingProxyType({k: v for k, v in values.items() if v is not None})
