"""The seed's VideoGeneration saga over provider actors, with a durable journal.

Run it with ``python -m examples.video_pipeline [--seed N] [--sagas N] [--journal PATH]``.

The tree::

    (root)
    ├── monitor        provider reports, breaker states, saga reports (alerts)
    ├── providers      one_for_one
    │   ├── llm        writes the script        (compensation: discard the draft)
    │   ├── images     generates the images     (compensation: delete them)
    │   └── render     renders the video        (compensation: delete it)
    └── sagas          the saga coordinator; its journal is a SQLite file

Each video is one saga: ``generate_script -> generate_images -> render_video``.  The three
services are simulated (in memory, real time, a few hundred milliseconds per call) with
seeded faults: dropped connections now and then (the provider actors retry them), some
requests rejected for good (an image prompt refused by the content filter, a scene the renderer
cannot draw), a render that hangs past the step's timeout (its outcome is uncertain, so it is
compensated too), and deletions that fail once.  A saga whose step fails for good is
compensated: what it had created is deleted, last step first.  Every message carries the
idempotency key ``{saga_id}:{step}`` (``...:compensate`` for compensations), which the
services use to apply each effect once.

The journal is a temporary file unless ``--journal PATH`` is given; with a path, a run that
was interrupted (Ctrl-C, ``kill -9``) is finished by the next run over the same file.  At the
end the example prints one line per saga (outcome, steps done, compensations) and checks that
completed videos have all their parts and compensated ones left nothing behind.  It exits 0
when every saga completed or was compensated.
"""

from __future__ import annotations

import argparse
import logging
import random
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from actors import (
    BackoffSettings,
    BreakerSettings,
    GetSaga,
    GetSagaStatistics,
    MonitorActor,
    ProviderActor,
    ProviderSettings,
    RetrySettings,
    SagaCoordinator,
    SagaDefinition,
    SagaFailed,
    SagaInfo,
    SagaStep,
    SqliteJournal,
    StartSaga,
    StepContext,
)
from supervisors import ChildSpec, Supervisor, SupervisorSpec, open_supervisor

TOPICS = (
    "owls at dusk",
    "how tides work",
    "a bread recipe",
    "the moon landing",
    "knitting basics",
    "volcanoes",
    "a city at night",
    "honeybees",
    "the water cycle",
    "paper airplanes",
    "glaciers",
    "street food",
)

#: Planned faults, drawn per saga: (probability, fault).
FAULTS = (
    (0.12, "images_refused"),  # the content filter refuses the image prompts: compensate
    (0.10, "render_refused"),  # the renderer cannot draw a scene: compensate
    (0.08, "render_hangs"),  # the render outlives the step's timeout: uncertain, compensate
)


class RequestRefused(ValueError):
    """A request the service will never accept (classified as a validation error)."""


class Studio:
    """The three simulated services and what they store, keyed by idempotency key.

    Ground truth for the final check: ``scripts``, ``images`` and ``videos`` hold what exists
    now; ``applied`` counts effects per key (a key is never applied twice).
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"studio:{seed}")
        self.faults: dict[str, str] = {}  # saga id -> planned fault
        self.scripts: dict[str, str] = {}  # saga id -> script
        self.images: dict[str, list[str]] = {}  # saga id -> image names
        self.videos: dict[str, str] = {}  # saga id -> video name
        self.applied: dict[str, Any] = {}  # idempotency key -> result
        self.failed_deletions: set[str] = set()

    async def _work(self, low: float, high: float) -> None:
        await trio.sleep(self.rng.uniform(low, high))
        if self.rng.random() < 0.08:
            raise ConnectionResetError("connection reset by peer")  # transient: retried

    def _once(self, key: str, effect: Callable[[], Any]) -> Any:
        if key not in self.applied:
            self.applied[key] = effect()
        return self.applied[key]

    async def llm(self, request: dict[str, Any]) -> Any:
        saga, key = request["saga"], request["key"]
        await self._work(0.05, 0.15)
        if request["op"] == "discard":
            return self._once(key, lambda: _remove(self.scripts, saga))
        scenes = [f"{request['topic']}, scene {i + 1}" for i in range(3)]
        return self._once(key, lambda: _put(self.scripts, saga, " / ".join(scenes)) and scenes)

    async def paint(self, request: dict[str, Any]) -> Any:
        saga, key = request["saga"], request["key"]
        await self._work(0.1, 0.3)
        if request["op"] == "delete":
            return self._once(key, lambda: self._delete(key, self.images, saga))
        if self.faults.get(saga) == "images_refused":
            raise RequestRefused("the content filter refused an image prompt")
        names = [f"{saga}-img{i}.png" for i in range(len(request["scenes"]))]
        return self._once(key, lambda: _put(self.images, saga, names))

    async def render(self, request: dict[str, Any]) -> Any:
        saga, key = request["saga"], request["key"]
        if request["op"] == "delete":
            await self._work(0.05, 0.1)
            return self._once(key, lambda: self._delete(key, self.videos, saga))
        fault = self.faults.get(saga)
        if fault == "render_hangs":
            self._once(key, lambda: _put(self.videos, saga, f"{saga}.partial.mp4"))
            await trio.sleep(3600)  # the step's timeout cuts it short; the file stays
        await self._work(0.2, 0.5)
        if fault == "render_refused":
            raise RequestRefused(f"cannot render {request['images'][-1]}")
        return self._once(key, lambda: _put(self.videos, saga, f"{saga}.mp4"))

    def _delete(self, key: str, store: dict[str, Any], saga: str) -> str:
        if key not in self.failed_deletions and self.rng.random() < 0.3:
            self.failed_deletions.add(key)  # fails once, with a transient error
            raise ConnectionResetError("storage unavailable")
        return _remove(store, saga)


def _put(store: dict[str, Any], saga: str, value: Any) -> Any:
    store[saga] = value
    return value


def _remove(store: dict[str, Any], saga: str) -> str:
    return "deleted" if store.pop(saga, None) is not None else "nothing to delete"


def video_saga() -> SagaDefinition:
    """generate_script -> generate_images -> render_video, each undone by a deletion."""

    def request(op: str, **fields: Callable[[StepContext], Any]) -> Callable[[StepContext], Any]:
        def build(ctx: StepContext) -> dict[str, Any]:
            message = {"op": op, "saga": ctx.saga_id, "key": ctx.key}
            message.update({name: field(ctx) for name, field in fields.items()})
            return message

        return build

    deletions = RetrySettings(
        max_attempts=5,
        retry_on=["network", "timeout", "dependency", "unknown"],
        total_timeout=10.0,
        backoff=BackoffSettings(kind="exponential", base_delay=0.05, jitter="full"),
    )
    return SagaDefinition(
        "video",
        [
            SagaStep(
                "generate_script",
                "providers/llm",
                action=request("write", topic=lambda ctx: ctx.input["topic"]),
                compensate=request("discard"),
                timeout=3.0,
                compensation_retry=deletions,
            ),
            SagaStep(
                "generate_images",
                "providers/images",
                action=request("paint", scenes=lambda ctx: ctx.result("generate_script")),
                compensate=request("delete"),
                timeout=3.0,
                compensation_retry=deletions,
            ),
            SagaStep(
                "render_video",
                "providers/render",
                action=request("render", images=lambda ctx: ctx.result("generate_images")),
                compensate=request("delete"),
                timeout=1.5,
                compensation_retry=deletions,
            ),
        ],
        compensation_deadline=30.0,
    )


def provider_settings() -> ProviderSettings:
    """Quick retries of dropped connections; a breaker that recovers within a second."""
    return ProviderSettings(
        retry=RetrySettings(
            max_attempts=3,
            attempt_timeout=2.0,
            backoff=BackoffSettings(kind="constant", base_delay=0.05, jitter="none"),
        ),
        breaker=BreakerSettings(break_duration=0.5),
    )


def build_tree(journal: SqliteJournal, studio: Studio) -> SupervisorSpec:
    """The example tree over an open journal and the simulated services."""
    settings = provider_settings()
    services = {"llm": studio.llm, "images": studio.paint, "render": studio.render}

    def provider(name: str) -> ChildSpec[Any, Any]:
        function = services[name]
        return ChildSpec(
            name, lambda: ProviderActor(name, function, settings, monitor="monitor"), shutdown=1.0
        )

    definition = video_saga()
    return SupervisorSpec(
        "studio",
        [
            ChildSpec("monitor", MonitorActor),
            SupervisorSpec("providers", [provider(name) for name in services]),
            ChildSpec(
                "sagas",
                lambda: SagaCoordinator(journal, [definition], monitor="monitor"),
                shutdown=1.0,
            ),
        ],
    )


async def produce(root: Supervisor, studio: Studio, count: int, seed: int) -> list[str]:
    """Start ``count`` video sagas at once; wait for every one to end.  Their ids."""
    rng = random.Random(f"faults:{seed}")
    tag = secrets.token_hex(2)
    coordinator = root.ref("sagas")
    ids = []
    for n in range(count):
        saga_id = f"video-{n + 1:02d}-{tag}"
        roll = rng.random()
        for probability, fault in FAULTS:
            if roll < probability:
                studio.faults[saga_id] = fault
                break
            roll -= probability
        ids.append(saga_id)

    async def one(saga_id: str, topic: str) -> None:
        try:
            await coordinator.ask(StartSaga("video", {"topic": topic}, saga_id=saga_id), timeout=60)
        except SagaFailed:
            pass  # the table shows how it ended

    async with trio.open_nursery() as nursery:
        for n, saga_id in enumerate(ids):
            nursery.start_soon(one, saga_id, TOPICS[n % len(TOPICS)])
    return ids


def _short(step: str) -> str:
    return step.removeprefix("generate_").removesuffix("_video")


def check(info: SagaInfo, studio: Studio) -> str | None:
    """What is wrong with a finished saga's leftovers, if anything."""
    saga = info.saga_id
    parts = {
        "script": saga in studio.scripts,
        "images": saga in studio.images,
        "video": saga in studio.videos,
    }
    if info.phase == "completed":
        missing = [name for name, present in parts.items() if not present]
        return f"completed without its {', '.join(missing)}" if missing else None
    if info.phase == "compensated":
        left = [name for name, present in parts.items() if present]
        return f"compensated but its {', '.join(left)} remain" if left else None
    return f"ended {info.phase}"


async def main(seed: int, count: int, journal_path: Path) -> int:
    studio = Studio(seed)
    async with (
        SqliteJournal(journal_path) as journal,
        open_supervisor(build_tree(journal, studio), seed=seed) as root,
    ):
        resumed = (await root.ref("sagas").ask(GetSagaStatistics())).recovered
        started = trio.current_time()
        ids = await produce(root, studio, count, seed)
        elapsed = trio.current_time() - started
        infos = [await root.ref("sagas").ask(GetSaga(saga_id)) for saga_id in ids]
        stats = await root.ref("sagas").ask(GetSagaStatistics())

    print(
        f"\nvideo pipeline: seed={seed}, {count} sagas in {elapsed:.1f} s, journal {journal_path}"
    )
    if resumed:
        print(f"resumed {resumed} unfinished saga(s) left in the journal by an earlier run")
    print(f"\n{'saga':<16} {'outcome':<12} {'steps done':<24} {'compensated':<24} fault")
    problems = []
    for info in infos:
        done = ", ".join(_short(step) for step in info.completed_steps) or "-"
        undone = ", ".join(_short(step) for step in info.compensated) or "-"
        fault = studio.faults.get(info.saga_id, "")
        print(f"{info.saga_id:<16} {info.phase:<12} {done:<24} {undone:<24} {fault}")
        problem = check(info, studio)
        if problem is not None:
            problems.append(f"{info.saga_id}: {problem}")
    outcomes = [info.phase for info in infos]
    print(
        f"\n{outcomes.count('completed')} completed, {outcomes.count('compensated')} "
        f"compensated; {stats.steps_sent} steps and {stats.compensations_sent} compensations "
        f"sent ({stats.step_retries + stats.compensation_retries} retried by the coordinator)"
    )
    if "compensated" not in outcomes:
        print("note: no saga needed compensation with this seed")
    for problem in problems:
        print(f"INVARIANT VIOLATED: {problem}")
    print("\nevery saga completed or was compensated, nothing left behind" if not problems else "")
    return 1 if problems else 0


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sagas", type=int, default=12, help="videos to produce")
    parser.add_argument("--journal", type=Path, help="the journal file (default: a temp file)")
    parser.add_argument("--verbose", action="store_true", help="log saga and supervision events")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if args.journal is not None:
        return trio.run(main, args.seed, args.sagas, args.journal)
    with tempfile.TemporaryDirectory(prefix="aura-sagas-") as directory:
        return trio.run(main, args.seed, args.sagas, Path(directory) / "journal.db")


if __name__ == "__main__":
    sys.exit(cli())
