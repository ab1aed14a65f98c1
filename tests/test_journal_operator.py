"""The saga journal's operator surface over real HTTP: each saga's owner and the journal's
live instances in the admin API, ``aura status`` and ``aura sagas`` (a PostgreSQL journal
shared by two instances, and a SQLite journal, which has no owners), and a journal whose
server goes down shown in health and recovering.

The trees run in the test's trio loop (real time: the journal has threads); ``aura`` runs
on a worker thread, talking to the admin API over loopback as it would from a terminal.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from actors import CompensationFailed, ErrorCategory, MonitorActor, RetrySettings
from actors._saga._coordinator import SagaCoordinator
from actors._saga._definition import SagaDefinition
from actors._saga._journals._postgres._journal import PostgresJournal
from actors._saga._journals._records import Journal
from actors._saga._journals._sqlite._journal import SqliteJournal
from actors._saga._messages import StartSaga
from actors.testing import PostgresServer
from supervisors import ChildSpec, Supervisor, open_supervisor
from supervisors._operator._admin._actor import GetAdminAddress, admin_spec
from supervisors._operator._cli import main
from tests.fixtures_postgres import drop_schema, new_schema_name
from tests.test_saga import SERVICES, World, chain, service

#: Steps wait this long for a reply: a held step stays in flight for the whole test.
SLOW = 600.0


@asynccontextmanager
async def app(
    journal: Journal,
    world: World,
    *,
    admin: bool = True,
    token: str | None = None,
    definition: SagaDefinition | None = None,
) -> AsyncIterator[tuple[Supervisor, httpx.AsyncClient | None]]:
    """A tree with the fake services, a monitor, a coordinator over ``journal`` (running
    ``definition``, by default a chain of 3 slow steps) and (with ``admin``) the admin API,
    whose write token is ``token``; a client of it."""
    saga = chain(3, timeout=SLOW) if definition is None else definition
    specs: list[Any] = [ChildSpec(name, service(name, world)) for name in SERVICES]
    specs += [
        ChildSpec("monitor", MonitorActor),
        ChildSpec("sagas", lambda: SagaCoordinator(journal, [saga], monitor="monitor")),
    ]
    if admin:
        specs.append(admin_spec(port=0, token=token))
    async with open_supervisor(specs) as root:
        if not admin:
            yield root, None
            return
        address = await root.ref("admin").ask(GetAdminAddress())
        async with httpx.AsyncClient(base_url=address.url, timeout=10) as client:
            yield root, client


async def aura(*args: str) -> tuple[int, str, str]:
    """``aura ARGS`` on a worker thread: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = await trio.to_thread.run_sync(lambda: main(list(args), stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


async def until(check: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    """Poll the async ``check`` until it answers something true; that answer."""
    with trio.move_on_after(within):
        while True:
            found = await check()
            if found:
                return found
            await trio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within:g} s")


def hold(world: World, saga_id: str, step: int) -> None:
    """The fake service of ``step`` holds that step of ``saga_id`` (no reply for an hour)."""
    world.plan(f"{saga_id}:s{step}", ("sleep", 3600.0))


async def test_the_admin_api_and_aura_show_owners_and_the_journals_instances(
    postgres_url: str, postgres_schema: str
) -> None:
    """Two instances share a PostgreSQL journal, each running a saga held at its second step.
    Instance a's admin API lists both sagas with their owners, one saga with its owner and
    whether that owner is alive, and the journal with both live instances (lease, sagas
    owned); ``aura status`` and ``aura sagas`` print the same.  When b closes, the journal shows
    its lease closed and a takes its saga over: the owner shown changes."""
    world_a, world_b = World(), World()
    hold(world_a, "ma", 1)
    hold(world_b, "mb", 1)
    # Leases long enough that a loaded machine never lets a live one lapse.
    options: dict[str, Any] = {"schema": postgres_schema, "lease_duration": 3.0}
    async with (
        PostgresJournal(postgres_url, **options) as a_journal,
        app(a_journal, world_a) as (a_root, client),
    ):
        assert client is not None
        a, url = a_journal.instance_id, str(client.base_url).rstrip("/")
        async with PostgresJournal(postgres_url, **options) as b_journal:
            b = b_journal.instance_id
            async with app(b_journal, world_b, admin=False) as (b_root, _):
                await a_root.ref("sagas").ask(StartSaga("order", saga_id="ma", wait=False))
                await b_root.ref("sagas").ask(StartSaga("order", saga_id="mb", wait=False))

                async def both_held() -> Any:
                    page = (await client.get("/api/resilience/sagas")).json()
                    flying = [s for s in page["items"] if s["step_in_flight"] == 1]
                    return page if len(flying) == 2 else None

                page = await until(both_held, "both sagas held at their second step")
                assert {s["saga_id"]: s["owner"] for s in page["items"]} == {"ma": a, "mb": b}
                one = (await client.get("/api/resilience/sagas/mb")).json()
                assert (one["owner"], one["owner_alive"], one["running_here"]) == (b, True, False)
                mine = (await client.get("/api/resilience/sagas/ma")).json()
                assert (mine["owner"], mine["owner_alive"], mine["running_here"]) == (a, True, True)

                journal = (await client.get("/api/resilience/journal")).json()
                assert journal["kind"] == "PostgresJournal"
                assert journal["where"].startswith("postgresql://")
                assert (journal["available"], journal["reason"]) == (True, "")
                assert (journal["shared"], journal["instance_id"], journal["live"]) == (True, a, 2)
                by_id = {i["instance_id"]: i for i in journal["instances"]}
                assert set(by_id) == {a, b}
                assert [by_id[x]["lease"] for x in (a, b)] == ["live", "live"]
                assert [by_id[x]["sagas_owned"] for x in (a, b)] == [1, 1]
                assert [by_id[x]["this_instance"] for x in (a, b)] == [True, False]
                assert all(0 < by_id[x]["lease_remaining"] <= 3.0 for x in (a, b))
                assert by_id[a]["started_at_iso"].endswith("Z")
                assert journal["fleet_statistics"]["available"] is True
                assert journal["statistics"]["sagas_open"] >= 1

                code, out, err = await aura("status", url)
                assert (code, err) == (0, "")
                assert "saga journal: PostgresJournal at postgresql://" in out
                assert "2 live instance(s) of 2" in out
                rows = {line.split()[0]: line for line in out.splitlines() if "live " in line}
                assert "(this)" in rows[a[:12]]
                assert "(this)" not in rows[b[:12]]
                assert rows[b[:12]].split()[-1] == "1"  # the saga it owns

                code, out, err = await aura("sagas", url)
                assert (code, err) == (0, "")
                table = {line.split()[0]: line.split() for line in out.splitlines() if line}
                assert table["ma"][2:] == ["step_in_flight", "1", a[:12], "(live)"]
                assert table["mb"][2:] == ["step_in_flight", "1", b[:12], "(live)"]
                code, out, err = await aura("sagas", url, "mb")
                assert (code, err) == (0, "")
                assert f"owner: {b} (live)" in out
                assert "#3 step_started s1: in flight" in out

        # b closed: its lease reads closed, and a takes its saga over (and finishes it: its
        # own service of the step answers at once).
        async def taken_over() -> Any:
            info = (await client.get("/api/resilience/sagas/mb")).json()
            return info if info["owner"] == a and info["finished"] else None

        info = await until(taken_over, "a took mb over and finished it")
        assert (info["phase"], info["owner_alive"]) == ("completed", True)
        journal = (await client.get("/api/resilience/journal")).json()
        by_id = {i["instance_id"]: i for i in journal["instances"]}
        assert (by_id[b]["lease"], by_id[b]["sagas_owned"], journal["live"]) == ("closed", 0, 1)
        code, out, _ = await aura("status", url)
        assert "1 live instance(s) of 2" in out
        assert any(line.split()[:1] == [b[:12]] and "closed" in line for line in out.splitlines())
        code, out, _ = await aura("sagas", url)
        assert out.splitlines()[0] == "sagas: 1 unfinished or waiting for an operator"


async def test_a_sqlite_journal_shows_no_owners_and_no_instances(tmp_path: Path) -> None:
    """With a SQLite journal the same endpoints and commands answer, without owners: the
    sagas' owner is null, the journal is not shared and lists no instances, and ``aura``
    says one instance drives every saga."""
    world = World()
    hold(world, "solo", 0)
    path = tmp_path / "sagas.db"
    async with SqliteJournal(path) as journal, app(journal, world) as (root, client):
        assert client is not None
        url = str(client.base_url).rstrip("/")
        await root.ref("sagas").ask(StartSaga("order", saga_id="solo", wait=False))

        async def held() -> Any:
            page = (await client.get("/api/resilience/sagas")).json()
            return page if page["items"] and page["items"][0]["step_in_flight"] == 0 else None

        page = await until(held, "the saga is held at its first step")
        assert [(s["saga_id"], s["owner"]) for s in page["items"]] == [("solo", None)]
        one = (await client.get("/api/resilience/sagas/solo")).json()
        assert (one["owner"], one["owner_alive"], one["running_here"]) == (None, None, True)
        view = (await client.get("/api/resilience/journal")).json()
        assert (view["kind"], view["where"], view["available"]) == (
            "SqliteJournal",
            str(path),
            True,
        )
        assert (view["shared"], view["instance_id"], view["live"]) == (False, "", 0)
        assert (view["instances"], view["fleet_statistics"]) == ([], None)
        assert view["statistics"]["sagas_open"] == 1

        code, out, err = await aura("status", url)
        assert (code, err) == (0, "")
        assert f"saga journal: SqliteJournal at {path}: available" in out
        assert "one instance drives every saga (no owners, no leases)" in out
        code, out, err = await aura("sagas", url)
        assert (code, err) == (0, "")
        row = next(line.split() for line in out.splitlines() if line.startswith("solo"))
        assert row[2:] == ["step_in_flight", "0", "(no", "owners)"]
        code, out, _ = await aura("sagas", url, "solo")
        assert "owner: none (a journal of one instance), running on this instance" in out
        code, _, err = await aura("sagas", url, "nope")
        assert code == 1
        assert "the saga coordinator has no saga 'nope'" in err


async def test_a_journal_server_down_shows_in_health_and_recovers(
    postgres_server: PostgresServer,
) -> None:
    """The journal's server stops: the admin API's health turns degraded with the journal's
    reason (the coordinator's DependencyReport through the monitor), the journal endpoint says
    it is unavailable and why, the saga listing answers 503 ``journal_unavailable`` (not a
    crash), and ``aura status`` prints it all.  When the server is back, health recovers by
    itself and the sagas can be read again."""
    url = postgres_server.url
    schema = new_schema_name()
    world = World()
    hold(world, "held", 1)
    try:
        async with (
            PostgresJournal(url, schema=schema, lease_duration=1.0, write_timeout=0.5) as journal,
            app(journal, world) as (root, client),
        ):
            assert client is not None
            base = str(client.base_url).rstrip("/")
            await root.ref("sagas").ask(StartSaga("order", saga_id="held", wait=False))

            async def in_flight() -> bool:
                page = (await client.get("/api/resilience/sagas")).json()
                return bool(page["items"]) and page["items"][0]["step_in_flight"] == 1

            await until(in_flight, "the saga is held at its second step")
            await trio.to_thread.run_sync(postgres_server.stop)

            async def degraded() -> Any:
                health = (await client.get("/api/resilience/health")).json()
                reasons = [r for r in health["reasons"] if r.startswith("saga journal")]
                return health if reasons else None

            health = await until(degraded, "health shows the journal down")
            assert health["status"] == "degraded"
            assert any(r.startswith("saga journal unavailable: ") for r in health["reasons"])
            dependency = health["dependencies"]["saga journal"]
            assert dependency["state"] == "unavailable"
            assert dependency["reason"]
            view = (await client.get("/api/resilience/journal")).json()
            assert (view["available"], view["shared"]) == (False, True)
            assert view["reason"]
            listing = await client.get("/api/resilience/sagas")
            assert listing.status_code == 503
            assert listing.json()["error"]["code"] == "journal_unavailable"
            code, out, err = await aura("status", base)
            assert (code, err) == (0, "")
            assert out.splitlines()[0] == f"{base}: degraded"
            assert "  saga journal unavailable: " in out
            assert f"saga journal: PostgresJournal at {view['where']}: unavailable: " in out

            await trio.to_thread.run_sync(postgres_server.start)

            async def recovered() -> Any:
                health = (await client.get("/api/resilience/health")).json()
                ok = health["dependencies"].get("saga journal", {}).get("state") == "ok"
                return health if ok else None

            health = await until(recovered, "health shows the journal back")
            assert not [r for r in health["reasons"] if r.startswith("saga journal")]
            assert health["status"] != "degraded"
            assert (await client.get("/api/resilience/journal")).json()["available"] is True
            assert (await client.get("/api/resilience/sagas")).status_code == 200
    finally:
        await trio.to_thread.run_sync(drop_schema, url, schema)


WRITE_TOKEN = "operator-token-0123456789abcdef"


async def test_an_operator_discards_a_compensation_failed_saga(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The runbook's last step for a ``compensation_failed`` saga, over HTTP and ``aura
    discard``: it needs the write token, refuses a saga still running (409) and an unknown one
    (404), removes the failed saga from the journal for good (gone after a reopen too) and
    logs who did what; the running saga is untouched."""
    world = World()
    world.plan("cf:s1", "reject")
    world.plan("cf:s0:compensate", "reject")
    hold(world, "busy", 0)
    once = RetrySettings(max_attempts=1, retry_on=frozenset(ErrorCategory), total_timeout=None)
    definition = chain(3, timeout=SLOW, compensation_retry=once)
    path = tmp_path / "sagas.db"
    monkeypatch.delenv("AURA_ADMIN_TOKEN", raising=False)
    auth = {"Authorization": f"Bearer {WRITE_TOKEN}"}
    async with (
        SqliteJournal(path) as journal,
        app(journal, world, token=WRITE_TOKEN, definition=definition) as (root, client),
    ):
        assert client is not None
        url = str(client.base_url).rstrip("/")
        coordinator = root.ref("sagas")
        with pytest.raises(CompensationFailed):
            await coordinator.ask(StartSaga("order", saga_id="cf"))
        await coordinator.ask(StartSaga("order", saga_id="busy", wait=False))

        async def both_listed() -> Any:
            page = (await client.get("/api/resilience/sagas")).json()
            phases = {s["saga_id"]: s["phase"] for s in page["items"]}
            return phases if phases.get("busy") == "step_in_flight" else None

        phases = await until(both_listed, "the failed saga and the held one are listed")
        assert phases == {"cf": "compensation_failed", "busy": "step_in_flight"}

        assert (await client.post("/api/resilience/sagas/cf/discard")).status_code == 401
        refused = await client.post("/api/resilience/sagas/busy/discard", headers=auth)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "saga_not_finished"
        assert "'busy' is step_in_flight" in refused.json()["error"]["message"]
        unknown = await client.post("/api/resilience/sagas/nope/discard", headers=auth)
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "unknown_saga")

        code, out, err = await aura("discard", url, "cf")
        assert (code, out) == (1, "")
        assert "discard needs the admin API's write token" in err
        monkeypatch.setenv("AURA_ADMIN_TOKEN", WRITE_TOKEN)
        with caplog.at_level("WARNING", logger="supervisors.admin"):
            code, out, err = await aura("discard", url, "cf")
        assert (code, err) == (0, "")
        assert out == "saga cf (compensation_failed) discarded from the journal\n"
        assert any(
            "saga 'cf' (order, compensation_failed) discarded from the journal by an operator"
            in r.getMessage()
            for r in caplog.records
        )
        assert (await client.get("/api/resilience/sagas/cf")).status_code == 404
        page = (await client.get("/api/resilience/sagas")).json()
        assert [s["saga_id"] for s in page["items"]] == ["busy"]
        code, _, err = await aura("discard", url, "cf")
        assert code == 1
        assert "the saga coordinator has no saga 'cf'" in err
        code, _, err = await aura("discard", url, "busy")
        assert code == 1
        assert "only a saga that ended can be discarded" in err
        assert await journal.get("busy") is not None
    async with SqliteJournal(path) as reopened:
        assert await reopened.get("cf") is None
        assert await reopened.get("busy") is not None
