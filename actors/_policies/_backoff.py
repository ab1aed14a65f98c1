"""Backoff: how long to wait before retry number *n*.

Theory of operation
-------------------
A backoff is a pure function of the retry number, one uniform random sample and (for
decorrelated jitter only) the previous delay.  Nothing here sleeps, reads a clock or owns
hidden random state: :func:`compute_delay` takes the sample ``u`` as an argument, and
:class:`Backoff` draws it from a random source you inject (a :class:`random.Random` or any
callable returning a float in ``[0, 1)``), so a run is replayable from its seed.

The delay before retry ``n`` (``n = 1`` is the wait after the first failed attempt) is::

    raw(n)  = base_delay                          kind = "constant"
            = base_delay * n                      kind = "linear"
            = base_delay * multiplier ** (n - 1)  kind = "exponential"
    cap(n)  = min(raw(n), max_delay)

    jitter "none":          d = cap(n)
           "full":          d = u * cap(n)
           "equal":         d = cap(n) / 2 + u * cap(n) / 2
           "decorrelated":  d = min(max_delay, base_delay + u * (high - base_delay))
                            high = max(base_delay, 3 * prev), prev = the previous delay
                            (base_delay before the first retry)

    with a provider's Retry-After r:
                            delay = max(d, min(r, max_retry_after))

The jitter definitions are those of the AWS Architecture Blog's *Exponential Backoff And Jitter*.
Decorrelated jitter grows the delay by itself (each delay is drawn between ``base_delay`` and three
times the previous one), so it requires ``kind = "exponential"`` and ignores ``multiplier``; its
state, the previous delay, is explicit: pass the delay you actually waited last time.

A provider's Retry-After wins when it is longer than the computed delay, capped by
``max_retry_after`` so a misbehaving provider cannot park a caller for an hour (the caller's
deadline, enforced by the retry policy, still applies on top).  The Retry-After value may
exceed ``max_delay``: the provider said so.

This module also holds the small validation helpers the settings structs of the resilience
policies share (durations as float seconds or :class:`datetime.timedelta`, finite numbers,
enum names), so every one of them reports a bad value the same way: a
:class:`~actors._errors.ConfigError` whose ``path`` names the field.
"""

from __future__ import annotations

import datetime
import enum
import math
import random as _random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from actors._errors import ConfigError

__all__ = [
    "Backoff",
    "BackoffKind",
    "BackoffSettings",
    "Jitter",
    "RandomSource",
    "compute_delay",
]

#: Where jitter samples come from: a :class:`random.Random` or a callable returning ``[0, 1)``.
RandomSource = _random.Random | Callable[[], float]

#: Decorrelated jitter draws each delay from ``[base_delay, 3 * previous]`` (AWS).
_DECORRELATED_GROWTH: Final = 3.0


class BackoffKind(enum.Enum):
    """How the un-jittered delay grows with the retry number (see the module docstring)."""

    CONSTANT = "constant"
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


class Jitter(enum.Enum):
    """How randomness is mixed into the delay (AWS Architecture Blog definitions)."""

    NONE = "none"
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"


# ---------------------------------------------------------------- shared validation helpers

_E = TypeVar("_E", bound=enum.Enum)


def _set(owner: msgspec.Struct, name: str, value: object) -> None:
    msgspec.structs.force_setattr(owner, name, value)


def _number(owner: msgspec.Struct, name: str) -> float:
    """Return field ``name`` as a finite float, or raise ConfigError naming it."""
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, not {type(value).__name__}", path=name)
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, not {value}", path=name)
    _set(owner, name, value)
    return value


def _optional_duration(owner: msgspec.Struct, name: str, *, positive: bool = False) -> float | None:
    """Like :func:`_duration`, but ``None`` is accepted (and returned) as "no limit"."""
    if getattr(owner, name) is None:
        return None
    return _duration(owner, name, positive=positive)


def _duration(owner: msgspec.Struct, name: str, *, positive: bool = False) -> float:
    """Normalise field ``name`` (float seconds or timedelta) to float seconds and check it.

    Raises ConfigError naming the field when it is not a finite, non-negative number of
    seconds (strictly positive when ``positive``).
    """
    value = getattr(owner, name)
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"must be a number of seconds or a timedelta, not {type(value).__name__}", path=name
        )
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number of seconds, not {value}", path=name)
    if positive and value <= 0.0:
        raise ConfigError(f"must be a duration > 0 seconds, got {value:g}", path=name)
    if value < 0.0:
        raise ConfigError(f"must be a duration >= 0 seconds, got {value:g}", path=name)
    _set(owner, name, value)
    return value


def _integer(owner: msgspec.Struct, name: str, *, minimum: int) -> int:
    """Check that field ``name`` is an int >= ``minimum`` (bools are refused)."""
    value = getattr(owner, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"must be an integer, not {type(value).__name__}", path=name)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum}, got {value}", path=name)
    return value


def _enum(owner: msgspec.Struct, name: str, enum_type: type[_E]) -> _E:
    """Normalise field ``name`` to a member of ``enum_type``, accepting the member's value."""
    value = getattr(owner, name)
    if isinstance(value, enum_type):
        return value
    try:
        member = enum_type(value)
    except ValueError:
        names = ", ".join(repr(m.value) for m in enum_type)
        raise ConfigError(f"unknown name {value!r}; expected one of {names}", path=name) from None
    _set(owner, name, member)
    return member


# -------------------------------------------------------------------------------- settings


class BackoffSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How long to wait between attempts (see the module docstring for the formula).

    Attributes:
        kind: ``"constant"``, ``"linear"`` or ``"exponential"`` (default) growth.
        base_delay: seconds; the first un-jittered delay (default 1.0, >= 0).
        multiplier: growth factor of the exponential kind (default 2.0, >= 1).
        max_delay: seconds; cap of the computed delay (default 30.0, >= ``base_delay``).
        jitter: ``"none"``, ``"full"`` (default), ``"equal"`` or ``"decorrelated"`` (needs
            ``kind = "exponential"``).
        max_retry_after: seconds; cap of a provider's Retry-After (default 60.0, >= 0).

    Durations accept float seconds or :class:`datetime.timedelta` (stored as float seconds);
    ``kind`` and ``jitter`` accept the enum or its name.  Invalid values raise
    :class:`~actors._errors.ConfigError` whose ``path`` names the field.

    Example::

        BackoffSettings(kind="constant", base_delay=0.1, jitter="none")
    """

    kind: BackoffKind = BackoffKind.EXPONENTIAL
    base_delay: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: Jitter = Jitter.FULL
    max_retry_after: float = 60.0

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            kind: BackoffKind | str = ...,
            base_delay: float | datetime.timedelta = ...,
            multiplier: float = ...,
            max_delay: float | datetime.timedelta = ...,
            jitter: Jitter | str = ...,
            max_retry_after: float | datetime.timedelta = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        kind = _enum(self, "kind", BackoffKind)
        jitter = _enum(self, "jitter", Jitter)
        base = _duration(self, "base_delay")
        multiplier = _number(self, "multiplier")
        if multiplier < 1.0:
            raise ConfigError(
                f"must be >= 1 so the delay never shrinks, got {multiplier:g}", path="multiplier"
            )
        cap = _duration(self, "max_delay")
        if cap < base:
            raise ConfigError(
                f"must be >= base_delay ({base:g} s), got {cap:g} s", path="max_delay"
            )
        _duration(self, "max_retry_after")
        if jitter is Jitter.DECORRELATED and kind is not BackoffKind.EXPONENTIAL:
            raise ConfigError(
                "'decorrelated' jitter grows the delay by itself and needs kind = "
                f"'exponential', not {kind.value!r}",
                path="jitter",
            )


# ----------------------------------------------------------------------------- computation


# Enum attribute access costs a descriptor call on Python 3.11: the hot path compares with
# these module-level aliases instead.
_CONSTANT: Final = BackoffKind.CONSTANT
_LINEAR: Final = BackoffKind.LINEAR
_NONE: Final = Jitter.NONE
_FULL: Final = Jitter.FULL
_DECORRELATED: Final = Jitter.DECORRELATED


def _raw(settings: BackoffSettings, attempt: int) -> float:
    base = settings.base_delay
    kind = settings.kind
    if kind is _CONSTANT or base == 0.0:
        return base
    if kind is _LINEAR:
        return base * attempt
    try:
        return base * settings.multiplier ** (attempt - 1)
    except OverflowError:
        return math.inf


def compute_delay(
    settings: BackoffSettings,
    attempt: int,
    u: float,
    *,
    previous: float | None = None,
    retry_after: float | None = None,
) -> float:
    """The delay in seconds before retry ``attempt`` (1-based), per the module's formula.

    Arguments:
        settings: the backoff settings.
        attempt: the retry number, ``>= 1`` (1 is the wait after the first failure).
        u: a uniform sample in ``[0, 1]``; ignored when ``jitter`` is ``"none"``.
        previous: the delay waited before the previous attempt, used by decorrelated jitter
            (``None`` means ``base_delay``: the first retry).
        retry_after: the provider's Retry-After in seconds, or ``None``.  Negative values count
            as 0 and NaN as absent; the value is capped by ``max_retry_after``.

    Raises:
        ValueError: ``attempt < 1``, ``u`` outside ``[0, 1]`` or a negative ``previous``.

    The result is always in ``[0, max(max_delay, max_retry_after)]``.

    Example::

        >>> compute_delay(BackoffSettings(base_delay=2.0, jitter="none"), 3, 0.0)
        8.0
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if not 0.0 <= u <= 1.0:
        raise ValueError(f"the random sample u must be in [0, 1], got {u!r}")
    jitter = settings.jitter
    cap = settings.max_delay
    if jitter is _DECORRELATED:
        base = settings.base_delay
        prev = base if previous is None else previous
        if prev < 0.0:
            raise ValueError(f"previous must be >= 0 seconds, got {prev!r}")
        high = _DECORRELATED_GROWTH * prev
        if high < base:
            high = base
        delay = base + u * (high - base)
        if delay > cap:
            delay = cap
    else:
        delay = _raw(settings, attempt)
        if delay > cap:
            delay = cap
        if jitter is _FULL:
            delay = u * delay
        elif jitter is not _NONE:  # equal
            half = delay / 2.0
            delay = half + u * half
    if retry_after is not None and retry_after > delay:  # NaN compares false: ignored
        limit = settings.max_retry_after
        longer = retry_after if retry_after < limit else limit
        if longer > delay:
            delay = longer
    return delay


#: The jitter source of every policy given none: one generator for all (a Mersenne Twister's
#: state is 2.5 KiB, and a process may run thousands of providers), apart from the global one.
_SHARED: Final = _random.Random()


def _sampler(source: RandomSource | None) -> Callable[[], float]:
    if source is None:
        return _SHARED.random
    if isinstance(source, _random.Random):
        return source.random
    if not callable(source):
        raise TypeError(
            f"random must be a random.Random or a callable returning [0, 1), not {source!r}"
        )
    return source


class Backoff:
    """A :class:`BackoffSettings` with a random source: computes replayable delays.

    Arguments:
        settings: the backoff settings (default ``BackoffSettings()``).
        random: a :class:`random.Random` or a callable returning floats in ``[0, 1)``; a fresh
            ``random.Random()`` when omitted.  Seed it to replay a sequence of delays.

    Example::

        backoff = Backoff(BackoffSettings(base_delay=0.5), random=random.Random(7))
        first, second, third = backoff.delays(3)  # the same three delays for seed 7, always
    """

    __slots__ = ("_sample", "settings")

    settings: BackoffSettings

    def __init__(
        self, settings: BackoffSettings | None = None, *, random: RandomSource | None = None
    ) -> None:
        self.settings = BackoffSettings() if settings is None else settings
        self._sample = _sampler(random)

    def base(self, attempt: int) -> float:
        """The un-jittered, capped delay ``min(raw(attempt), max_delay)`` of retry ``attempt``."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        return min(_raw(self.settings, attempt), self.settings.max_delay)

    def delay(
        self, attempt: int, *, previous: float | None = None, retry_after: float | None = None
    ) -> float:
        """The delay before retry ``attempt``: :func:`compute_delay` with a fresh sample.

        The random source is consulted only when the settings have jitter.
        """
        u = 0.0 if self.settings.jitter is _NONE else self._sample()
        return compute_delay(self.settings, attempt, u, previous=previous, retry_after=retry_after)

    def delays(self, count: int) -> Iterator[float]:
        """The delays before retries ``1 .. count``, threading decorrelated jitter's state."""
        previous: float | None = None
        for attempt in range(1, count + 1):
            previous = self.delay(attempt, previous=previous)
            yield previous

    def __repr__(self) -> str:
        return f"Backoff({self.settings!r})"
