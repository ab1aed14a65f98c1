"""A provider's ``chaos`` section: :class:`ChaosSettings`, pure configuration.

The injectors that act on these settings use trio (a latency injector sleeps), so they live in
the public module ``actors.chaos``; the settings live here, with the rest of the configuration
schema, which imports no trio.  The small validators are shared with the injectors, which check
their own arguments the same way.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from actors._errors import ConfigError, ErrorCategory


def _category(value: object, path: str = "category") -> ErrorCategory:
    if isinstance(value, ErrorCategory):
        return value
    try:
        return ErrorCategory(value)
    except ValueError:
        names = ", ".join(repr(c.value) for c in ErrorCategory)
        raise ConfigError(
            f"unknown error category {value!r}; expected one of {names}", path=path
        ) from None


def _check_rate(rate: object) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise ConfigError(f"must be a number between 0 and 1, not {rate!r}", path="rate")
    if not (math.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"must be between 0 and 1, not {rate!r}", path="rate")
    return float(rate)


def _seconds(value: object, name: str) -> float:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number of seconds or a timedelta, not {value!r}", path=name)
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"must be a finite number of seconds >= 0, not {value!r}", path=name)
    return float(value)


class ChaosSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A provider's ``chaos`` section: injectors around its service function (off by default).

    Attributes:
        enabled: nothing is injected unless this is ``true`` (default ``false``).
        seed: seeds the injectors (each provider mixes in its name); ``None`` (default) draws
            a fresh seed per provider incarnation.
        fault_rate: probability that a call fails with an injected fault (default 0).
        faults: the categories of injected faults, picked uniformly (default network,
            timeout, rate_limit, dependency: the transient ones).
        retry_after: the ``Retry-After`` seconds of injected 429 / 503 faults (default 1).
        latency_rate: probability that a call is delayed (default 0).
        latency: seconds of injected delay (default 0).
        latency_max: when set, delays are drawn uniformly from ``[latency, latency_max]``.
        outcome_rate: probability that a call returns ``outcome`` without reaching the service
            (default 0).
        outcome: the substitute outcome (any JSON/TOML value; default ``None``).

    Order per call: latency, then fault, then outcome.  Rates are within [0, 1]; durations are
    seconds (or ``timedelta`` in code).  Invalid values raise
    :class:`~actors._errors.ConfigError` naming the field.

    Example (TOML)::

        [providers.openai.chaos]
        enabled = true
        seed = 7
        fault_rate = 0.1
        faults = ["network", "rate_limit"]
        latency_rate = 0.2
        latency = 0.05
        latency_max = 0.5
    """

    enabled: bool = False
    seed: int | None = None
    fault_rate: float = 0.0
    faults: frozenset[ErrorCategory] = frozenset(
        {
            ErrorCategory.NETWORK,
            ErrorCategory.TIMEOUT,
            ErrorCategory.RATE_LIMIT,
            ErrorCategory.DEPENDENCY,
        }
    )
    retry_after: float | None = 1.0
    latency_rate: float = 0.0
    latency: float = 0.0
    latency_max: float | None = None
    outcome_rate: float = 0.0
    outcome: Any = None

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            enabled: bool = ...,
            seed: int | None = ...,
            fault_rate: float = ...,
            faults: Iterable[ErrorCategory | str] = ...,
            retry_after: float | datetime.timedelta | None = ...,
            latency_rate: float = ...,
            latency: float | datetime.timedelta = ...,
            latency_max: float | datetime.timedelta | None = ...,
            outcome_rate: float = ...,
            outcome: Any = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"must be true or false, not {self.enabled!r}", path="enabled")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"must be an integer, not {seed!r}", path="seed")
        for name in ("fault_rate", "latency_rate", "outcome_rate"):
            try:
                value = _check_rate(getattr(self, name))
            except ConfigError as exc:
                raise ConfigError(exc.problem, path=name) from None
            msgspec.structs.force_setattr(self, name, value)
        faults: object = self.faults
        if isinstance(faults, str | bytes) or not isinstance(faults, Iterable):
            raise ConfigError(
                f"must be a collection of category names, not {type(faults).__name__}",
                path="faults",
            )
        categories = frozenset(_category(item, "faults") for item in faults)
        if self.fault_rate > 0 and not categories:
            raise ConfigError("must name at least one category when fault_rate > 0", path="faults")
        msgspec.structs.force_setattr(self, "faults", categories)
        for name in ("latency", "retry_after", "latency_max"):
            value = getattr(self, name)
            if value is None and name != "latency":
                continue
            msgspec.structs.force_setattr(self, name, _seconds(value, name))
        if self.latency_max is not None and self.latency_max < self.latency:
            raise ConfigError(
                f"must be >= latency ({self.latency:g}), not {self.latency_max:g}",
                path="latency_max",
            )
