"""A provider actor calling a real HTTP service over loopback with httpx.

Run it with ``python -m examples.http_provider [--seconds S]`` (needs ``httpx``: install the
``cli`` extra, ``pip install 'aura-actors[cli]'``).

The example starts the service itself: a small HTTP/1.1 server on 127.0.0.1 that misbehaves on
a schedule, as real APIs do: it answers 429 with ``Retry-After``, returns 503s for a while (an
outage), answers slower than the attempt timeout, and drops connections without a response.
The ``render`` provider actor calls it with ``httpx.AsyncClient``; its classifier maps
``httpx.HTTPStatusError`` (by status), ``httpx.TimeoutException`` and connection errors to the
error categories; retries honour ``Retry-After``; the circuit breaker opens during the outage
and recovers after it.  The run prints the breaker's transitions and a summary, and exits 0
when the breaker was seen to open and close again.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, deque
from typing import Any

import trio

from actors import (
    AuraError,
    BackoffSettings,
    BreakerSettings,
    GetBreaker,
    MonitorActor,
    Provider,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
)
from supervisors import ChildSpec, SupervisorSpec, open_supervisor

# The service's schedule, in seconds since it started: (start, end, behaviour).
SCHEDULE: list[tuple[float, float, str]] = [
    (1.0, 1.6, "429"),
    (2.5, 4.5, "503"),
    (5.5, 6.0, "slow"),
    (6.5, 7.0, "drop"),
]


class FlakyHTTPServer:
    """A minimal HTTP/1.1 server on loopback that misbehaves on a schedule.

    Behaviours: ``ok``, ``429`` (with ``Retry-After: retry_after``), ``503``, ``slow`` (answers
    after ``slow_for`` seconds), ``drop`` (closes the connection without a response).  A
    :attr:`script` of behaviours, if not empty, decides the next requests one by one (the tests
    use it); else the query parameter ``?mode=``; else the schedule.  Every request is recorded
    in :attr:`requests` as ``(time, path, behaviour)``.
    """

    def __init__(self, schedule: list[tuple[float, float, str]] | None = None) -> None:
        self.schedule = schedule or []
        self.requests: list[tuple[float, str, str]] = []
        self.script: deque[str] = deque()
        self.port = 0
        self.started = 0.0
        self.retry_after = 1
        self.slow_for = 5.0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self.started = trio.current_time()
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def behaviour(self, path: str) -> str:
        if self.script:
            return self.script.popleft()
        if "mode=" in path:
            return path.split("mode=", 1)[1].split("&", 1)[0]
        elapsed = trio.current_time() - self.started
        for start, end, what in self.schedule:
            if start <= elapsed < end:
                return what
        return "ok"

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            line = request.split(b"\r\n", 1)[0].decode("latin-1")
            path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
            what = self.behaviour(path)
            self.requests.append((trio.current_time(), path, what))
            if what == "drop":
                return  # close without a response
            if what == "slow":
                await trio.sleep(self.slow_for)
            if what == "429":
                await self._respond(stream, 429, {"error": "rate limited"},
                                    {"Retry-After": str(self.retry_after)})  # fmt: skip
            elif what == "503":
                await self._respond(stream, 503, {"error": "overloaded"})
            else:
                await self._respond(stream, 200, {"rendered": path})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    @staticmethod
    async def _respond(
        stream: trio.SocketStream, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        reason = {200: "OK", 429: "Too Many Requests", 503: "Service Unavailable"}[status]
        payload = json.dumps(body).encode()
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
                f"Content-Length: {len(payload)}", "Connection: close"]  # fmt: skip
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await stream.send_all(("\r\n".join(head) + "\r\n\r\n").encode() + payload)


def http_service(base_url: str) -> Any:
    """The provider function: GET ``base_url + payload``, raise on error statuses."""
    import httpx

    client = httpx.AsyncClient(base_url=base_url)

    async def call(path: str) -> Any:
        response = await client.get(path)
        response.raise_for_status()
        return response.json()

    return call


def settings() -> ProviderSettings:
    """Short timeouts so the demo fits in a few seconds."""
    return ProviderSettings(
        retry=RetrySettings(
            max_attempts=3,
            attempt_timeout=1.0,
            total_timeout=5.0,
            backoff=BackoffSettings(kind="exponential", base_delay=0.1, max_delay=1.0),
        ),
        breaker=BreakerSettings(
            failure_threshold=5, break_duration=1.0, window=10.0, minimum_throughput=10
        ),
    )


async def main(seconds: float) -> int:
    server = FlakyHTTPServer(SCHEDULE)
    transitions: list[str] = []
    outcomes: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        base = f"http://127.0.0.1:{port}"
        tree = SupervisorSpec(
            "app",
            [
                ChildSpec("monitor", MonitorActor),
                ChildSpec(
                    "render",
                    lambda: ProviderActor(
                        "render",
                        http_service(base),
                        settings(),
                        monitor="monitor",
                        report_interval=0.1,
                    ),
                ),
            ],
        )
        async with open_supervisor(tree) as root:
            render = Provider(root.ref("render"))
            monitor = root.ref("monitor")
            stop_at = trio.current_time() + seconds
            last = "closed"
            i = 0
            while trio.current_time() < stop_at:
                i += 1
                try:
                    await render.call(f"/render?frame={i}", timeout=6.0)
                except AuraError as exc:
                    outcomes[type(exc).__name__] += 1
                else:
                    outcomes["ok"] += 1
                state = (await render.status()).breaker
                if state != last:
                    at = trio.current_time() - server.started
                    transitions.append(f"{at:5.2f}s {last} -> {state}")
                    last = state
                await trio.sleep(0.05)
            await trio.sleep(0.2)
            info = await monitor.ask(GetBreaker("render"))
            status = await render.status()
        nursery.cancel_scope.cancel()

    print("\nbreaker transitions (seen by the caller):")
    for line in transitions:
        print(f"  {line}")
    seen = Counter(what for _, _, what in server.requests)
    print(f"\nserver saw {len(server.requests)} requests: {dict(seen)}")
    print(f"caller outcomes: {dict(outcomes)}")
    print(f"provider: attempts={status.attempts} retries={status.retries} "
          f"breaker={status.breaker}; monitor: trips={info.trips}")  # fmt: skip
    opened = any("-> open" in t for t in transitions) or info.trips > 0
    recovered = status.breaker == "closed"
    if not (opened and recovered):
        print("the breaker was not seen to open and recover: run longer (--seconds)")
        return 1
    print("\nthe breaker opened during the outage and recovered after it")
    return 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    return trio.run(main, args.seconds)


if __name__ == "__main__":
    sys.exit(cli())
