"""Error classification: built-in rules, HTTP statuses, httpx types, user rules and their
precedence, Retry-After parsing, and the error built from a verdict."""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import datetime
import email.message
import io
import json
import socket
import ssl
import sys
import urllib.error
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors._errors import (
    CATEGORY_INFO,
    BulkheadFull,
    CircuitOpen,
    ErrorCategory,
    ProviderError,
    RateLimited,
)
from actors._policies._classify import (
    STATUS_CATEGORIES,
    Classified,
    Classifier,
    parse_retry_after,
    status_category,
)
from tests.strategies_policies import categories, http_dates, invalid_retry_after

C = ErrorCategory
NOW = 1_700_000_000.0


def classifier() -> Classifier:
    return Classifier(wall_clock=lambda: NOW)


class StatusError(Exception):
    """An exception carrying an HTTP status the way many client libraries do."""

    def __init__(self, status_code: object = None, **attrs: Any) -> None:
        super().__init__(f"status {status_code}")
        if status_code is not None:
            self.status_code = status_code
        for name, value in attrs.items():
            setattr(self, name, value)


class Headers:
    """A case-insensitive header mapping like httpx.Headers."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): v for k, v in items.items()}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._items.get(name.lower(), default)


class Response:
    def __init__(self, status_code: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = Headers(headers or {})


# ------------------------------------------------------------------------------ built-ins


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (TimeoutError(), C.TIMEOUT),
        (trio.TooSlowError(), C.TIMEOUT),
        (ConnectionRefusedError(), C.NETWORK),
        (ConnectionResetError(), C.NETWORK),
        (BrokenPipeError(), C.NETWORK),
        (socket.gaierror(-2, "Name or service not known"), C.NETWORK),
        (ssl.SSLError(), C.NETWORK),
        (OSError(), C.NETWORK),
        (PermissionError(), C.AUTHENTICATION),
        (FileNotFoundError(), C.CONFIGURATION),
        (ValueError(), C.VALIDATION),
        (TypeError(), C.VALIDATION),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), C.VALIDATION),
        (json.JSONDecodeError("bad", "x", 0), C.VALIDATION),
        (concurrent.futures.CancelledError(), C.CANCELLATION),
        (RuntimeError(), C.UNKNOWN),
        (Exception(), C.UNKNOWN),
        (ExceptionGroup("g", [ValueError()]), C.UNKNOWN),
    ],
)
def test_builtin_type_rules(exc: BaseException, category: ErrorCategory) -> None:
    """Each built-in rule gives its documented category."""
    verdict = classifier().classify(exc)
    assert verdict.category is category
    assert (verdict.retry_after, verdict.status_code) == (None, None)


@pytest.mark.parametrize(
    "exc",
    [
        KeyboardInterrupt(),
        SystemExit(1),
        GeneratorExit(),
        asyncio.CancelledError(),
        trio.Cancelled._create(),
        BaseExceptionGroup("g", [KeyboardInterrupt()]),
    ],
)
def test_cancellation_and_interrupts_are_never_retryable(exc: BaseException) -> None:
    """Cancellations and interpreter exits are CANCELLATION, whatever the user registered."""
    c = classifier()
    c.register_predicate(lambda e: True, C.TIMEOUT)
    verdict = c.classify(exc)
    assert verdict.category is C.CANCELLATION
    assert not verdict.transient
    assert not verdict.counts_against_breaker


def test_other_base_exceptions_are_unknown_and_not_retried() -> None:
    """A BaseException subclass that is not a cancellation is UNKNOWN: not retried."""

    class Oddity(BaseException):
        pass

    verdict = classifier().classify(Oddity("odd"))
    assert verdict.category is C.UNKNOWN
    assert not verdict.transient
    group = BaseExceptionGroup("g", [Oddity("odd")])
    assert classifier().classify(group).category is C.UNKNOWN


def test_rules_for_non_exception_classes_are_refused() -> None:
    """register() refuses non-Exception classes, AuraErrors, non-classes and bad statuses."""
    c = classifier()
    with pytest.raises(ValueError, match="cancellation"):
        c.register(KeyboardInterrupt, C.TIMEOUT)
    with pytest.raises(ValueError, match="AuraError"):
        c.register(CircuitOpen, C.TIMEOUT)
    with pytest.raises(TypeError):
        c.register("ValueError", C.TIMEOUT)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c.register(ValueError, "timeout")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        c.register_predicate("not callable", C.TIMEOUT)  # type: ignore[arg-type]
    for bad in (200, 600, True, "429"):
        with pytest.raises(ValueError, match="status"):
            c.register_status(bad, C.TIMEOUT)  # type: ignore[arg-type]


def test_aura_errors_keep_their_category_and_retry_after() -> None:
    """An AuraError is not re-classified; retry_after and status_code are carried over."""
    c = classifier()
    assert c.classify(CircuitOpen(retry_after=12.5)) == Classified(C.DEPENDENCY, 12.5)
    assert c.classify(RateLimited(retry_after=0.25)).retry_after == 0.25
    assert c.classify(BulkheadFull(max_concurrent=1, max_queued=0)).category is C.RATE_LIMIT
    err = ProviderError("x", category=C.AUTHENTICATION, status_code=401)
    c.register_predicate(lambda e: True, C.TIMEOUT)  # even predicates do not re-classify
    assert c.classify(err) == Classified(C.AUTHENTICATION, None, 401)


# ------------------------------------------------------------------------------ HTTP status


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (400, C.VALIDATION),
        (401, C.AUTHENTICATION),
        (403, C.AUTHENTICATION),
        (404, C.VALIDATION),
        (408, C.TIMEOUT),
        (409, C.INVALID_STATE),
        (418, C.VALIDATION),
        (422, C.VALIDATION),
        (429, C.RATE_LIMIT),
        (500, C.DEPENDENCY),
        (502, C.DEPENDENCY),
        (503, C.DEPENDENCY),
        (504, C.DEPENDENCY),
        (599, C.DEPENDENCY),
    ],
)
def test_status_codes(status: int, category: ErrorCategory) -> None:
    """A status on the exception, as status_code, status or response.status_code, decides."""
    c = classifier()
    assert c.classify(StatusError(status)) == Classified(category, None, status)
    assert c.classify(StatusError(None, status=status)).category is category
    assert c.classify(StatusError(None, response=Response(status))).category is category
    assert status_category(status) is category


@given(st.integers(-1000, 2000))
def test_status_category_covers_exactly_the_error_range(status: int) -> None:
    """status_category decides 400-599 and nothing else; explicit entries win."""
    found = status_category(status)
    if 400 <= status <= 599:
        assert found is STATUS_CATEGORIES.get(status, found)
        assert found is not None
    else:
        assert found is None


@pytest.mark.parametrize("status", [200, 302, 399, 600, True, "503", 503.0, None])
def test_non_error_or_malformed_status_falls_through_to_type_rules(status: object) -> None:
    """Statuses outside 400-599, bools, strings and floats are not statuses."""

    class Boom(ConnectionError):
        pass

    exc = Boom()
    exc.status_code = status  # type: ignore[attr-defined]
    verdict = classifier().classify(exc)
    assert verdict.category is C.NETWORK
    assert verdict.status_code is None


def test_status_beats_type_rules_and_user_status_beats_builtin() -> None:
    """An OSError with 401 is AUTHENTICATION; register_status overrides the table."""
    c = classifier()

    class HttpOSError(OSError):
        status_code = 401

    assert c.classify(HttpOSError()).category is C.AUTHENTICATION
    c.register_status(401, C.CONFIGURATION)
    assert c.classify(HttpOSError()).category is C.CONFIGURATION
    c.register(HttpOSError, C.NETWORK)  # a type rule never overrides a status
    assert c.classify(HttpOSError()).category is C.CONFIGURATION


def test_urllib_http_error_with_retry_after_header() -> None:
    """urllib's HTTPError (an OSError) is read by status and headers."""
    headers = email.message.Message()
    headers["Retry-After"] = "7"
    exc = urllib.error.HTTPError("http://x", 429, "Too Many Requests", headers, io.BytesIO())
    assert classifier().classify(exc) == Classified(C.RATE_LIMIT, 7.0, 429)
    exc.close()


# ------------------------------------------------------------------------------ httpx


#: The request httpx attaches to its request errors (the errors are built as httpx builds them).
HTTPX_REQUEST = httpx.Request("POST", "https://api.example.com/v1/complete")


def httpx_error(name: str) -> Exception:
    """An instance of httpx's exception class ``name``."""
    tp = getattr(httpx, name)
    if issubclass(tp, httpx.RequestError):
        error: Exception = tp("boom", request=HTTPX_REQUEST)
    elif name == "StreamClosed":  # a fixed message: takes no argument
        error = tp()
    else:
        error = tp("boom")
    return error


def httpx_status_error(status: int, headers: dict[str, str]) -> httpx.HTTPStatusError:
    """The error ``Response.raise_for_status()`` raises for ``status``, as a caller gets it."""
    response = httpx.Response(status, headers=headers, request=HTTPX_REQUEST)
    with pytest.raises(httpx.HTTPStatusError) as info:
        response.raise_for_status()
    return info.value


@pytest.mark.parametrize(
    ("name", "category"),
    [
        ("ConnectTimeout", C.TIMEOUT),
        ("ReadTimeout", C.TIMEOUT),
        ("WriteTimeout", C.TIMEOUT),
        ("PoolTimeout", C.TIMEOUT),
        ("ConnectError", C.NETWORK),
        ("ReadError", C.NETWORK),
        ("WriteError", C.NETWORK),
        ("CloseError", C.NETWORK),
        ("RemoteProtocolError", C.NETWORK),
        ("LocalProtocolError", C.VALIDATION),
        ("ProxyError", C.NETWORK),
        ("UnsupportedProtocol", C.CONFIGURATION),
        ("DecodingError", C.DEPENDENCY),
        ("TooManyRedirects", C.DEPENDENCY),
        ("InvalidURL", C.CONFIGURATION),
        ("StreamError", C.INVALID_STATE),
        ("StreamClosed", C.INVALID_STATE),
        ("HTTPError", C.DEPENDENCY),
    ],
)
def test_httpx_types_when_httpx_is_imported(name: str, category: ErrorCategory) -> None:
    """httpx's exception types (the real ones) get their rules once httpx is in sys.modules."""
    assert "httpx" in sys.modules
    assert classifier().classify(httpx_error(name)).category is category


def test_httpx_status_error_uses_the_response() -> None:
    """HTTPStatusError is decided by response.status_code and its Retry-After header."""
    c = classifier()
    limited = httpx_status_error(429, {"Retry-After": "30"})
    assert c.classify(limited) == Classified(C.RATE_LIMIT, 30.0, 429)
    unavailable = httpx_status_error(503, {"Retry-After-Ms": "1500"})
    assert c.classify(unavailable) == Classified(C.DEPENDENCY, 1.5, 503)
    missing = httpx_status_error(404, {})
    assert c.classify(missing) == Classified(C.VALIDATION, None, 404)


def test_an_httpx_type_met_before_httpx_existed_is_not_a_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The type table is built per type on first sight, so importing httpx later works."""
    monkeypatch.delitem(sys.modules, "httpx")
    c = classifier()
    assert c.classify(RuntimeError()).category is C.UNKNOWN
    monkeypatch.setitem(sys.modules, "httpx", httpx)  # httpx imported after the classifier
    assert c.classify(httpx_error("ConnectError")).category is C.NETWORK


POLICIES = Path(__file__).parent.parent / "actors" / "_policies"


@pytest.mark.parametrize(
    "module", sorted(str(p.relative_to(POLICIES)) for p in POLICIES.rglob("*.py"))
)
def test_policy_modules_import_neither_trio_nor_httpx(module: str) -> None:
    """The sans-I/O modules have no trio or httpx import (they only peek at sys.modules)."""
    source = (POLICIES / module).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "httpx", "anyio", "asyncio"}


# ------------------------------------------------------------------------------ user rules


def test_nearest_class_in_the_mro_wins_across_user_and_builtin_rules() -> None:
    """A user rule for a base class does not override a built-in rule for a nearer class."""
    c = classifier()
    c.register(Exception, C.DEPENDENCY)
    c.register(OSError, C.INVALID_STATE)
    assert c.classify(RuntimeError()).category is C.DEPENDENCY
    assert c.classify(OSError()).category is C.INVALID_STATE
    assert c.classify(ConnectionRefusedError()).category is C.NETWORK
    assert c.classify(TimeoutError()).category is C.TIMEOUT
    c.register(ConnectionError, C.RATE_LIMIT)  # same class: the user rule replaces the built-in
    assert c.classify(ConnectionRefusedError()).category is C.RATE_LIMIT


def test_registering_a_tuple_and_re_registering_replaces() -> None:
    """register() takes a tuple of classes; the later registration of a class wins."""

    class A(Exception):
        pass

    class B(A):
        pass

    c = classifier()
    c.register((A, KeyError), C.DEPENDENCY)
    assert c.classify(B()).category is C.DEPENDENCY
    assert c.classify(KeyError()).category is C.DEPENDENCY
    c.register(A, C.NETWORK)
    assert c.classify(B()).category is C.NETWORK


def test_predicates_come_first_in_registration_order() -> None:
    """The first predicate that matches decides, before statuses and types."""
    c = classifier()
    c.register_predicate(lambda e: "quota" in str(e), C.RATE_LIMIT)
    c.register_predicate(lambda e: "quota" in str(e) or "busy" in str(e), C.DEPENDENCY)
    assert c.classify(ValueError("quota exceeded")).category is C.RATE_LIMIT
    assert c.classify(ValueError("busy")).category is C.DEPENDENCY
    assert c.classify(StatusError(401, retry_after=3)) == Classified(C.AUTHENTICATION, 3.0, 401)
    boom = StatusError(400)
    boom.args = ("quota",)
    assert c.classify(boom) == Classified(C.RATE_LIMIT, None, 400)


def test_a_predicate_that_raises_counts_as_false() -> None:
    """A broken predicate never breaks classification."""
    c = classifier()

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    c.register_predicate(broken, C.TIMEOUT)
    assert c.classify(ValueError()).category is C.VALIDATION


def test_the_type_cache_returns_shared_verdicts_and_is_cleared_by_register() -> None:
    """Plain verdicts are shared objects; a new rule is seen at once."""

    class Flaky(Exception):
        pass

    c = classifier()
    first = c.classify(Flaky())
    assert first.category is C.UNKNOWN
    assert c.classify(Flaky()) is first
    c.register(Flaky, C.DEPENDENCY)
    assert c.classify(Flaky()).category is C.DEPENDENCY


def test_a_tiny_cache_stays_correct() -> None:
    """With cache_size=1 classification is still right (the cache is only a speed-up)."""
    c = Classifier(cache_size=1)
    for _ in range(3):
        assert c.classify(ValueError()).category is C.VALIDATION
        assert c.classify(TimeoutError()).category is C.TIMEOUT
    with pytest.raises(ValueError, match="cache_size"):
        Classifier(cache_size=0)


def test_properties_that_raise_are_treated_as_absent() -> None:
    """An exception whose probed attributes raise is still classified by its type."""

    class Nasty(ConnectionError):
        @property
        def status_code(self) -> int:
            raise RuntimeError("no")

        @property
        def headers(self) -> dict[str, str]:
            raise KeyError("no")

    assert classifier().classify(Nasty()) == Classified(C.NETWORK)


# Precedence, as a property: a small specification of the tiers, checked on random setups.
HIERARCHY: list[type[Exception]] = [
    Exception,
    OSError,
    ConnectionError,
    ConnectionRefusedError,
    TimeoutError,
    ValueError,
    RuntimeError,
]


@given(
    exc_type=st.sampled_from(HIERARCHY),
    status=st.none() | st.sampled_from([200, 401, 404, 429, 503]),
    user_types=st.dictionaries(st.sampled_from(HIERARCHY), categories, max_size=3),
    predicate=st.none() | categories,
    status_override=st.none() | st.tuples(st.sampled_from([401, 429, 503]), categories),
)
def test_precedence_follows_the_documented_tiers(
    exc_type: type[Exception],
    status: int | None,
    user_types: dict[type[Exception], ErrorCategory],
    predicate: ErrorCategory | None,
    status_override: tuple[int, ErrorCategory] | None,
) -> None:
    """predicate > HTTP status (user table > built-in) > nearest type rule > UNKNOWN."""
    c = classifier()
    for tp, category in user_types.items():
        c.register(tp, category)
    if predicate is not None:
        c.register_predicate(lambda e: True, predicate)
    if status_override is not None:
        c.register_status(*status_override)
    exc = type("Drawn", (exc_type,), {})()
    if status is not None:
        exc.status_code = status

    rules: dict[type[Exception], ErrorCategory] = {
        TimeoutError: C.TIMEOUT,
        OSError: C.NETWORK,
        ConnectionError: C.NETWORK,
        ValueError: C.VALIDATION,
    }
    rules.update(user_types)
    by_type = next((rules[k] for k in type(exc).__mro__ if k in rules), C.UNKNOWN)
    is_error_status = status is not None and 400 <= status <= 599
    if predicate is not None:
        expected = predicate
    elif is_error_status and status_override is not None and status_override[0] == status:
        expected = status_override[1]
    elif is_error_status:
        assert status is not None
        expected = status_category(status) or C.UNKNOWN
    else:
        expected = by_type
    verdict = c.classify(exc)
    assert verdict.category is expected
    assert verdict.status_code == (status if is_error_status else None)


# ------------------------------------------------------------------------------ Retry-After


@given(st.integers(0, 10**9), st.sampled_from(["", " ", "\t"]))
def test_delay_seconds_parse_exactly(seconds: int, pad: str) -> None:
    """'120' means 120 s, with or without surrounding whitespace."""
    assert parse_retry_after(f"{pad}{seconds}{pad}") == float(seconds)
    assert parse_retry_after(str(seconds).encode()) == float(seconds)


@given(st.floats(0, 1e9, allow_nan=False))
def test_numbers_and_timedeltas_are_seconds(seconds: float) -> None:
    """Numbers are seconds; timedeltas are converted; milliseconds divide by 1000."""
    assert parse_retry_after(seconds) == seconds
    assert parse_retry_after(datetime.timedelta(seconds=seconds)) == pytest.approx(
        seconds, abs=1e-6
    )
    assert parse_retry_after(seconds, milliseconds=True) == pytest.approx(seconds / 1000)


@given(http_dates(now=NOW))
def test_http_dates_are_seconds_from_the_wall_clock(date_and_delay: tuple[str, float]) -> None:
    """An HTTP date gives its distance from wall_clock(); a past date gives 0."""
    text, delay = date_and_delay
    assert parse_retry_after(text, wall_clock=lambda: NOW) == pytest.approx(delay, abs=1e-6)


def test_a_date_without_zone_is_utc_and_milliseconds_refuse_dates() -> None:
    """'-0000' dates are UTC; a date in a retry-after-ms header is ignored."""
    text = "Tue, 14 Nov 2023 22:13:40 -0000"  # NOW + 20 s
    assert parse_retry_after(text, wall_clock=lambda: NOW) == pytest.approx(20.0)
    assert parse_retry_after(text, wall_clock=lambda: NOW, milliseconds=True) is None


@given(invalid_retry_after)
def test_invalid_values_are_ignored(text: str) -> None:
    """Negative, non-finite and malformed values give None."""
    assert parse_retry_after(text, wall_clock=lambda: NOW) is None


@given(
    st.one_of(
        st.text(max_size=80),
        st.binary(max_size=40),
        st.none(),
        st.booleans(),
        st.floats(),
        st.integers(),
        st.lists(st.integers(), max_size=3),
    )
)
def test_parsing_never_raises(value: object) -> None:
    """Anything at all gives a finite non-negative float or None, never an exception."""
    found = parse_retry_after(value, wall_clock=lambda: NOW)
    assert found is None or (found >= 0.0 and found != float("inf"))


def test_huge_digit_strings_are_ignored_not_raised() -> None:
    """A value too long to be a delay is ignored."""
    assert parse_retry_after("9" * 5000) is None
    assert parse_retry_after(-1) is None
    assert parse_retry_after(True) is None


def test_retry_after_sources_in_order() -> None:
    """Attribute, then retry-after-ms, then Retry-After; the exception's headers first."""
    c = classifier()
    both = {"Retry-After": "9", "retry-after-ms": "250"}
    assert c.classify(StatusError(429, retry_after=2, headers=both)).retry_after == 2.0
    assert c.classify(StatusError(429, headers=both)).retry_after == 0.25
    assert c.classify(StatusError(429, headers={"Retry-After": "9"})).retry_after == 9.0
    via_response = StatusError(None, response=Response(503, {"Retry-After": "4"}))
    assert c.classify(via_response) == Classified(C.DEPENDENCY, 4.0, 503)
    junk = StatusError(429, retry_after="soon", headers={"Retry-After": "-5"})
    assert c.classify(junk) == Classified(C.RATE_LIMIT, None, 429)


def test_retry_after_is_carried_for_any_category() -> None:
    """A 503 with Retry-After, or a plain exception with retry_after, keeps the delay."""
    c = classifier()
    exc = ConnectionError("down")
    exc.retry_after = 5  # type: ignore[attr-defined]
    assert c.classify(exc) == Classified(C.NETWORK, 5.0)


# ------------------------------------------------------------------------------ verdicts


@given(categories)
def test_verdict_properties_come_from_category_info(category: ErrorCategory) -> None:
    """transient, counts_against_breaker, message and suggested_action mirror CATEGORY_INFO."""
    verdict = Classified(category)
    info = CATEGORY_INFO[category]
    assert verdict.transient is info.transient
    assert verdict.counts_against_breaker is info.counts_against_breaker
    assert (verdict.message, verdict.suggested_action) == (info.message, info.suggested_action)


def test_to_error_builds_a_chained_provider_error() -> None:
    """to_error carries category, retry_after, status and the cause (also __cause__)."""
    cause = StatusError(429)
    error = Classified(C.RATE_LIMIT, 30.0, 429).to_error("openai", cause)
    assert isinstance(error, ProviderError)
    assert (error.category, error.retry_after, error.status_code) == (C.RATE_LIMIT, 30.0, 429)
    assert error.cause is cause
    assert error.__cause__ is cause
    assert error.service == "openai"
    assert str(error).startswith("openai: ")
    assert "HTTP 429" in str(error)
    assert "StatusError" in str(error)
    assert error.transient
    plain = Classified(C.UNKNOWN).to_error()
    assert str(plain).startswith("The call: ")
    assert plain.cause is None
