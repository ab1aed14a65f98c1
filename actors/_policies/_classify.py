"""Sort any exception into one of the ten error categories.

Theory of operation
-------------------
A provider call fails with whatever its client library raises.  The resilience machinery only
needs to know the failure's :class:`~actors._errors.ErrorCategory` (which says whether it is
transient and whether it counts against the breaker), the HTTP status when there is one, and how
long the provider asked us to wait (``Retry-After``).  :meth:`Classifier.classify` answers all
three in one :class:`Classified` value.

Rules are tried in a fixed order of *tiers*; the first tier that decides wins:

1. **Not an ``Exception``.**  ``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``,
   ``trio.Cancelled`` and ``asyncio.CancelledError`` are ``CANCELLATION``, always: no rule can
   make them retryable.
2. **Already an** :class:`~actors._errors.AuraError`: its own category is kept, with its
   ``retry_after`` and ``status_code`` when it carries them.
3. **User predicates**, in registration order; the first that returns true decides.
4. **HTTP status.**  An exception carrying a status (a ``status_code`` or ``status`` attribute,
   or ``response.status_code`` as ``httpx.HTTPStatusError`` and ``requests.HTTPError`` have)
   between 400 and 599 is decided by the status table: user overrides first
   (:meth:`Classifier.register_status`), then :data:`STATUS_CATEGORIES`.  A status outside
   400-599 decides nothing.
5. **Type rules**: one table of user and built-in rules.  The rule for the *nearest* class in
   the exception's MRO wins (so ``ConnectionError -> NETWORK`` beats ``Exception -> DEPENDENCY``
   for a ``ConnectionRefusedError``); for the same class a user rule replaces the built-in one.
   A type rule never overrides an HTTP status the exception carries: use a predicate for that.
6. Otherwise ``UNKNOWN``.

The built-in type rules (:data:`BUILTIN_TYPE_RULES`) map ``TimeoutError`` and
``trio.TooSlowError`` to ``TIMEOUT``; ``concurrent.futures.CancelledError`` to
``CANCELLATION``; ``OSError`` and ``ConnectionError`` (so ``socket.gaierror``
and ``ssl.SSLError``) to ``NETWORK``; ``PermissionError`` to ``AUTHENTICATION`` and missing files
to ``CONFIGURATION``; ``ValueError`` and ``TypeError`` to ``VALIDATION``.  httpx's exception types
get rules only when ``httpx`` is already imported: this module never imports httpx or trio, it
looks them up in ``sys.modules`` when it first meets an exception type it has not seen.

Type decisions are cached per exception type (a dict lookup), and the shared :class:`Classified`
value is returned when nothing instance-specific applies, so the common case allocates nothing.
The instance is inspected only for a status and a Retry-After, which costs a few attribute
probes.  Registering a rule clears the cache.

Retry-After is read, in this order, from a ``retry_after`` attribute (seconds, ``timedelta`` or a
header-style string), a ``retry-after-ms`` header, then a ``Retry-After`` header (delay-seconds
or an HTTP date), looking at ``exc.headers`` and ``exc.response.headers``.  An HTTP date is
turned into seconds with the injectable ``wall_clock`` (``time.time`` by default); a date in the
past means 0.  Negative, non-finite or malformed values are ignored, never raised.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Final, cast

import msgspec

from actors._errors import CATEGORY_INFO, AuraError, ErrorCategory, ProviderError

__all__ = [
    "BUILTIN_TYPE_RULES",
    "STATUS_CATEGORIES",
    "Classified",
    "Classifier",
    "parse_retry_after",
    "status_category",
]

_C = ErrorCategory

#: Built-in type rules that need no optional library.  See the module docstring for precedence.
BUILTIN_TYPE_RULES: Final[Mapping[type[BaseException], ErrorCategory]] = {
    TimeoutError: _C.TIMEOUT,
    OSError: _C.NETWORK,
    ConnectionError: _C.NETWORK,
    PermissionError: _C.AUTHENTICATION,
    FileNotFoundError: _C.CONFIGURATION,
    IsADirectoryError: _C.CONFIGURATION,
    NotADirectoryError: _C.CONFIGURATION,
    ValueError: _C.VALIDATION,
    TypeError: _C.VALIDATION,
}

# httpx exception names (looked up on the module when it is imported; missing names skipped,
# so older and newer httpx versions both work).  Nearest-in-MRO applies among them too.
_HTTPX_RULES: Final[tuple[tuple[str, ErrorCategory], ...]] = (
    ("HTTPError", _C.DEPENDENCY),
    ("TransportError", _C.NETWORK),
    ("TimeoutException", _C.TIMEOUT),
    ("NetworkError", _C.NETWORK),
    ("ProtocolError", _C.NETWORK),
    ("RemoteProtocolError", _C.NETWORK),
    ("LocalProtocolError", _C.VALIDATION),
    ("ProxyError", _C.NETWORK),
    ("UnsupportedProtocol", _C.CONFIGURATION),
    ("InvalidURL", _C.CONFIGURATION),
    ("DecodingError", _C.DEPENDENCY),
    ("TooManyRedirects", _C.DEPENDENCY),
    ("HTTPStatusError", _C.DEPENDENCY),
    ("StreamError", _C.INVALID_STATE),
)

#: Explicit HTTP status decisions; any other 4xx is ``VALIDATION`` and any 5xx ``DEPENDENCY``.
#: 404 is ``VALIDATION`` (the request names something that does not exist: sending it again
#: fails again, and the service is healthy); 409, 412 and 423 are ``INVALID_STATE`` (the
#: resource is not in a state that allows the operation); 402 is ``AUTHENTICATION`` (the account
#: is not allowed to make the call until billing changes).
STATUS_CATEGORIES: Final[Mapping[int, ErrorCategory]] = {
    400: _C.VALIDATION,
    401: _C.AUTHENTICATION,
    402: _C.AUTHENTICATION,
    403: _C.AUTHENTICATION,
    404: _C.VALIDATION,
    407: _C.AUTHENTICATION,
    408: _C.TIMEOUT,
    409: _C.INVALID_STATE,
    412: _C.INVALID_STATE,
    422: _C.VALIDATION,
    423: _C.INVALID_STATE,
    429: _C.RATE_LIMIT,
}


def status_category(status: int) -> ErrorCategory | None:
    """The built-in category of an HTTP status, or ``None`` if it is not an error (< 400, > 599).

    >>> status_category(429)
    <ErrorCategory.RATE_LIMIT: 'rate_limit'>
    >>> status_category(503)
    <ErrorCategory.DEPENDENCY: 'dependency'>
    """
    if 400 <= status <= 499:
        return STATUS_CATEGORIES.get(status, _C.VALIDATION)
    if 500 <= status <= 599:
        return _C.DEPENDENCY
    return None


class Classified(msgspec.Struct, frozen=True, gc=False):
    """The verdict on one failure.

    Attributes:
        category: the :class:`ErrorCategory`.
        retry_after: seconds the provider asked us to wait (``Retry-After``), or ``None``.
        status_code: the HTTP status the failure carried, or ``None``.

    The properties :attr:`transient`, :attr:`counts_against_breaker`, :attr:`message` and
    :attr:`suggested_action` come from :data:`actors._errors.CATEGORY_INFO`.
    """

    category: ErrorCategory
    retry_after: float | None = None
    status_code: int | None = None

    @property
    def transient(self) -> bool:
        """Whether a retry may succeed."""
        return CATEGORY_INFO[self.category].transient

    @property
    def counts_against_breaker(self) -> bool:
        """Whether the failure counts towards opening the service's circuit breaker."""
        return CATEGORY_INFO[self.category].counts_against_breaker

    @property
    def message(self) -> str:
        """What happened, for a person."""
        return CATEGORY_INFO[self.category].message

    @property
    def suggested_action(self) -> str:
        """What that person can do about it."""
        return CATEGORY_INFO[self.category].suggested_action

    def to_error(self, service: str = "", cause: BaseException | None = None) -> ProviderError:
        """Build the :class:`~actors._errors.ProviderError` callers see for this failure.

        The error carries this category, ``retry_after`` and ``status_code``, and chains
        ``cause`` (``__cause__``).  Its message names the service, the category's message and
        the cause, for example ``"openai: The service is rate limiting requests ... (HTTP 429,
        HTTPStatusError: Too Many Requests)"``.
        """
        who = service or "The call"
        details: list[str] = []
        if self.status_code is not None:
            details.append(f"HTTP {self.status_code}")
        if cause is not None:
            text = str(cause)
            details.append(f"{type(cause).__name__}: {text}" if text else type(cause).__name__)
        suffix = f" ({', '.join(details)})" if details else ""
        return ProviderError(
            f"{who}: {self.message}{suffix}",
            service=service,
            category=self.category,
            cause=cause,
            retry_after=self.retry_after,
            status_code=self.status_code,
        )


# One shared verdict per category, returned whenever nothing instance-specific applies.
_PLAIN: Final[dict[ErrorCategory, Classified]] = {c: Classified(c) for c in ErrorCategory}
_CANCELLED: Final = _PLAIN[_C.CANCELLATION]

# Instance attributes the classifier probes.  When a type defines none of them as a class
# attribute (property or slot), the instance ``__dict__`` is all there is to look at.
_PROBED: Final = ("status_code", "status", "response", "retry_after", "headers")


def _finite_seconds(value: float) -> float | None:
    if math.isfinite(value) and value >= 0.0:
        return float(value)
    return None


def parse_retry_after(
    value: object, *, wall_clock: Callable[[], float] = time.time, milliseconds: bool = False
) -> float | None:
    """Seconds to wait, from a ``Retry-After`` value; ``None`` if it is absent or invalid.

    Accepts a number of seconds (``int`` or ``float``, not ``bool``), a ``timedelta``, or a
    header string: delay-seconds (``"120"``, ``"1.5"``) or an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``), which is turned into seconds from ``wall_clock()``
    (a date in the past gives ``0.0``; a date without a zone is taken as UTC).  With
    ``milliseconds=True`` a number or numeric string is read as milliseconds (the
    ``retry-after-ms`` header some LLM providers send).  Negative, NaN, infinite and malformed
    values give ``None``; this function never raises for a bad value.

    >>> parse_retry_after("120")
    120.0
    >>> parse_retry_after("-3") is None
    True
    """
    scale = 0.001 if milliseconds else 1.0
    try:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float):
            return _finite_seconds(float(value) * scale)
        if isinstance(value, datetime.timedelta):
            return _finite_seconds(value.total_seconds())
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            return None
        text = value.strip()
        if not text or len(text) > 64:
            return None
        if text[0].isdigit() or text[0] in ".+-":
            return _finite_seconds(float(text) * scale)
        if milliseconds:
            return None
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        delta = when.timestamp() - wall_clock()
        return max(0.0, delta) if math.isfinite(delta) else None
    except (ValueError, TypeError, OverflowError, IndexError, AttributeError):
        return None


def _header(headers: object, name: str) -> object:
    """``headers[name]`` for dict-like, case-insensitive or not; ``None`` when absent."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    try:
        found = get(name)
        if found is None:
            found = get(name.lower())
        return found
    except Exception:
        return None


def _status_of(obj: object) -> int | None:
    for attr in ("status_code", "status"):
        value = getattr(obj, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
            return value
    return None


class _TypeEntry:
    """What the classifier knows about one exception type, computed once."""

    __slots__ = ("category", "plain", "probe_class", "special")

    def __init__(self, category: ErrorCategory, probe_class: bool, special: int) -> None:
        self.category = category
        self.plain = _PLAIN[category]
        # True when the type defines a probed name as a class attribute (property, slot).
        self.probe_class = probe_class
        # _NORMAL, _NOT_AN_EXCEPTION (a BaseException that is not an Exception: its category
        # is fixed, cancellation or unknown) or _AURA (keeps its category).
        self.special = special


_NORMAL: Final = 0
_NOT_AN_EXCEPTION: Final = 1
_AURA: Final = 2


class Classifier:
    """Maps exceptions to :class:`Classified` verdicts; rules are extensible.

    Args:
        wall_clock: the wall clock (seconds since the epoch) used to turn a Retry-After HTTP
            date into seconds.  Inject a fixed clock in tests.
        cache_size: how many exception types the per-type cache holds before it is cleared
            (bounds memory when classes are created dynamically).

    Precedence is described in the module docstring: cancellation, ``AuraError``, user
    predicates, HTTP status, type rules (nearest class in the MRO wins; a user rule replaces a
    built-in rule for the same class), ``UNKNOWN``.

    Example::

        classifier = Classifier()
        classifier.register(QuotaExceeded, ErrorCategory.RATE_LIMIT)
        classifier.register_predicate(lambda e: "overloaded" in str(e), ErrorCategory.DEPENDENCY)
        verdict = classifier.classify(exc)
        if verdict.transient: ...
    """

    __slots__ = ("_cache", "_cache_size", "_predicates", "_status", "_types", "_wall_clock")

    def __init__(
        self, *, wall_clock: Callable[[], float] = time.time, cache_size: int = 1024
    ) -> None:
        if not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int, not {cache_size!r}")
        self._wall_clock = wall_clock
        self._cache_size = cache_size
        self._cache: dict[type[BaseException], _TypeEntry] = {}
        self._types: dict[type[BaseException], ErrorCategory] = {}
        self._predicates: list[tuple[Callable[[BaseException], bool], ErrorCategory]] = []
        self._status: dict[int, ErrorCategory] = {}

    # ------------------------------------------------------------------ registration

    def register(
        self,
        exc_type: type[BaseException] | tuple[type[BaseException], ...],
        category: ErrorCategory,
    ) -> None:
        """Classify instances of ``exc_type`` (and subclasses) as ``category``.

        Competes with the built-in type rules by MRO distance (the nearest class wins); for
        the same class the user rule wins, and registering a class again replaces its rule.
        Raises ``TypeError`` for something that is not an exception class or a category, and
        ``ValueError`` for a class that is not an ``Exception`` subclass (cancellation and
        interrupts are never classified by rules) or is an ``AuraError`` (which carries its
        own category).
        """
        types = exc_type if isinstance(exc_type, tuple) else (exc_type,)
        _check_category(category)
        for tp in types:
            if not (isinstance(tp, type) and issubclass(tp, BaseException)):
                raise TypeError(f"register() needs exception classes, not {tp!r}")
            if not issubclass(tp, Exception):
                raise ValueError(
                    f"{tp.__name__} is not an Exception subclass; it is always classified as "
                    "cancellation"
                )
            if issubclass(tp, AuraError):
                raise ValueError(
                    f"{tp.__name__} is an AuraError: it keeps its own category (pass "
                    "category= when raising it instead)"
                )
        for tp in types:
            self._types[tp] = category
        self._cache.clear()

    def register_predicate(
        self, predicate: Callable[[BaseException], bool], category: ErrorCategory
    ) -> None:
        """Classify exceptions for which ``predicate(exc)`` is true as ``category``.

        Predicates run before the status and type rules, in registration order; the first
        that returns true decides.  A predicate that raises is treated as false (the
        classifier never fails because of a rule).  Predicates see only ``Exception``
        instances that are not ``AuraError``: never cancellations or interrupts.
        """
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, not {predicate!r}")
        _check_category(category)
        self._predicates.append((predicate, category))

    def register_status(self, status: int, category: ErrorCategory) -> None:
        """Classify failures carrying HTTP ``status`` (400-599) as ``category``."""
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"status must be an int between 400 and 599, not {status!r}")
        _check_category(category)
        self._status[status] = category

    # ------------------------------------------------------------------ classification

    def classify(self, exc: BaseException) -> Classified:
        """The :class:`Classified` verdict for ``exc``.  Never raises for any exception value."""
        try:
            entry = self._cache[exc.__class__]
        except KeyError:
            entry = self._entry_for(type(exc))
        if entry.special:
            if entry.special == _NOT_AN_EXCEPTION:
                if isinstance(exc, BaseExceptionGroup) and _contains_cancellation(exc):
                    return _CANCELLED
                return entry.plain
            return self._classify_aura(cast(AuraError, exc))
        if self._predicates:
            for predicate, category in self._predicates:
                try:
                    hit = predicate(exc)
                except Exception:
                    hit = False
                if hit:
                    return self._inspect(exc, category, category)
        if not entry.probe_class:
            found = exc.__dict__
            if not found or found.keys().isdisjoint(_PROBED):
                return entry.plain
        return self._inspect(exc, None, entry.category)

    __call__ = classify

    def _classify_aura(self, exc: AuraError) -> Classified:
        category = exc.category
        retry_after = parse_retry_after(
            getattr(exc, "retry_after", None), wall_clock=self._wall_clock
        )
        status = getattr(exc, "status_code", None)
        if not isinstance(status, int) or isinstance(status, bool):
            status = None
        if retry_after is None and status is None:
            return _PLAIN[category]
        return Classified(category, retry_after, status)

    def _inspect(
        self, exc: BaseException, fixed: ErrorCategory | None, fallback: ErrorCategory
    ) -> Classified:
        """Look at the instance: its status (unless a predicate fixed the category) and its
        Retry-After.  A property that raises while being probed is treated as absent."""
        try:
            status = _status_of(exc)
            if status is None:
                response = getattr(exc, "response", None)
                if response is not None:
                    status = _status_of(response)
            retry_after = self._retry_after(exc)
        except Exception:
            return _PLAIN[fixed or fallback]
        if fixed is not None:
            category = fixed
        elif status is not None:
            category = self._status.get(status) or status_category(status) or fallback
        else:
            category = fallback
        if retry_after is None and status is None:
            return _PLAIN[category]
        return Classified(category, retry_after, status)

    def _retry_after(self, exc: BaseException) -> float | None:
        clock = self._wall_clock
        found = parse_retry_after(getattr(exc, "retry_after", None), wall_clock=clock)
        if found is not None:
            return found
        response = getattr(exc, "response", None)
        for holder in (exc, response):
            headers = getattr(holder, "headers", None) if holder is not None else None
            if headers is None:
                continue
            found = parse_retry_after(
                _header(headers, "Retry-After-Ms"), wall_clock=clock, milliseconds=True
            )
            if found is None:
                found = parse_retry_after(_header(headers, "Retry-After"), wall_clock=clock)
            if found is not None:
                return found
        return None

    # ------------------------------------------------------------------ type table

    def type_rules(self) -> dict[type[BaseException], ErrorCategory]:
        """The effective type table: built-in rules (with trio's and httpx's when those are
        imported) overlaid with the user's.  A fresh dict; changing it changes nothing."""
        rules: dict[type[BaseException], ErrorCategory] = dict(BUILTIN_TYPE_RULES)
        trio = sys.modules.get("trio")
        too_slow = getattr(trio, "TooSlowError", None)
        if isinstance(too_slow, type) and issubclass(too_slow, Exception):
            rules[too_slow] = _C.TIMEOUT
        futures = sys.modules.get("concurrent.futures")
        cancelled = getattr(futures, "CancelledError", None)
        if isinstance(cancelled, type) and issubclass(cancelled, Exception):
            rules[cancelled] = _C.CANCELLATION
        httpx = sys.modules.get("httpx")
        if httpx is not None:
            for name, category in _HTTPX_RULES:
                tp = getattr(httpx, name, None)
                if isinstance(tp, type) and issubclass(tp, Exception):
                    rules[tp] = category
        rules.update(self._types)
        return rules

    def _entry_for(self, tp: type[BaseException]) -> _TypeEntry:
        rules = self.type_rules()
        category = _C.UNKNOWN
        for klass in tp.__mro__:
            found = rules.get(klass)
            if found is not None:
                category = found
                break
        probe_class = any(hasattr(tp, name) for name in _PROBED)
        if not issubclass(tp, Exception):
            # Cancellation and interpreter exits are CANCELLATION; any other BaseException
            # subclass is a bug or an oddity of the callee: UNKNOWN (never retried either).
            fixed = _C.CANCELLATION if _is_cancellation_type(tp) else _C.UNKNOWN
            entry = _TypeEntry(fixed, probe_class, _NOT_AN_EXCEPTION)
        elif issubclass(tp, AuraError):
            entry = _TypeEntry(category, probe_class, _AURA)
        else:
            entry = _TypeEntry(category, probe_class, _NORMAL)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[tp] = entry
        return entry


_CANCELLATION_NAMES: Final = frozenset(
    {
        "trio.Cancelled",
        "asyncio.exceptions.CancelledError",
        "anyio._backends._asyncio.CancelledError",
        "builtins.GeneratorExit",
        "builtins.KeyboardInterrupt",
        "builtins.SystemExit",
    }
)


def _is_cancellation_type(tp: type[BaseException]) -> bool:
    for klass in tp.__mro__:
        if f"{klass.__module__}.{klass.__qualname__}" in _CANCELLATION_NAMES:
            return True
    return False


def _contains_cancellation(group: BaseExceptionGroup[BaseException]) -> bool:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            if _contains_cancellation(exc):
                return True
        elif _is_cancellation_type(type(exc)):
            return True
    return False


def _check_category(category: object) -> None:
    if not isinstance(category, ErrorCategory):
        raise TypeError(f"category must be an ErrorCategory, not {category!r}")
