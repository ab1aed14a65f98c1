"""The live dashboard's page: ``GET /dashboard`` and its script and style sheet, served from the
package (``supervisors/_operator/_admin/dashboard/``): no CDN, no external asset, nothing
fetched from anywhere but this API.

The page holds no data: it is public, like ``/api/resilience/health``.  Its script reads
everything from the API with the browser's ``fetch``, sending ``Authorization: Bearer`` with
the token the operator typed (kept in the tab's ``sessionStorage``, never in a URL): the event
stream (``GET /api/resilience/stream``) needs the read token when one is configured, and the
actions (reset, isolate, acknowledge) need the write token.  Without a token the page is
read-only.

Every answer carries a strict Content-Security-Policy (scripts, styles and connections from
this origin only; no inline script; no framing), ``nosniff`` and ``no-referrer``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Final, Literal

from supervisors._operator._admin._requests import ApiError, _response

if TYPE_CHECKING:
    from starlette.requests import Request

    from supervisors._operator._admin._requests import AdminBackend

__all__ = ["ASSETS", "DASHBOARD_ROUTES", "SECURITY_HEADERS", "asset"]

#: The files of the page, by the name they are served under, with their content type.
ASSETS: Final = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

#: Headers on every answer of the page's routes.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of one of :data:`ASSETS` (read from the package once)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files(__package__).joinpath("dashboard", name).read_bytes()


async def _page(request: Request, backend: AdminBackend) -> object:
    return _response(asset("index.html"), ASSETS["index.html"], headers=SECURITY_HEADERS)


async def _asset(request: Request, backend: AdminBackend) -> object:
    name = request.path_params["asset"]
    if name not in ASSETS or name == "index.html":
        raise ApiError(404, "not_found", "no such file of the dashboard")
    return _response(asset(name), ASSETS[name], headers=SECURITY_HEADERS)


DASHBOARD_ROUTES: Final[
    tuple[
        tuple[str, str, Callable[[Request, AdminBackend], Awaitable[object]], Literal["public"]],
        ...,
    ]
] = (
    ("GET", "/dashboard", _page, "public"),
    ("GET", "/dashboard/{asset}", _asset, "public"),
)
