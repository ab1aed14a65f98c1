"""A fleet of three instance processes sharing one real Redis (started by the suite when
``AURA_TEST_REDIS_URL`` is unset): the quorum trip holds everywhere, one probe runs fleet-wide,
200 keyed calls over 20 keys run each key once, Redis dying mid-run degrades and then recovers,
and a joiner takes a key over after its owner is killed with SIGKILL.

Each instance is ``python -m tests.fleet_instance`` (see there), driven over a loopback control
socket.  Nothing here sleeps to wait for something: conditions are polled with deadlines.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from actors.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 30.0


class Child:
    """One instance process and its control socket."""

    def __init__(self, name: str, process: trio.Process, port: int) -> None:
        self.name = name
        self.process = process
        self.port = port

    async def request(self, **message: Any) -> Any:
        with trio.fail_after(DEADLINE):
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            async with stream:
                await stream.send_all(json.dumps(message).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = await stream.receive_some(1 << 20)
                    assert chunk, f"instance {self.name} closed the connection"
                    data += chunk
        answer = json.loads(data)
        assert not (isinstance(answer, dict) and "failed" in answer), answer
        return answer

    async def call(self, provider: str, payload: Any, key: str | None = None) -> Any:
        return await self.request(
            op="call", provider=provider, payload=payload, key=key, timeout=20
        )

    async def status(self) -> Any:
        return await self.request(op="status")

    async def fleet_state(self, provider: str) -> str:
        breakers = (await self.status())["fleet"]["breakers"]
        return str(next(b["state"] for b in breakers if b["service"] == provider))


async def start_child(name: str, url: str, prefix: str, log: Path, **options: Any) -> Child:
    command = [
        sys.executable, "-m", "tests.fleet_instance",
        "--redis", url, "--prefix", prefix, "--instance", name,
    ]  # fmt: skip
    for option, value in options.items():
        command += [f"--{option.replace('_', '-')}", str(value)]
    with log.open("ab") as stderr:
        process = await trio.lowlevel.open_process(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr
        )
    assert process.stdout is not None
    line = b""
    with trio.fail_after(60):  # an import on a loaded 2-core machine
        while not line.endswith(b"\n"):
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                text = await trio.Path(log).read_text()
                raise AssertionError(f"instance {name} exited: {text[-2000:]}")
            line += chunk
    assert line.startswith(b"PORT "), line
    return Child(name, process, int(line.split()[1]))


@contextlib.asynccontextmanager
async def fleet(url: str, tmp_path: Path, **options: Any) -> AsyncIterator[list[Child]]:
    """Three instances ``a``, ``b``, ``c`` on ``url``, under a key prefix of their own, killed
    at the end.  Yields once each sees three live instances."""
    prefix = f"procs-{secrets.token_hex(4)}"
    children: list[Child] = []
    try:
        async with trio.open_nursery() as nursery:

            async def start(name: str) -> None:
                log = tmp_path / f"{name}.log"
                children.append(await start_child(name, url, prefix, log, **options))

            for name in "abc":
                nursery.start_soon(start, name)
        children.sort(key=lambda child: child.name)

        async def all_live() -> bool:
            return all([(await c.status())["fleet"]["live"] == 3 for c in children])

        await until(all_live)
        yield children
    finally:
        with trio.CancelScope(shield=True):
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()


async def until(condition: Callable[[], Awaitable[bool]], within: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds (no fixed waits)."""
    with trio.move_on_after(within):
        while not await condition():  # noqa: ASYNC110 (state of other processes)
            await trio.sleep(0.05)
        return
    raise AssertionError("the condition did not hold in time")


def runs(status: Any, provider: str) -> int:
    return sum(status["runs"][provider].values())


# ----------------------------------------------------------------------------------- tests


async def test_a_quorum_trip_holds_everywhere_and_one_probe_runs_fleet_wide(
    redis_url: str, tmp_path: Path
) -> None:
    """Path-local failures: one instance's trip only votes; the second (quorum 2 of 3) opens
    the fleet breaker, and every instance rejects, the third one too although its own breaker
    never tripped.  After the break, 30 concurrent calls over the three instances make
    exactly one service call, whose success closes the fleet breaker everywhere."""
    async with fleet(redis_url, tmp_path, break_seconds=2.0) as (a, b, c):
        for child in (a, b):
            await child.request(op="mode", provider="flaky", mode="network")
            await child.call("flaky", 1)
            await child.call("flaky", 2)
            if child is a:
                status = await a.status()
                assert status["providers"]["flaky"]["breaker"] == "open"

                async def voted() -> bool:
                    breakers = (await a.status())["fleet"]["breakers"]
                    return any(x["service"] == "flaky" and x["votes"] == 1 for x in breakers)

                await until(voted)
                assert await c.fleet_state("flaky") == "closed"
                assert await c.call("flaky", "alone") == {"ok": "alone@c"}

        async def open_everywhere() -> bool:
            return all([await x.fleet_state("flaky") == "open" for x in (a, b, c)])

        await until(open_everywhere)
        c_runs = runs(await c.status(), "flaky")
        for child in (a, b, c):
            answer = await child.call("flaky", "during")
            assert answer["error"] == "CircuitOpen", answer
        assert (await c.call("flaky", "again")) == {"error": "CircuitOpen", "fleet": True}
        assert runs(await c.status(), "flaky") == c_runs
        assert (await c.status())["providers"]["flaky"]["breaker"] == "closed"

        # One probe fleet-wide: every service blocks, so a probe that got through stays in
        # flight while every other call is answered.
        before = sum([runs(await x.status(), "flaky") for x in (a, b, c)])
        refused = sum([(await x.status())["providers"]["flaky"]["rejected"] for x in (a, b, c)])
        for child in (a, b, c):
            await child.request(op="mode", provider="flaky", mode="block")

        async def break_over() -> bool:
            breakers = (await a.status())["fleet"]["breakers"]
            flaky = next(x for x in breakers if x["service"] == "flaky")
            return bool(flaky["retry_after"] == 0.0)

        await until(break_over)
        async with trio.open_nursery() as nursery:
            answers: list[Any] = []

            async def batch(child: Child) -> None:
                items = [[f"p{n}", None] for n in range(10)]
                answers.extend(
                    await child.request(op="batch", provider="flaky", items=items, timeout=20)
                )

            for child in (a, b, c):
                nursery.start_soon(batch, child)

            async def one_probe_in_flight() -> bool:
                total = sum([runs(await x.status(), "flaky") for x in (a, b, c)])
                return total - before >= 1

            await until(one_probe_in_flight)

            async def rest_answered() -> bool:
                statuses = [await x.status() for x in (a, b, c)]
                return sum(s["providers"]["flaky"]["rejected"] for s in statuses) >= refused + 29

            await until(rest_answered)
            assert sum([runs(await x.status(), "flaky") for x in (a, b, c)]) - before == 1
            for child in (a, b, c):
                await child.request(op="mode", provider="flaky", mode="ok")
        assert len(answers) == 30
        assert sum(1 for x in answers if "ok" in x) == 1
        assert sum(1 for x in answers if x.get("error") == "CircuitOpen") == 29

        async def closed_everywhere() -> bool:
            return all([await x.fleet_state("flaky") == "closed" for x in (a, b, c)])

        await until(closed_everywhere)


async def test_200_calls_over_20_keys_run_each_key_once(redis_url: str, tmp_path: Path) -> None:
    """200 keyed calls, 10 per key, spread over three instances and made concurrently: each
    key runs once in the fleet and every caller gets that run's reply."""
    async with fleet(redis_url, tmp_path) as children:
        shares: list[list[list[Any]]] = [[], [], []]
        for n in range(200):
            key = f"k{n % 20}"
            shares[n % 3].append([key, key])
        answers: list[tuple[str, Any]] = []

        async def batch(child: Child, items: list[list[Any]]) -> None:
            got = await child.request(op="batch", provider="keys", items=items, timeout=20)
            answers.extend(zip((key for key, _ in items), got, strict=True))

        async with trio.open_nursery() as nursery:
            for child, items in zip(children, shares, strict=True):
                nursery.start_soon(batch, child, items)
        assert len(answers) == 200
        replies: dict[str, set[str]] = {}
        for key, answer in answers:
            assert "ok" in answer, answer
            replies.setdefault(key, set()).add(answer["ok"])
        assert all(len(values) == 1 for values in replies.values()), replies
        per_key: dict[str, int] = {}
        for child in children:
            for key, count in (await child.status())["runs"]["keys"].items():
                per_key[key] = per_key.get(key, 0) + count
        assert per_key == {f"k{n}": 1 for n in range(20)}


async def test_redis_dying_mid_run_degrades_then_everything_recovers(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """Redis killed mid-run: calls keep working on every instance (under the local policies),
    health is degraded with the fleet store's reason; Redis restarted: the fleet is healthy
    and fresh again by itself and keys are shared again."""
    async with fleet(private_redis.url, tmp_path) as (a, b, c):
        assert (await a.call("keys", "x", "before")) == {"ok": "x@a"}
        assert (await b.call("keys", "x", "before")) == {"ok": "x@a"}
        private_redis.kill()

        async def degraded() -> bool:
            statuses = [await x.status() for x in (a, b, c)]
            return all(
                s["health"]["status"] == "degraded"
                and any("fleet store" in reason for reason in s["health"]["reasons"])
                for s in statuses
            )

        await until(degraded)
        for child in (a, b, c):
            assert (await child.call("flaky", "u")) == {"ok": f"u@{child.name}"}
            assert (await child.call("keys", "y", "during")) == {"ok": f"y@{child.name}"}
            fleet_status = (await child.status())["fleet"]
            assert fleet_status["status"] == "degraded"
            assert not all(x["fresh"] for x in fleet_status["breakers"])
        private_redis.restart()

        async def recovered() -> bool:
            statuses = [await x.status() for x in (a, b, c)]
            return all(
                s["fleet"]["status"] == "healthy"
                and s["fleet"]["live"] == 3
                and all(x["fresh"] for x in s["fleet"]["breakers"])
                and not any("fleet store" in r for r in s["health"]["reasons"])
                for s in statuses
            )

        await until(recovered)
        assert (await c.call("keys", "z", "after")) == {"ok": "z@c"}
        assert (await a.call("keys", "z", "after")) == {"ok": "z@c"}
        assert (await a.status())["runs"]["keys"].get("z", 0) == 0


async def test_a_joiner_takes_a_key_over_after_its_owner_is_killed(
    redis_url: str, tmp_path: Path
) -> None:
    """The owner of a key is killed with SIGKILL mid-call: the caller waiting for that key on
    another instance gets it run there once the owner's lease lapsed."""
    async with fleet(redis_url, tmp_path) as (a, b, _c):
        await a.request(op="mode", provider="keys", mode="block")
        await a.request(op="start", provider="keys", payload="job", key="K", timeout=25)

        async def owner_runs() -> bool:
            return bool((await a.status())["runs"]["keys"].get("job") == 1)

        await until(owner_runs)
        started = await b.request(op="start", provider="keys", payload="job", key="K", timeout=25)

        async def joined() -> bool:
            return bool((await b.status())["fleet"]["idempotency"]["keys"]["joins"] == 1)

        await until(joined)
        assert (await b.request(op="result", id=started["id"])) == {"pending": True}
        os.kill(a.process.pid, signal.SIGKILL)
        await a.process.wait()

        async def answered() -> bool:
            return "pending" not in await b.request(op="result", id=started["id"])

        await until(answered)
        assert (await b.request(op="result", id=started["id"])) == {"ok": "job@b"}
        status = await b.status()
        assert status["fleet"]["idempotency"]["keys"]["takeovers"] == 1
        assert status["runs"]["keys"]["job"] == 1
