"""One instance of a fleet, run as a process by the multi-process fleet tests.

``python -m tests.fleet_instance --redis URL --prefix P --instance NAME [--break-seconds S]``
opens the fleet member (short timings) and a tree with a monitor and two provider actors
sharing everything with the fleet:

* ``flaky`` takes unkeyed calls: its service answers ``payload@instance``, fails with the
  category its mode names (``network``: path-local, ``dependency``: provider-wide) or blocks
  until released (``block``);
* ``keys`` takes keyed calls: its service sleeps 20 ms and answers ``payload@instance``
  (``block``: until released).  Both count their runs (per payload for ``keys``).

It prints ``PORT n`` once it listens for control requests on 127.0.0.1:n: one JSON line per
connection, answered with one JSON line (see :func:`handle`).  It runs until killed.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections import Counter
from typing import Any

import msgspec
import trio

from actors import (
    CircuitOpen,
    FleetProviderSettings,
    FleetSettings,
    GetHealth,
    MonitorActor,
    open_fleet,
)
from actors._policies._breaker import BreakerSettings
from actors._policies._config._schema import ProviderSettings
from actors._policies._retry import RetrySettings
from actors._provider._actor import ProviderActor
from actors._provider._client import Provider
from actors.chaos import fault
from supervisors import ChildSpec, open_supervisor


class Service:
    """A fake service whose behaviour the test sets (see the module docstring)."""

    def __init__(self, instance: str, delay: float) -> None:
        self.instance = instance
        self.delay = delay
        self.mode = "ok"
        self.runs: Counter[str] = Counter()
        self.release = trio.Event()

    async def __call__(self, payload: Any) -> Any:
        self.runs[str(payload)] += 1
        if self.mode == "block":
            await self.release.wait()
        elif self.mode != "ok":
            raise fault(self.mode)
        if self.delay:
            await trio.sleep(self.delay)
        return f"{payload}@{self.instance}"


class Instance:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.services = {
            "flaky": Service(args.instance, 0.0),
            "keys": Service(args.instance, 0.02),
        }
        self.providers: dict[str, Provider[Any, Any]] = {}
        self.root: Any = None
        self.fleet: Any = None
        self.pending: dict[int, Any] = {}
        self.finished: dict[int, Any] = {}
        self.next_id = 0

    def settings(self) -> FleetSettings:
        return FleetSettings(
            redis_url=self.args.redis,
            key_prefix=self.args.prefix,
            instance_id=self.args.instance,
            # Generous: a store call that times out on a loaded machine counts as the store
            # being down, and this fleet's providers then run keys locally ("local").  A
            # store that is really down (killed) refuses connections at once.
            command_timeout=2.0,
            connect_timeout=2.0,
            heartbeat_interval=0.2,
            instance_ttl=1.0,
            refresh_interval=0.25,
            stale_after=1.0,
            probe_lease=3.0,
            idempotency_lease=1.0,
            idempotency_poll=0.1,
        )

    async def run(self) -> None:
        provider = ProviderSettings(
            breaker=BreakerSettings(failure_threshold=2, break_duration=self.args.break_seconds),
            retry=RetrySettings(max_attempts=1, attempt_timeout=60.0),
            fleet=FleetProviderSettings(on_store_down="local"),
        )
        async with open_fleet(self.settings()) as fleet:
            self.fleet = fleet
            specs = [ChildSpec("monitor", MonitorActor)]
            for name, service in self.services.items():
                specs.append(
                    ChildSpec(
                        name,
                        lambda n=name, s=service: ProviderActor(
                            n, s, provider, monitor="monitor", fleet=fleet, report_interval=0.05
                        ),
                    )
                )
            async with open_supervisor(specs) as root, trio.open_nursery() as nursery:
                self.root = root
                self.providers = {name: Provider(root.ref(name)) for name in self.services}
                self.nursery = nursery
                listeners = await nursery.start(
                    functools.partial(trio.serve_tcp, self.serve, 0, host="127.0.0.1")
                )
                port = listeners[0].socket.getsockname()[1]
                print(f"PORT {port}", flush=True)

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            try:
                answer = await self.handle(json.loads(data))
            except Exception as exc:  # a broken request: say so, keep serving
                answer = {"failed": f"{type(exc).__name__}: {exc}"}
            await stream.send_all(msgspec.json.encode(answer) + b"\n")

    async def call(self, provider: str, payload: Any, key: str | None, seconds: float) -> Any:
        try:
            return {"ok": await self.providers[provider].call(payload, key=key, timeout=seconds)}
        except CircuitOpen as exc:
            return {"error": "CircuitOpen", "fleet": exc.fleet}
        except Exception as exc:
            return {"error": type(exc).__name__, "message": str(exc)[:200]}

    async def handle(self, request: dict[str, Any]) -> Any:
        """The control requests:

        * ``call``: ``provider``, ``payload``, ``key``, ``timeout``: the call's outcome
          (``{"ok": value}`` or ``{"error": type, ...}``);
        * ``start``: the same, in the background: answers ``{"id": n}`` at once;
        * ``batch``: ``provider``, ``items`` (``[payload, key]`` pairs), ``timeout``: every
          call at once, concurrently; answers their outcomes in order;
        * ``result``: ``id``: the outcome of a started call, or ``{"pending": true}``;
        * ``mode``: ``provider``, ``mode``; ``release``: ``provider`` (wakes blocked calls);
        * ``status``: the fleet member's status, the providers' statuses, the runs, health.
        """
        op = request["op"]
        if op == "call":
            return await self.call(
                request["provider"], request["payload"], request.get("key"), request["timeout"]
            )
        if op == "start":
            self.next_id += 1
            ident = self.next_id

            async def background() -> None:
                self.finished[ident] = await self.call(
                    request["provider"], request["payload"], request.get("key"), request["timeout"]
                )

            self.nursery.start_soon(background)
            return {"id": ident}
        if op == "result":
            return self.finished.get(request["id"], {"pending": True})
        if op == "batch":
            results: list[Any] = [None] * len(request["items"])

            async def one(index: int, payload: Any, key: str | None) -> None:
                results[index] = await self.call(
                    request["provider"], payload, key, request["timeout"]
                )

            async with trio.open_nursery() as nursery:
                for index, (payload, key) in enumerate(request["items"]):
                    nursery.start_soon(one, index, payload, key)
            return results
        if op == "mode":
            service = self.services[request["provider"]]
            service.mode = request["mode"]
            if service.mode != "block":
                service.release.set()
                service.release = trio.Event()
            return {"mode": service.mode}
        if op == "release":
            service = self.services[request["provider"]]
            service.release.set()
            service.release = trio.Event()
            return {}
        if op == "status":
            health = await self.root.ref("monitor").ask(GetHealth())
            return {
                "fleet": msgspec.to_builtins(self.fleet.status()),
                "providers": {
                    name: msgspec.to_builtins(await p.status())
                    for name, p in self.providers.items()
                },
                "runs": {name: dict(s.runs) for name, s in self.services.items()},
                "health": msgspec.to_builtins(health),
            }
        raise ValueError(f"unknown op {op!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--break-seconds", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    trio.run(Instance(args).run)


if __name__ == "__main__":
    main()
