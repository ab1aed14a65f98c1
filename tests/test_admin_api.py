"""The admin HTTP API over real HTTP on loopback: every endpoint, auth, bad input, shutdown."""

from __future__ import annotations

import datetime
import logging
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from actors import (
    Actor,
    Call,
    ErrorCategory,
    MemoryJournal,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
)
from actors._monitor._actor import MonitorActor
from actors._policies._config._monitoring import MonitorSettings
from actors._policies._ratelimit import RateLimiterSettings
from actors._protocol import BreakerReport, CallReport
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition, SagaStep, SagaStepMessage
from actors._saga._messages import StartSaga
from supervisors import ChildSpec, Supervisor, SupervisorSpec, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress, admin_spec
from supervisors._operator._admin._requests import FailedAttempts, parse_duration
from supervisors._operator._admin._settings import AdminSettings

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _service(payload: Any) -> Any:
    if payload == "fail":
        raise ConnectionError("connection reset by peer")
    return {"echo": payload}


class Worker(Actor[SagaStepMessage, Any]):
    """A saga step target: answers at once, or holds the step until told to let go."""

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def handle(self, message: SagaStepMessage) -> Any:
        if message.payload != "hold":
            return {"done": message.payload, "token": "sk-live-abcdefghijklmnopqrstuvwx"}
        reply = self.defer()

        async def later() -> None:
            await self.gate.wait()
            reply.set({"done": "held"})

        self.spawn(later)
        return None


ORDER = SagaDefinition(
    "order", [SagaStep("charge", "worker", action=lambda ctx: ctx.input["what"])]
)


def _tree(**admin: Any) -> tuple[SupervisorSpec, dict[str, Any]]:
    holder: dict[str, Any] = {"gate": trio.Event(), "journal": MemoryJournal()}
    settings = ProviderSettings(retry=RetrySettings(max_attempts=1))
    admin.setdefault("tree", lambda: holder.get("root"))
    admin.setdefault("token", TOKEN)
    spec = SupervisorSpec(
        "app",
        [
            ChildSpec("monitor", lambda: MonitorActor(MonitorSettings(check_interval=3600))),
            SupervisorSpec(
                "providers",
                [
                    ChildSpec(
                        "flaky",
                        lambda: ProviderActor(
                            "flaky", _service, settings, monitor="monitor", report_interval=0.01
                        ),
                    )
                ],
            ),
            ChildSpec("worker", lambda: Worker(holder["gate"])),
            ChildSpec("sagas", lambda: SagaCoordinator(holder["journal"], [ORDER])),
            admin_spec(port=0, **admin),
        ],
    )
    return spec, holder


@asynccontextmanager
async def admin_app(**admin: Any) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient]]:
    """A tree with a monitor, one provider and the admin API; a client for it."""
    spec, holder = _tree(**admin)
    async with open_supervisor(spec) as root:
        holder["root"] = root
        address = await root.ref("admin").ask(GetAdminAddress())
        async with httpx.AsyncClient(base_url=address.url, timeout=10) as client:
            yield root, client
        holder["gate"].set()


def report(root: Supervisor, *reports: object) -> None:
    monitor = root.ref("monitor")
    for item in reports:
        monitor.tell_nowait(item)


def calls(service: str, ok: int, failed: int, category: str = "network") -> list[CallReport]:
    now = trio.current_time()
    good = [CallReport(service, True, 0.01, now) for _ in range(ok)]
    bad = [
        CallReport(service, False, 0.02, now, category=ErrorCategory(category), error=f"e{i}")
        for i in range(failed)
    ]
    return good + bad


def breaker(service: str, old: str, new: str) -> BreakerReport:
    return BreakerReport(service, old, new, trio.current_time(), reason="test")


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["status"] == response.status_code
    return body["error"]  # type: ignore[no-any-return]


# ================================================================================ health


async def test_health_is_200_when_healthy() -> None:
    """GET /health answers 200 and status healthy with no trouble (and enough calls)."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 10, 0))
        response = await client.get("/api/resilience/health")
        assert response.status_code == 200
        assert response.json()["status"] == "healthy"
        assert response.json()["services"]["a"]["status"] == "healthy"


async def test_health_is_200_when_degraded() -> None:
    """One unhealthy service among healthy ones is degraded: still 200 for load balancers."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 10, 0), *calls("b", 10, 0), breaker("b", "closed", "open"))
        response = await client.get("/api/resilience/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        assert body["services"]["b"] == {
            "status": "unhealthy",
            "breaker": "open",
            "reasons": ["circuit breaker open"],
        }


async def test_health_is_503_when_unhealthy() -> None:
    """Every service unhealthy makes the application unhealthy: 503 with the report as body."""
    async with admin_app() as (root, client):
        # The provider's own service ("flaky") is known from its start-up state report.
        report(root, breaker("a", "closed", "open"), breaker("flaky", "closed", "open"))
        response = await client.get("/api/resilience/health")
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"
        assert "every service is unhealthy" in response.json()["reasons"]


# ================================================================================ breakers, metrics


async def test_circuit_breakers_list_and_one() -> None:
    """The breaker list and one breaker show state, trips and the last transition."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 1, 0), breaker("b", "closed", "open"))
        listing = (await client.get("/api/resilience/circuit-breakers")).json()
        # "flaky" is known from its provider's start-up state report.
        assert [b["service"] for b in listing["breakers"]] == ["a", "b", "flaky"]
        one = await client.get("/api/resilience/circuit-breakers/b")
        assert one.status_code == 200
        body = one.json()
        assert body["state"] == "open"
        assert body["trips"] == 1
        assert body["last_transition"]["new"] == "open"


async def test_unknown_service_is_404_everywhere() -> None:
    """Each per-service endpoint answers 404 unknown_service for a service never seen."""
    async with admin_app() as (_root, client):
        for path in (
            "/api/resilience/circuit-breakers/nobody",
            "/api/resilience/metrics/nobody",
            "/api/resilience/metrics/nobody/error-rate?window=60",
        ):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert error_of(response)["code"] == "unknown_service"
        response = await client.post("/api/resilience/metrics/nobody/reset", headers=AUTH)
        assert response.status_code == 404
        assert error_of(response)["code"] == "unknown_service"


async def test_metrics_all_and_one() -> None:
    """Metrics count calls, errors by category and the error ratio per service."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 6, 4, "timeout"), *calls("b", 2, 0))
        everything = (await client.get("/api/resilience/metrics")).json()
        assert set(everything["services"]) == {"a", "b", "flaky"}
        one = (await client.get("/api/resilience/metrics/a")).json()
        assert one["calls"] == 10
        assert one["errors"] == 4
        assert one["errors_by_category"] == {"timeout": 4}
        assert one["error_ratio"] == pytest.approx(0.4)
        assert one["totals"]["calls"] == 10


async def test_error_rate_with_a_window() -> None:
    """The error rate accepts seconds or a unit and reports the span measured: whole
    5-second buckets plus the elapsed part of the current one; by default the monitor's window
    (the rate its alerts use)."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 2, 3))
        for window, seconds in (("60", 60.0), ("30s", 30.0), ("2m", 120.0)):
            response = await client.get(f"/api/resilience/metrics/a/error-rate?window={window}")
            assert response.status_code == 200, window
            body = response.json()
            assert seconds <= body["window"] < seconds + 5.0
            assert (body["errors"], body["calls"]) == (3, 5)
            assert body["rate_per_min"] == pytest.approx(3 * 60.0 / body["window"])
        default = (await client.get("/api/resilience/metrics/a/error-rate")).json()
        assert 295.0 <= default["window"] < 300.0


@pytest.mark.parametrize("window", ["0", "-1", "nan", "inf", "abc", "1e9", "5x", "", "1h"])
async def test_error_rate_rejects_bad_windows(window: str) -> None:
    """A window that is not a positive duration within the monitor's window is 400."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 1, 1))
        response = await client.get(
            "/api/resilience/metrics/a/error-rate", params={"window": window}
        )
        assert response.status_code == 400
        assert error_of(response)["code"] == "invalid_query"


async def _best_request_time(client: httpx.AsyncClient, url: str, **params: str) -> float:
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        response = await client.get(url, params=params)
        best = min(best, time.perf_counter() - start)
        assert response.status_code == 400, response.text
    return best


async def test_an_adversarial_window_costs_no_more_than_a_short_one() -> None:
    """A long crafted `window` (digits then blanks) is refused without super-linear work.

    Compared by growth, not by absolute time: a window 8 times longer may take a few times
    longer to refuse (sending it), never the hundreds of times of a backtracking pattern.
    """
    async with admin_app() as (root, client):
        report(root, *calls("a", 1, 1))
        url = "/api/resilience/metrics/a/error-rate"
        small = "1" * 100 + " " * 100 + "x"
        large = "1" * 800 + " " * 800 + "x"
        await _best_request_time(client, url, window=small)  # warm up the connection
        ratio = await _best_request_time(client, url, window=large) / (
            await _best_request_time(client, url, window=small)
        )
        assert ratio < 24, f"8x the window took {ratio:.0f}x the time"
        response = await client.get(url, params={"window": large})
        assert "at most 32 characters" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("/api/resilience/errors/recent", "offset"),
        ("/api/resilience/errors/recent", "limit"),
        ("/api/resilience/errors/recent", "service"),
        ("/api/resilience/alerts", "include_resolved"),
        ("/api/resilience/sagas", "limit"),
    ],
)
async def test_every_query_value_is_refused_in_linear_time(url: str, key: str) -> None:
    """Each query value read from a request is checked without super-linear work."""
    async with admin_app() as (_root, client):
        small = "1" * 300 + " " * 300 + "\x01"
        large = "1" * 2400 + " " * 2400 + "\x01"
        await _best_request_time(client, url, **{key: small})
        ratio = await _best_request_time(client, url, **{key: large}) / (
            await _best_request_time(client, url, **{key: small})
        )
        assert ratio < 24, f"8x the value took {ratio:.0f}x the time"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("60", 60.0),
        (" 30s ", 30.0),
        ("30 s", 30.0),
        ("1.5m", 90.0),
        (".5h", 1800.0),
        ("250ms", 0.25),
        ("1e2", 100.0),
        ("2E-1s", 0.2),
        ("0", None),
        ("5.", None),
        ("5 5s", None),
        ("1e309", None),
        ("٣", None),
        ("1 h x", None),
        ("9" * 33, None),
    ],
)
def test_durations_parse_by_one_unambiguous_pattern(text: str, seconds: float | None) -> None:
    """Seconds, or a number with ms/s/m/h; anything else (or longer than 32 characters) is None."""
    assert parse_duration(text) == (None if seconds is None else pytest.approx(seconds))


@given(
    number=st.one_of(
        st.integers(1, 10**6).map(str),
        st.tuples(st.integers(0, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]:03d}"),
    ),
    unit=st.sampled_from(["", "ms", "s", "m", "h"]),
    blanks=st.tuples(*[st.sampled_from(["", " ", "  ", "\t"])] * 3),
)
def test_every_well_formed_duration_parses(
    number: str, unit: str, blanks: tuple[str, str, str]
) -> None:
    """Any positive number with optional unit and blanks parses to number x unit."""
    text = f"{blanks[0]}{number}{blanks[1] if unit else ''}{unit}{blanks[2]}"
    scale = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
    expected = float(number) * scale
    assert parse_duration(text) == (pytest.approx(expected) if expected > 0 else None)


# ================================================================================ errors, alerts


async def test_recent_errors_are_paginated_newest_first() -> None:
    """Pages of recent errors: newest first, with the total, filtered by service on demand."""
    async with admin_app(max_page=3) as (root, client):
        report(root, *calls("a", 0, 5), *calls("b", 0, 1))
        first = (await client.get("/api/resilience/errors/recent?limit=2")).json()
        assert first["total"] == 6
        assert [e["service"] for e in first["items"]] == ["b", "a"]
        last = (await client.get("/api/resilience/errors/recent?offset=5&limit=3")).json()
        assert [(e["service"], e["message"]) for e in last["items"]] == [("a", "e0")]
        only_a = (await client.get("/api/resilience/errors/recent?service=a&limit=3")).json()
        assert only_a["total"] == 5
        assert {e["service"] for e in only_a["items"]} == {"a"}
        default = (await client.get("/api/resilience/errors/recent")).json()
        assert default["limit"] == 3


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=4", "limit=x", "offset=-1", "offset=1.5", "limit=1&limit=2", "offset="],
)
async def test_recent_errors_reject_bad_pages(query: str) -> None:
    """A limit beyond max_page, a negative offset or a repeated parameter is 400."""
    async with admin_app(max_page=3) as (_root, client):
        response = await client.get(f"/api/resilience/errors/recent?{query}")
        assert response.status_code == 400
        assert error_of(response)["code"] == "invalid_query"


async def test_alerts_active_and_resolved() -> None:
    """A breaker opening raises an alert; closing resolves it; resolved ones on request."""
    async with admin_app() as (root, client):
        report(root, breaker("a", "closed", "open"))
        active = (await client.get("/api/resilience/alerts")).json()
        assert [a["rule"] for a in active["active"]] == ["breaker_open"]
        assert active["resolved"] == []
        report(root, breaker("a", "open", "closed"))
        after = (await client.get("/api/resilience/alerts?include_resolved=true")).json()
        assert after["active"] == []
        assert [a["resolution"] for a in after["resolved"]] == ["breaker_closed"]
        bad = await client.get("/api/resilience/alerts?include_resolved=maybe")
        assert bad.status_code == 400


async def test_acknowledge_an_alert() -> None:
    """POST .../alerts/{id}/acknowledge silences it (still active until the breaker closes);
    unknown ids 404, malformed ids 400."""
    async with admin_app() as (root, client):
        report(root, breaker("a", "closed", "open"))
        alert = (await client.get("/api/resilience/alerts")).json()["active"][0]
        path = f"/api/resilience/alerts/{alert['id']}/acknowledge"
        assert (await client.post(path)).status_code == 401
        done = await client.post(path, headers=AUTH)
        assert done.status_code == 200
        assert done.json()["kind"] == "acknowledged"
        active = (await client.get("/api/resilience/alerts")).json()["active"]
        assert [a["acknowledged_at"] is not None for a in active] == [True]
        report(root, breaker("a", "open", "closed"))
        again = await client.post(path, headers=AUTH)
        assert again.status_code == 404
        assert error_of(again)["code"] == "unknown_alert"
        bad = await client.post("/api/resilience/alerts/x1/acknowledge", headers=AUTH)
        assert bad.status_code == 400


async def test_acknowledge_alerts_in_bulk() -> None:
    """POST .../alerts/acknowledge?rule=...&subject=... acknowledges every matching alert at
    once (failed sagas of one definition are resolved); a bad rule or subject is 400."""
    async with admin_app() as (root, client):
        report(root, breaker("a", "closed", "open"), breaker("b", "closed", "open"))
        path = "/api/resilience/alerts/acknowledge"
        assert (await client.post(path, params={"rule": "breaker_open"})).status_code == 401
        done = await client.post(
            path, params={"rule": "breaker_open", "subject": "a"}, headers=AUTH
        )
        assert done.status_code == 200
        assert [(e["kind"], e["alert"]["service"]) for e in done.json()] == [("acknowledged", "a")]
        rest = await client.post(path, params={"rule": "breaker_open"}, headers=AUTH)
        assert [e["alert"]["service"] for e in rest.json()] == ["b"]
        for params in ({"rule": "nope"}, {"subject": "x\n"}, {"subject": "s" * 201}):
            bad = await client.post(path, params=params, headers=AUTH)
            assert bad.status_code == 400, params


# ================================================================================ writes and auth


async def test_reset_needs_the_token() -> None:
    """Reset: 401 without a token, 401 for another scheme, 403 for a wrong one, 200 with it."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 3, 3))
        path = "/api/resilience/metrics/a/reset"
        missing = await client.post(path)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert error_of(missing)["code"] == "unauthorized"
        basic = await client.post(path, headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401
        wrong = await client.post(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        assert error_of(wrong)["code"] == "forbidden"
        near = await client.post(path, headers={"Authorization": f"Bearer {TOKEN}x"})
        assert near.status_code == 403
        assert (await client.get("/api/resilience/metrics/a")).json()["calls"] == 6
        done = await client.post(path, headers=AUTH)
        assert done.status_code == 200
        assert done.json()["calls"] == 0
        # A reset clears the windows; the totals are counters and keep counting.
        assert (await client.get("/api/resilience/metrics/a")).json()["totals"]["calls"] == 6


READ_TOKEN = "read-token-0123456789abcdef"


async def test_a_read_token_guards_every_read_but_health() -> None:
    """With a read token, every GET but health needs it (or the write token); health is public."""
    async with admin_app(read_token=READ_TOKEN) as (root, client):
        report(root, *calls("a", 3, 0))
        health = await client.get("/api/resilience/health")
        assert health.status_code == 200
        reads = [
            "/api/resilience",
            "/api/resilience/circuit-breakers",
            "/api/resilience/metrics/a",
            "/api/resilience/alerts",
            "/api/resilience/errors/recent",
            "/api/resilience/tree",
            "/api/resilience/providers",
            "/api/resilience/sagas",
            "/metrics",
        ]
        for path in reads:
            missing = await client.get(path)
            assert missing.status_code == 401, path
            assert missing.headers["www-authenticate"].startswith("Bearer")
            reader = await client.get(path, headers={"Authorization": f"Bearer {READ_TOKEN}"})
            assert reader.status_code == 200, path
            writer = await client.get(path, headers=AUTH)
            assert writer.status_code == 200, path
        wrong = await client.get("/api/resilience/alerts", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403
        # The read token opens no write.
        write = await client.post(
            "/api/resilience/metrics/a/reset",
            headers={"Authorization": f"Bearer {READ_TOKEN}"},
        )
        assert write.status_code == 403


async def test_reads_are_public_without_a_read_token() -> None:
    """Without a read token (the default), reads need no credentials."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 1, 0))
        assert (await client.get("/api/resilience/metrics/a")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200


def test_a_short_read_token_is_refused() -> None:
    """The read token follows the write token's rules: at least 16 characters."""
    with pytest.raises(ValueError, match="at least 16"):
        AdminSettings(read_token="short")
    assert "read" not in repr(AdminSettings(read_token=READ_TOKEN)).split("read_token")[-1][:30]


async def test_writes_are_disabled_without_a_configured_token() -> None:
    """With no token configured, every POST is 403 whatever it sends: with a token, or with
    no Authorization header at all (no credentials could open it: not a 401)."""
    async with admin_app(token=None) as (root, client):
        report(root, *calls("a", 1, 0))
        for headers in (AUTH, {}):
            response = await client.post("/api/resilience/metrics/a/reset", headers=headers)
            assert response.status_code == 403
            assert "no admin token" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"", 200), (b"{}", 200), (b"  ", 200), (b"{", 400), (b"[1]", 400), (b"\xff", 400)],
)
async def test_post_bodies_are_empty_or_json_objects(body: bytes, status: int) -> None:
    """A POST body must be empty or a JSON object; anything else is 400."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 1, 0))
        response = await client.post("/api/resilience/metrics/a/reset", headers=AUTH, content=body)
        assert response.status_code == status
        if status == 400:
            assert error_of(response)["code"] == "invalid_body"


async def test_oversized_bodies_are_413() -> None:
    """A body past max_body is refused with 413, declared or streamed."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 1, 0))
        big = b"{" + b" " * (65 * 1024) + b"}"
        response = await client.post("/api/resilience/metrics/a/reset", headers=AUTH, content=big)
        assert response.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(80):
                yield b" " * 1024

        streamed = await client.post(
            "/api/resilience/metrics/a/reset", headers=AUTH, content=chunks()
        )
        assert streamed.status_code == 413
        assert error_of(streamed)["code"] == "body_too_large"


async def test_unknown_routes_and_methods_are_json_errors() -> None:
    """An unknown path is a JSON 404; a wrong method a JSON 405."""
    async with admin_app() as (_root, client):
        missing = await client.get("/api/resilience/nothing-here")
        assert missing.status_code == 404
        assert error_of(missing)["code"] == "not_found"
        wrong = await client.get("/api/resilience/metrics/a/reset")
        assert wrong.status_code == 405
        assert error_of(wrong)["code"] == "method_not_allowed"
        delete = await client.delete("/api/resilience/health")
        assert delete.status_code == 405
        for path in ("/api/resilience/health/", "/api/resilience/metrics/%2F", "//metrics"):
            url = client.base_url.copy_with(raw_path=path.encode())
            slashed = await client.get(url)
            assert slashed.status_code == 404, path
            assert error_of(slashed)["code"] == "not_found"


async def test_untrusted_host_header_is_refused() -> None:
    """Bound to loopback, a request naming another host (DNS rebinding) is refused."""
    async with admin_app() as (_root, client):
        response = await client.get("/api/resilience/health", headers={"Host": "evil.example"})
        assert response.status_code == 400
        assert error_of(response)["code"] == "untrusted_host"
        for host in ("localhost:1234", "[::1]:80", "127.0.0.1"):
            ok = await client.get("/api/resilience/health", headers={"Host": host})
            assert ok.status_code == 200, host


async def test_index_lists_the_endpoints() -> None:
    """GET /api/resilience lists every endpoint."""
    async with admin_app() as (_root, client):
        endpoints = (await client.get("/api/resilience")).json()["endpoints"]
        assert "GET /api/resilience/health" in endpoints
        assert "POST /api/resilience/metrics/{service}/reset" in endpoints
        assert "GET /metrics" in endpoints


# ================================================================================ tree, providers


async def test_tree_snapshot_from_the_supervisor() -> None:
    """GET /tree serves Supervisor.snapshot(): names, kinds, strategies, states."""
    async with admin_app() as (_root, client):
        tree = (await client.get("/api/resilience/tree")).json()
        assert tree["kind"] == "supervisor"
        names = [c["name"] for c in tree["children"]]
        assert names == ["monitor", "providers", "worker", "sagas", "admin"]
        providers = tree["children"][1]
        assert providers["strategy"] == "one_for_one"
        assert providers["children"][0] | {"mailbox_depth": 0} == {
            "name": "flaky",
            "path": "providers/flaky",
            "kind": "actor",
            "state": "running",
            "restarts": 0,
            "mailbox_depth": 0,
            "restart_type": "permanent",
            "strategy": "",
            "children": [],
            "events_dropped": 0,
        }


async def test_tree_snapshot_rebuilt_from_slots_without_a_handle() -> None:
    """Without a Supervisor handle the tree is rebuilt from the actor slots."""
    async with admin_app(tree=None) as (_root, client):
        tree = (await client.get("/api/resilience/tree")).json()
        paths = {node["path"]: node["kind"] for node in _walk(tree)}
        assert paths == {
            "": "supervisor",
            "monitor": "actor",
            "providers": "supervisor",
            "providers/flaky": "actor",
            "worker": "actor",
            "sagas": "actor",
            "admin": "actor",
        }


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node["children"]:
        yield from _walk(child)


async def test_provider_status_isolate_and_reset() -> None:
    """Providers are found in the tree; isolate and reset (token-protected) steer the breaker."""
    async with admin_app() as (root, client):
        provider = root.ref("providers/flaky")
        assert await provider.ask(Call("hello")) == {"echo": "hello"}
        listing = (await client.get("/api/resilience/providers")).json()["providers"]
        assert listing["flaky"]["succeeded"] == 1
        assert (await client.get("/api/resilience/providers/flaky")).json()["breaker"] == "closed"
        assert (await client.post("/api/resilience/providers/flaky/isolate")).status_code == 401
        isolated = await client.post("/api/resilience/providers/flaky/isolate", headers=AUTH)
        assert isolated.status_code == 200
        assert isolated.json()["breaker"] == "isolated"
        with pytest.raises(Exception, match=r"(?i)open|isolat"):
            await provider.ask(Call("again"))
        reset = await client.post("/api/resilience/providers/flaky/reset", headers=AUTH)
        assert reset.json()["breaker"] == "closed"
        missing = await client.get("/api/resilience/providers/nobody")
        assert missing.status_code == 404
        assert error_of(missing)["code"] == "unknown_provider"


async def test_monitor_missing_is_503() -> None:
    """When the monitor is not in the tree, its endpoints answer 503 unavailable."""
    async with admin_app(monitor="elsewhere") as (_root, client):
        response = await client.get("/api/resilience/metrics")
        assert response.status_code == 503
        assert error_of(response)["code"] == "unavailable"


async def test_sagas_without_a_coordinator_are_503() -> None:
    """Configured without a saga coordinator, the saga endpoints answer 503 JSON errors."""
    async with admin_app(sagas=None) as (_root, client):
        for path in ("/api/resilience/sagas", "/api/resilience/sagas/s1"):
            response = await client.get(path)
            assert response.status_code == 503
            assert error_of(response)["code"] == "unavailable"


async def _two_sagas(root: Supervisor) -> None:
    coordinator = root.ref("sagas")
    await coordinator.ask(StartSaga("order", {"what": "book"}, saga_id="done-1"))
    await coordinator.ask(StartSaga("order", {"what": "hold"}, saga_id="held-1", wait=False))


async def test_sagas_list_and_audit_trail() -> None:
    """The unfinished sagas are listed (paginated); one saga shows its audit trail."""
    async with admin_app() as (root, client):
        await _two_sagas(root)
        listing = (await client.get("/api/resilience/sagas")).json()
        assert listing["total"] == 1
        assert [s["saga_id"] for s in listing["items"]] == ["held-1"]
        assert listing["items"][0]["phase"] == "step_in_flight"
        empty = (await client.get("/api/resilience/sagas?offset=1")).json()
        assert (empty["items"], empty["total"]) == ([], 1)
        assert (await client.get("/api/resilience/sagas?limit=0")).status_code == 400
        done = (await client.get("/api/resilience/sagas/done-1")).json()
        assert done["phase"] == "completed"
        assert done["completed_steps"] == ["charge"]
        assert [e["kind"] for e in done["events"]][-1] == "completed"
        assert done["input"] is None  # hidden by default
        assert "sk-live" not in str(done["events"])  # details are redacted
        missing = await client.get("/api/resilience/sagas/nope")
        assert missing.status_code == 404
        assert error_of(missing)["code"] == "unknown_saga"


async def test_saga_input_shown_when_configured() -> None:
    """With saga_input=True the saga's input is part of its audit record."""
    async with admin_app(saga_input=True) as (root, client):
        await _two_sagas(root)
        done = (await client.get("/api/resilience/sagas/done-1")).json()
        assert done["input"] == {"what": "book"}


# ================================================================================ /metrics


async def test_prometheus_exposition_parses() -> None:
    """GET /metrics is Prometheus text that the client parser reads, with aura_ names."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 3, 2, "rate_limit"), breaker("a", "closed", "open"))
        assert await root.ref("providers/flaky").ask(Call(1)) == {"echo": 1}
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        assert all(name.startswith("aura_") for name in families)
        for family in families.values():
            if family.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families.values()
            for s in f.samples
        }
        assert samples[("aura_monitor_up", ())] == 1
        assert samples[("aura_service_attempts_total", (("service", "a"),))] == 5
        assert (
            samples[("aura_service_errors_total", (("category", "rate_limit"), ("service", "a")))]
            == 2
        )
        assert samples[("aura_circuit_breaker_state", (("service", "a"), ("state", "open")))] == 1
        assert samples[("aura_circuit_breaker_state", (("service", "a"), ("state", "closed")))] == 0
        assert samples[("aura_circuit_breaker_trips_total", (("service", "a"),))] == 1
        assert (
            samples[("aura_alerts_active", (("rule", "breaker_open"), ("severity", "critical")))]
            == 1
        )
        assert samples[("aura_actor_state", (("path", "monitor"), ("state", "running")))] == 1
        assert ("aura_actor_mailbox_depth", (("path", "providers/flaky"),)) in samples
        assert samples[("aura_supervisor_state", (("path", "(root)"), ("state", "running")))] == 1
        assert samples[("aura_provider_succeeded_total", (("service", "flaky"),))] == 1
        assert samples[("aura_sagas_unfinished", ())] == 0
        assert "aura_service_latency_seconds" in families
        assert families["aura_service_latency_seconds"].type == "histogram"
        assert samples[("aura_service_latency_seconds_count", (("service", "a"),))] == 5
        assert all("instance" not in labels for _name, labels in samples)


async def test_prometheus_instance_label() -> None:
    """admin_spec(instance=...) puts the instance on every sample of /metrics."""
    async with admin_app(instance="eu-west-1/a") as (root, client):
        report(root, *calls("a", 2, 1))
        text = (await client.get("/metrics")).text
        found = [s for f in text_string_to_metric_families(text) for s in f.samples]
        assert len(found) > 50
        assert {s.labels.get("instance") for s in found} == {"eu-west-1/a"}


def test_instance_must_be_printable() -> None:
    """An instance name with a control character is refused when the spec is built."""
    with pytest.raises(ValueError, match="printable"):
        admin_spec(instance="a\nb")


# ========================================================================= lifecycle, settings


async def test_tree_shutdown_stops_the_server() -> None:
    """Leaving the tree's async with stops the HTTP server: new connections are refused."""
    async with admin_app() as (root, client):
        address = await root.ref("admin").ask(GetAdminAddress())
        assert (await client.get("/api/resilience/health")).status_code == 200
    assert address.host == "127.0.0.1"
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as fresh:
            await fresh.get(f"{address.url}/api/resilience/health")


async def test_restarting_the_admin_actor_serves_again() -> None:
    """A restart of the admin child stops its server and starts a new one."""
    async with admin_app() as (root, _client):
        await root.terminate_child("admin")
        await root.restart_child("admin")
        address = await root.ref("admin").ask(GetAdminAddress())
        async with httpx.AsyncClient(base_url=address.url) as fresh:
            assert (await fresh.get("/api/resilience")).status_code == 200
        assert root.snapshot().find("admin").restarts == 1  # type: ignore[union-attr]


async def test_the_admin_actor_refuses_other_messages() -> None:
    """Anything but GetAdminAddress is answered with a TypeError; the actor keeps running."""
    async with admin_app() as (root, client):
        with pytest.raises(TypeError, match="GetAdminAddress"):
            await root.ref("admin").ask("hello")
        assert (await client.get("/api/resilience")).status_code == 200
        assert root.snapshot().find("admin").restarts == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"port": -1},
        {"port": 70000},
        {"port": True},
        {"token": ""},
        {"token": "has space in it, long enough"},
        {"token": "x"},
        {"token": "fifteen-chars.."},
        {"token": "ünïcödé-token-0123456789"},
        {"token": 1234567890123456789},
        {"host": "0.0.0.0"},
        {"host": "::"},
        {"host": "10.1.2.3"},
        {"host": "0.0.0.0", "allowed_hosts": frozenset({""})},
        {"max_page": 0},
        {"max_page": 1001},
        {"ask_timeout": 0},
        {"host": ""},
        {"send_buffer": 0},
    ],
)
def test_settings_reject_bad_values(kwargs: dict[str, Any]) -> None:
    """Admin settings out of range raise ValueError naming the setting."""
    with pytest.raises(ValueError, match="admin"):
        AdminSettings(**kwargs)


def test_loopback_binding_trusts_only_loopback_hosts() -> None:
    """Bound to loopback the Host check is on; bound elsewhere only the names listed pass."""
    loopback = AdminSettings()
    for name in ("localhost", "127.0.0.1", "127.0.0.2", "::1", "LOCALHOST"):
        assert loopback.host_allowed(name), name
    for name in ("evil.example", "10.0.0.1", "", "localhost.evil.example"):
        assert not loopback.host_allowed(name), name
    listed = AdminSettings(host="0.0.0.0", allowed_hosts=frozenset({"Ops.example"}))
    assert listed.host_allowed("ops.example")
    assert not listed.host_allowed("localhost")
    assert not listed.host_allowed("evil.example")


def test_binding_off_loopback_needs_allowed_hosts() -> None:
    """A wildcard or other non-loopback address without allowed_hosts is refused, saying why;
    `*` accepts any Host, explicitly."""
    for host in ("0.0.0.0", "::", "192.168.1.10", "admin.internal"):
        with pytest.raises(ValueError, match="allowed_hosts") as info:
            AdminSettings(host=host)
        assert "DNS rebinding" in str(info.value)
        with pytest.raises(ValueError, match="allowed_hosts"):
            admin_spec(host=host)
    anything = AdminSettings(host="0.0.0.0", allowed_hosts=frozenset({"*"}))
    assert anything.host_allowed("evil.example")
    assert anything.hosts() is None


async def test_accepting_any_host_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """allowed_hosts=['*'] starts, with a warning that the DNS-rebinding defence is off."""
    with caplog.at_level(logging.WARNING, logger="supervisors.admin"):
        async with admin_app(allowed_hosts=["*"]) as (_root, client):
            response = await client.get(
                "/api/resilience/health", headers={"Host": "rebound.example"}
            )
            assert response.status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("any Host" in message for message in warnings), warnings


async def test_failed_token_attempts_are_limited_per_client() -> None:
    """Past the allowed failures a client gets 429 with Retry-After, even with the right
    token, until the limit refills; reads are not affected."""
    limit = RateLimiterSettings(rate=1 / 60, burst=3)
    async with admin_app(failed_auth=limit) as (root, client):
        report(root, *calls("a", 1, 0))
        path = "/api/resilience/metrics/a/reset"
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        for _ in range(3):
            assert (await client.post(path, headers=wrong)).status_code == 403
        blocked = await client.post(path, headers=wrong)
        assert blocked.status_code == 429
        assert error_of(blocked)["code"] == "too_many_attempts"
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert (await client.post(path, headers=AUTH)).status_code == 429
        assert (await client.post(path)).status_code == 401  # no token: not an attempt
        assert (await client.get("/api/resilience/health")).status_code == 200


def test_failed_attempts_refill_and_the_table_is_bounded() -> None:
    """The throttle is a token bucket per client: it refills with time, and keeps at most
    max_clients buckets (forgiven ones first, then the oldest)."""
    throttle = FailedAttempts(RateLimiterSettings(rate=1 / 10, burst=2), max_clients=3)
    assert throttle.wait("a", 0.0) == 0.0
    throttle.failed("a", 0.0)
    throttle.failed("a", 0.0)
    wait = throttle.wait("a", 0.0)
    assert wait == pytest.approx(10.0)
    assert throttle.wait("b", 0.0) == 0.0  # another client is not affected
    assert throttle.wait("a", 5.0) == pytest.approx(5.0)
    assert throttle.wait("a", 10.0 + 1e-9) == 0.0
    for client in ("b", "c", "d", "e"):
        throttle.failed(client, 20.0)
    assert len(throttle) == 3
    throttle.failed("f", 100.0)  # by now every bucket is full again: forgiven, dropped first
    assert len(throttle) <= 3
    assert throttle.wait("f", 100.0) == 0.0


def test_the_token_is_never_in_the_settings_repr() -> None:
    """The token is kept out of repr (and so out of logs of the settings)."""
    settings = AdminSettings(token=TOKEN)
    assert TOKEN not in repr(settings)


# ================================================================================ fuzzing


class ServerThread:
    """The admin tree running in a trio loop of its own thread, for synchronous clients."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        # The fuzzers send wrong tokens often: a lenient throttle keeps the right one working.
        spec, holder = _tree(failed_auth=RateLimiterSettings(rate=1000, burst=1000))
        async with open_supervisor(spec) as root:
            holder["root"] = root
            report(root, *calls("steady", 20, 0), *calls("shaky", 5, 5))
            self.url = (await root.ref("admin").ask(GetAdminAddress())).url
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(30), "the admin server did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


@pytest.fixture(scope="module")
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


_SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "api",
            "resilience",
            "health",
            "metrics",
            "steady",
            "shaky",
            "error-rate",
            "reset",
            "errors",
            "recent",
            "alerts",
            "circuit-breakers",
            "sagas",
            "tree",
            "providers",
            "flaky",
            "isolate",
            "acknowledge",
            "..",
            ".",
            "",
        ]
    ),
    st.text(max_size=30),
    st.binary(max_size=12).map(lambda b: "".join(f"%{c:02X}" for c in b)),
)


_ENCODED = re.compile(r"(?:%[0-9A-F]{2})+")


def _path(segments: list[str]) -> str:
    # Segments that are percent-encoded bytes go as they are; any other text is quoted.
    return "/" + "/".join(s if _ENCODED.fullmatch(s) else quote(s, safe="") for s in segments)


@settings(max_examples=150)
@given(
    prefix=st.sampled_from(["/api/resilience", "/api", "", "/metrics"]),
    segments=st.lists(_SEGMENTS, max_size=5),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    token=st.sampled_from([None, TOKEN, "wrong"]),
)
@example(prefix="/api/resilience", segments=["%\x80", "%\x1f"], method="GET", token=None)
def test_generated_paths_never_answer_5xx(
    server: ServerThread,
    http: httpx.Client,
    prefix: str,
    segments: list[str],
    method: str,
    token: str | None,
) -> None:
    """Any path, method and token gets a 2xx or a JSON 4xx, never a 5xx."""
    path = prefix + _path(segments) if segments else prefix or "/"
    url = httpx.URL(server.url).copy_with(raw_path=path.encode("ascii"))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    response = http.request(method, url, headers=headers)
    assert response.status_code < 300 or 400 <= response.status_code < 500, (method, path)
    if response.status_code >= 400:
        error_of(response)


_ENDPOINTS = [
    "/api/resilience/metrics/shaky/error-rate",
    "/api/resilience/errors/recent",
    "/api/resilience/alerts",
    "/api/resilience/health",
    "/api/resilience/metrics/steady",
    "/metrics",
]


@settings(max_examples=150)
@given(
    endpoint=st.sampled_from(_ENDPOINTS),
    params=st.lists(
        st.tuples(
            st.sampled_from(["window", "offset", "limit", "service", "include_resolved", "x"]),
            st.one_of(
                st.text(max_size=20),
                st.integers(-(10**20), 10**20).map(str),
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.sampled_from(["1e309", "-0", "0x10", "60s", "5m", "1h", "true", "٣"]),
            ),
        ),
        max_size=4,
    ),
)
def test_generated_query_values_never_answer_5xx(
    http: httpx.Client, endpoint: str, params: list[tuple[str, str]]
) -> None:
    """Any query parameters on the GET endpoints get a 2xx or a JSON 4xx."""
    response = http.get(endpoint, params=params)
    assert response.status_code < 300 or 400 <= response.status_code < 500, (endpoint, params)
    if response.status_code >= 400:
        error_of(response)


@settings(max_examples=100)
@given(
    body=st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode)),
    path=st.sampled_from(
        [
            "/api/resilience/metrics/steady/reset",
            "/api/resilience/metrics/nobody/reset",
            "/api/resilience/alerts/999/acknowledge",
            "/api/resilience/providers/flaky/reset",
        ]
    ),
    content_type=st.sampled_from([None, "application/json", "text/plain"]),
)
def test_generated_bodies_never_answer_5xx(
    http: httpx.Client, body: bytes, path: str, content_type: str | None
) -> None:
    """Any POST body gets a 2xx or a JSON 4xx."""
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = http.post(path, content=body, headers=headers)
    assert response.status_code < 300 or 400 <= response.status_code < 500, (path, body)
    if response.status_code >= 400:
        error_of(response)


def test_fuzz_server_health_is_served(http: httpx.Client) -> None:
    """The shared server answers health (a sanity check of the fuzzing fixture)."""
    assert http.get("/api/resilience/health").status_code == 200


# ================================================================================ times


def _iso_age(text: str) -> float:
    """Seconds between the wall clock now and an ISO 8601 time the API wrote."""
    assert text.endswith("Z"), text
    stamp = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return time.time() - stamp.timestamp()


async def test_every_timestamp_has_a_wall_clock_iso_time_beside_it() -> None:
    """Monotonic timestamps (trio's clock) get a ``*_iso`` wall-clock time: the recorded wall
    time where the monitor kept one, else placed by age; saga times (wall clock) are written
    out.  Each is now, give or take the test's own duration."""
    async with admin_app() as (root, client):
        report(root, *calls("a", 3, 2), breaker("a", "closed", "open"))
        await _two_sagas(root)
        health = (await client.get("/api/resilience/health")).json()
        assert abs(_iso_age(health["checked_at_iso"])) < 60
        (alert,) = (await client.get("/api/resilience/alerts")).json()["active"]
        assert abs(_iso_age(alert["raised_at_iso"])) < 60
        assert alert["acknowledged_at_iso"] is None  # not acknowledged: null, like its time
        (error, *_) = (await client.get("/api/resilience/errors/recent")).json()["items"]
        assert abs(error["wall"] - (time.time() - _iso_age(error["at_iso"]))) < 0.01
        breaker_doc = (await client.get("/api/resilience/circuit-breakers/a")).json()
        assert abs(_iso_age(breaker_doc["since_iso"])) < 60
        assert abs(_iso_age(breaker_doc["last_transition"]["at_iso"])) < 60
        metrics = (await client.get("/api/resilience/metrics/a")).json()
        assert abs(_iso_age(metrics["totals"]["since_iso"])) < 60
        saga = (await client.get("/api/resilience/sagas/done-1")).json()
        assert abs(_iso_age(saga["created_at_iso"])) < 60
        assert all(abs(_iso_age(e["at_iso"])) < 60 for e in saga["events"])
        listing = (await client.get("/api/resilience/sagas")).json()
        assert abs(_iso_age(listing["items"][0]["updated_at_iso"])) < 60


def test_iso_times_use_the_recorded_wall_time_else_the_age() -> None:
    """A timestamp with a recorded wall time is written from it; one without is placed by its
    age; saga documents are wall-clock already; a caller's data is left alone; nothing is
    changed in place."""
    from supervisors._operator._admin._times import iso, with_iso_times

    monitor = {
        "at": 100.0,
        "wall": 1_000_000.0,
        "checked_at": 150.0,
        "resolved_at": None,
        "nested": [{"since": 190.0}],
    }
    out = with_iso_times(monitor, wall_clock=False, now=200.0, now_wall=2_000_000.0)
    assert out["at_iso"] == iso(1_000_000.0)  # recorded, not 2_000_000 - 100
    assert out["checked_at_iso"] == iso(2_000_000.0 - 50.0)
    assert out["resolved_at_iso"] is None
    assert out["nested"][0]["since_iso"] == iso(2_000_000.0 - 10.0)
    assert "at_iso" not in monitor  # a copy
    saga = {"created_at": 1_500_000.0, "input": {"at": 3.0}, "events": [{"at": 1_500_001.0}]}
    out = with_iso_times(saga, wall_clock=True, now=200.0, now_wall=2_000_000.0)
    assert out["created_at_iso"] == iso(1_500_000.0)
    assert out["events"][0]["at_iso"] == iso(1_500_001.0)
    assert out["input"] == {"at": 3.0}
