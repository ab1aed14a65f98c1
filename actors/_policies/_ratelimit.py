"""A sans-I/O token-bucket rate limiter (rate, burst) for providers with quotas.

Theory of operation
-------------------
A bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; a call takes
``tokens`` (1 by default) or waits.  Instead of a token count updated on every call, the
limiter keeps one number, the time at which the bucket will be full again (``full_at``; the
"theoretical arrival time" of the generic cell rate algorithm).  At ``now`` the bucket holds

    ``burst - rate * max(0, full_at - now)``

tokens, so a call for ``n`` tokens fits when ``now >= full_at - (burst - n) / rate`` and then
moves ``full_at`` to ``max(full_at, now) + n / rate``.  A call that does not fit changes nothing
and is told how long to wait: ``full_at - (burst - n) / rate - now`` seconds.

Keeping a time rather than a count means the state can never hold a negative or an over-full
bucket (the token count is derived and clamped to ``[0, burst]``), and a wait is a difference of
two times: waiting the returned delay lands at (or a rounding step from) the moment the call
fits, instead of being a tiny quotient that a large clock value would swallow.  Over any
interval of length ``d`` the limiter admits at most ``burst + rate * d`` tokens.

Time comes in as ``now`` (float seconds on any monotonic clock).  A ``now`` earlier than one
seen before is allowed and only makes the limiter stricter (it never refills backwards).
"""

from __future__ import annotations

import math

import attrs
import msgspec

from actors._errors import ConfigError, RateLimited

__all__ = ["RateLimiter", "RateLimiterSettings", "RateLimiterStatistics"]


class RateLimiterSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Rate and burst of a :class:`RateLimiter`.

    Attributes:
        rate: tokens added per second (> 0, finite), for example ``50 / 60`` for 50 requests a
            minute.
        burst: the bucket's size, the most tokens one burst may take (>= 1, finite), or
            ``None`` (default) for ``max(1, rate)``: one second's worth.

    A bad value raises :class:`~actors._errors.ConfigError` naming the field.
    """

    rate: float
    burst: float | None = None

    def __post_init__(self) -> None:
        _check("rate", self.rate, 0.0, strict=True)
        if self.burst is not None:
            _check("burst", self.burst, 1.0, strict=False)

    @property
    def effective_burst(self) -> float:
        """``burst``, or ``max(1, rate)`` when it is not set."""
        return float(max(1.0, self.rate) if self.burst is None else self.burst)


def _check(name: str, value: object, minimum: float, *, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, not {value!r}", path=name)
    if not math.isfinite(value) or value > 1e12:
        raise ConfigError(f"must be finite and <= 1e12, not {value!r}", path=name)
    if value < minimum or (strict and value == minimum):
        raise ConfigError(
            f"must be {'>' if strict else '>='} {minimum:g}, not {value!r}", path=name
        )


@attrs.frozen
class RateLimiterStatistics:
    """A snapshot of a :class:`RateLimiter`.

    Attributes:
        name: the limiter's name.
        rate, burst: the settings (``burst`` resolved).
        tokens: tokens in the bucket at ``now`` (or at the last call if no ``now`` was given),
            always within ``[0, burst]``.
        admitted: calls admitted, and ``admitted_tokens`` the tokens they took.
        rejected: calls told to wait.
    """

    name: str
    rate: float
    burst: float
    tokens: float
    admitted: int
    admitted_tokens: float
    rejected: int


class RateLimiter:
    """A token bucket for one service (see the module docstring).

    Args:
        settings: the :class:`RateLimiterSettings`.
        name: the service's name, used in :class:`~actors._errors.RateLimited`.

    The bucket starts full.

    Example::

        limiter = RateLimiter(RateLimiterSettings(rate=2, burst=4))
        limiter.try_acquire(0.0)       # 0.0: admitted (3 tokens left)
        limiter.try_acquire(0.0, 3)    # 0.0: admitted (bucket empty)
        limiter.try_acquire(0.0)       # 0.5: wait half a second, nothing taken
    """

    __slots__ = (
        "_admitted",
        "_admitted_tokens",
        "_burst",
        "_full_at",
        "_last_now",
        "_rate",
        "_rejected",
        "_settings",
        "_tau",
        "_unit",
        "name",
    )

    def __init__(self, settings: RateLimiterSettings, name: str = "") -> None:
        if not isinstance(settings, RateLimiterSettings):
            raise TypeError(f"settings must be RateLimiterSettings, not {settings!r}")
        self._settings = settings
        self.name = name
        self._rate = float(settings.rate)
        self._burst = settings.effective_burst
        self._tau = self._burst / self._rate  # seconds to refill the whole bucket
        self._unit = 1.0 / self._rate  # seconds to refill one token
        self._full_at = -math.inf
        self._last_now = -math.inf
        self._admitted = 0
        self._admitted_tokens = 0.0
        self._rejected = 0

    @property
    def settings(self) -> RateLimiterSettings:
        """The settings the limiter was built with."""
        return self._settings

    def _cost(self, tokens: float) -> float:
        if tokens == 1.0:
            return self._unit
        if isinstance(tokens, bool) or not isinstance(tokens, int | float):
            raise TypeError(f"tokens must be a number, not {tokens!r}")
        if not 0.0 < tokens <= self._burst:
            raise ValueError(
                f"tokens must be > 0 and <= burst ({self._burst:g}), not {tokens!r}: a larger "
                "request could never be admitted"
            )
        return tokens / self._rate

    def try_acquire(self, now: float, tokens: float = 1.0) -> float:
        """Take ``tokens`` at ``now`` if they are there.

        Returns ``0.0`` when admitted, else the seconds until the request would fit (> 0),
        taking nothing.  Raises ``ValueError`` when ``tokens`` is not in ``(0, burst]``.
        """
        cost = self._cost(tokens)
        full_at = self._full_at
        ready = full_at - (self._tau - cost)
        if now >= ready:
            self._full_at = (full_at if full_at > now else now) + cost
            self._last_now = now
            self._admitted += 1
            self._admitted_tokens += tokens
            return 0.0
        self._rejected += 1
        return ready - now

    def acquire_nowait(self, now: float, tokens: float = 1.0) -> None:
        """Like :meth:`try_acquire`, but raise :class:`~actors._errors.RateLimited` (with
        ``retry_after``) instead of returning a wait."""
        wait = self.try_acquire(now, tokens)
        if wait:
            raise RateLimited(service=self.name, retry_after=wait)

    def tokens(self, now: float) -> float:
        """Tokens in the bucket at ``now``, within ``[0, burst]``."""
        missing = (self._full_at - now) * self._rate if self._full_at > now else 0.0
        return min(self._burst, max(0.0, self._burst - missing))

    def statistics(self, now: float | None = None) -> RateLimiterStatistics:
        """A :class:`RateLimiterStatistics` snapshot (tokens as of ``now`` when given)."""
        at = self._last_now if now is None else now
        return RateLimiterStatistics(
            name=self.name,
            rate=self._rate,
            burst=self._burst,
            tokens=self._burst if at == -math.inf else self.tokens(at),
            admitted=self._admitted,
            admitted_tokens=self._admitted_tokens,
            rejected=self._rejected,
        )
