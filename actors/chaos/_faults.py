"""Injected exceptions: faults shaped like what real clients raise, and the mark on them.

:func:`fault` builds, per error category, the exception a real client would raise
(``ConnectionResetError`` for ``network``, an HTTP status error with ``Retry-After`` for
``rate_limit``, ...), so the classifier sorts injected failures as it sorts real ones; every
injected exception carries a mark that :func:`is_injected` finds, through causes too.
"""

from __future__ import annotations

import concurrent.futures
import errno
from typing import Final

from actors._errors import ErrorCategory
from actors._policies._config._chaos import _category

#: The attribute that marks an exception as injected (see :func:`is_injected`).
_MARK: Final = "_aura_chaos_injected"


class InjectedHTTPError(Exception):
    """An HTTP error status, shaped as HTTP clients raise it (``status_code``, ``headers``).

    The classifier reads the status (429 is ``rate_limit``, 5xx ``dependency``, other 4xx
    mostly ``validation``) and the ``Retry-After`` header, as for ``httpx.HTTPStatusError``.

    Attributes:
        status_code: the HTTP status.
        headers: the response headers (``{"Retry-After": "2"}`` when ``retry_after`` is given).
    """

    def __init__(
        self, status_code: int, reason: str = "", *, retry_after: float | None = None
    ) -> None:
        text = f"HTTP {status_code}" + (f" {reason}" if reason else "")
        super().__init__(f"{text} (injected by chaos)")
        self.status_code = status_code
        self.headers: dict[str, str] = {}
        if retry_after is not None:
            self.headers["Retry-After"] = f"{retry_after:g}"


class InjectedCrash(RuntimeError):
    """The exception a :class:`CrashInjector` raises: in an actor, a crash on purpose."""


#: What :func:`fault` builds for each category: (status, reason) for HTTP-like faults.
_HTTP: Final[dict[ErrorCategory, tuple[int, str]]] = {
    ErrorCategory.RATE_LIMIT: (429, "Too Many Requests"),
    ErrorCategory.DEPENDENCY: (503, "Service Unavailable"),
    ErrorCategory.VALIDATION: (400, "Bad Request"),
    ErrorCategory.AUTHENTICATION: (401, "Unauthorized"),
    ErrorCategory.INVALID_STATE: (409, "Conflict"),
}


def fault(category: ErrorCategory | str, *, retry_after: float | None = None) -> BaseException:
    """A fresh, realistic exception of ``category``, marked as injected.

    | category | exception |
    | --- | --- |
    | ``network`` | ``ConnectionResetError(ECONNRESET, "Connection reset by peer")`` |
    | ``timeout`` | ``TimeoutError("timed out")`` |
    | ``rate_limit`` | :class:`InjectedHTTPError` 429 with ``Retry-After: retry_after`` |
    | ``dependency`` | :class:`InjectedHTTPError` 503 (``Retry-After`` when given) |
    | ``validation`` | :class:`InjectedHTTPError` 400 |
    | ``authentication`` | :class:`InjectedHTTPError` 401 |
    | ``invalid_state`` | :class:`InjectedHTTPError` 409 |
    | ``configuration`` | ``FileNotFoundError(ENOENT, ..., "credentials.json")`` |
    | ``cancellation`` | ``concurrent.futures.CancelledError`` (a remote cancellation) |
    | ``unknown`` | ``RuntimeError`` |

    The built-in classifier sorts each one back into ``category``.

    Raises:
        ConfigError: an unknown category name.

    Example::

        with pytest.raises(ConnectionResetError):
            raise chaos.fault("network")
    """
    kind = _category(category)
    exc: BaseException
    if kind is ErrorCategory.NETWORK:
        exc = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected by chaos)")
    elif kind is ErrorCategory.TIMEOUT:
        exc = TimeoutError("timed out (injected by chaos)")
    elif kind in _HTTP:
        status, reason = _HTTP[kind]
        if kind is ErrorCategory.RATE_LIMIT and retry_after is None:
            retry_after = 1.0
        wait = retry_after if kind in (ErrorCategory.RATE_LIMIT, ErrorCategory.DEPENDENCY) else None
        exc = InjectedHTTPError(status, reason, retry_after=wait)
    elif kind is ErrorCategory.CONFIGURATION:
        exc = FileNotFoundError(
            errno.ENOENT, "No such file or directory (injected by chaos)", "credentials.json"
        )
    elif kind is ErrorCategory.CANCELLATION:
        exc = concurrent.futures.CancelledError("the request was cancelled (injected by chaos)")
    else:
        exc = RuntimeError("unexpected failure (injected by chaos)")
    setattr(exc, _MARK, True)
    return exc


def is_injected(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was caused by, was injected by chaos.

    Follows ``__cause__``, ``cause`` and ``last_error`` (so a ``RetriesExhausted`` whose last
    attempt failed with an injected fault is injected too), up to 16 links.
    """
    seen = 0
    error: object = exc
    while isinstance(error, BaseException) and seen < 16:
        if getattr(error, _MARK, False):
            return True
        nxt = error.__cause__
        if nxt is None:
            nxt = getattr(error, "last_error", None) or getattr(error, "cause", None)
        error = nxt
        seen += 1
    return False
