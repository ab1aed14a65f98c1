"""The operator surface of a fleet: the admin API's /fleet, health, isolate and reset acting
fleet-wide, the aura_fleet_* metrics, and ``aura status`` / ``aura isolate`` / ``aura reset``.

Two fleet members share an in-memory store in real time; the first one's tree serves the admin
API.  The application runs in a trio loop of its own thread, as ``aura`` talks to it over HTTP.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors import FleetSettings, MonitorActor, ProviderActor, open_fleet
from actors._fleet._member import Fleet
from actors._fleet._memory import MemoryServer
from supervisors import ChildSpec, SupervisorSpec, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress, admin_spec
from supervisors._operator._cli import main

TOKEN = "fleet-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST: dict[str, Any] = {
    "redis_url": "redis://127.0.0.1:1/0",
    "key_prefix": "op",
    "command_timeout": 0.5,
    "heartbeat_interval": 0.05,
    "instance_ttl": 1.0,
    "refresh_interval": 0.1,
    "stale_after": 0.5,
}


async def service(payload: Any) -> Any:
    return payload


class FleetApp:
    """Members ``a`` (with a monitor, provider ``svc`` and the admin API) and ``b`` (provider
    ``svc`` only) on one in-memory store, in a trio loop of their own thread."""

    def __init__(self) -> None:
        self.server = MemoryServer()
        self.url = ""
        self.fleets: dict[str, Fleet] = {}
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with (
            open_fleet(FleetSettings(**FAST, instance_id="a"), server=self.server) as a,
            open_fleet(FleetSettings(**FAST, instance_id="b"), server=self.server) as b,
        ):
            self.fleets = {"a": a, "b": b}
            spec_a = SupervisorSpec(
                "a",
                [
                    ChildSpec("monitor", MonitorActor),
                    ChildSpec(
                        "svc",
                        lambda: ProviderActor("svc", service, monitor="monitor", fleet=a),
                    ),
                    admin_spec(port=0, token=TOKEN),
                ],
            )
            spec_b = SupervisorSpec(
                "b", [ChildSpec("svc", lambda: ProviderActor("svc", service, fleet=b))]
            )
            async with open_supervisor(spec_a) as root, open_supervisor(spec_b):
                self.url = (await root.ref("admin").ask(GetAdminAddress())).url
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()

    def run_sync(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` in the application's trio loop."""
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    def fleet_state(self, member: str) -> str:
        return str(self.run_sync(lambda: self.fleets[member].status().breakers[0].state))

    def __enter__(self) -> FleetApp:
        self._thread.start()
        assert self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)


@pytest.fixture
def app() -> Iterator[FleetApp]:
    with FleetApp() as running:
        yield running


def until(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


def test_the_admin_api_shows_the_fleet(app: FleetApp) -> None:
    """GET /api/resilience/fleet: this instance, the store, live instances, each shared
    breaker; the provider's status names its fleet breaker."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        until(lambda: client.get("/api/resilience/fleet").json()["members"][0]["live"] == 2)
        (member,) = client.get("/api/resilience/fleet").json()["members"]
        assert member["instance"] == "a"
        assert member["store"] == "memory"
        assert member["status"] == "healthy"
        assert member["available"] is True
        assert [b["service"] for b in member["breakers"]] == ["svc"]
        assert member["breakers"][0]["state"] == "closed"
        assert client.get("/api/resilience/providers/svc").json()["fleet"] == "closed"


def test_isolate_and_reset_from_the_admin_api_act_fleet_wide(app: FleetApp) -> None:
    """POST .../isolate on one instance isolates the fleet breaker on the other; reset closes
    it there too."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        response = client.post("/api/resilience/providers/svc/isolate", headers=AUTH)
        assert response.status_code == 200
        assert response.json()["fleet"] == "isolated"
        until(lambda: app.fleet_state("b") == "isolated")
        response = client.post("/api/resilience/providers/svc/reset", headers=AUTH)
        assert response.status_code == 200
        until(lambda: app.fleet_state("b") == "closed")


def test_the_store_down_shows_in_health_and_isolate_says_it_acted_locally(app: FleetApp) -> None:
    """With the store down, health is degraded with the fleet store's reason, and an isolate
    answers 503 ``fleet_store_unavailable`` (this instance's breaker is isolated); when the
    store is back health recovers by itself."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        app.run_sync(app.server.stop)

        def degraded() -> bool:
            health = client.get("/api/resilience/health").json()
            return any("fleet store" in reason for reason in health["reasons"])

        until(degraded)
        health = client.get("/api/resilience/health").json()
        assert health["status"] == "degraded"
        assert health["dependencies"]["fleet store"]["state"] == "unavailable"
        response = client.post("/api/resilience/providers/svc/isolate", headers=AUTH)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "fleet_store_unavailable"
        assert client.get("/api/resilience/providers/svc").json()["breaker"] == "isolated"
        app.run_sync(app.server.start)
        until(lambda: not degraded())
        assert client.get("/api/resilience/fleet").json()["members"][0]["status"] == "healthy"


def test_prometheus_shows_the_fleet_with_an_instance_label(app: FleetApp) -> None:
    """/metrics has the aura_fleet_* families; every sample carries the member's id as its
    ``instance`` label (the admin API was given none)."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        until(lambda: client.get("/api/resilience/fleet").json()["members"][0]["live"] == 2)
        client.post("/api/resilience/providers/svc/isolate", headers=AUTH)
        text = client.get("/metrics").text
    families = list(text_string_to_metric_families(text))
    assert all(
        sample.labels.get("instance") == "a" for family in families for sample in family.samples
    )
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families
        if family.name.startswith("aura_fleet")
        for sample in family.samples
    }
    assert samples[("aura_fleet_instances_live", (("instance", "a"),))] == 2.0
    assert samples[("aura_fleet_store_up", (("instance", "a"),))] == 1.0
    assert samples[("aura_fleet_health_status", (("instance", "a"), ("status", "healthy")))] == 1
    isolated = (("instance", "a"), ("service", "svc"), ("state", "isolated"))
    assert samples[("aura_fleet_breaker_state", isolated)] == 1.0
    closed = (("instance", "a"), ("service", "svc"), ("state", "closed"))
    assert samples[("aura_fleet_breaker_state", closed)] == 0.0
    assert samples[("aura_fleet_store_round_trips_total", (("instance", "a"),))] > 0
    assert ("aura_fleet_store_errors_total", (("instance", "a"),)) in samples


def test_aura_status_shows_the_fleet_and_aura_isolate_and_reset_act_fleet_wide(
    app: FleetApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``aura status`` prints the fleet section; ``aura isolate`` / ``aura reset`` (with the
    write token) act on every instance; without a token they refuse to run."""
    with httpx.Client(base_url=app.url, timeout=10) as client:
        until(lambda: client.get("/api/resilience/fleet").json()["members"][0]["live"] == 2)
    out = io.StringIO()
    assert main(["status", app.url], stdout=out) == 0
    text = out.getvalue()
    assert "fleet: instance a at memory: healthy, 2 live instance(s)" in text
    assert any(line.split()[:2] == ["svc", "closed"] for line in text.splitlines())
    err = io.StringIO()
    monkeypatch.delenv("AURA_ADMIN_TOKEN", raising=False)
    assert main(["isolate", app.url, "svc"], stderr=err) == 1
    assert "write token" in err.getvalue()
    monkeypatch.setenv("AURA_ADMIN_TOKEN", TOKEN)
    out = io.StringIO()
    assert main(["isolate", app.url, "svc"], stdout=out) == 0
    assert out.getvalue().strip() == "svc: breaker isolated, fleet breaker isolated"
    until(lambda: app.fleet_state("b") == "isolated")
    out = io.StringIO()
    assert main(["reset", app.url, "svc"], stdout=out) == 0
    until(lambda: app.fleet_state("b") == "closed")
    err = io.StringIO()
    assert main(["reset", app.url, "nope"], stderr=err) == 1
    assert "no provider actor serves 'nope'" in err.getvalue()
