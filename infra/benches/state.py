"""Benchmark of the feature job holding a large state (`make bench-state`).

On the running local stack, for each state backend (--backends; the first is make demo's
KF_STATE_BACKEND), with the job as `make demo` runs it (MiniCluster, sample log on), one after the
other on a topic of their own:

1. Load: one event of each of --users users (default 1,000,000) gives the job their state
   (each user's state and remembered event ids, each item's state): events/s.
2. Burst: --events synthetic events over the same users: events/s, the job's resident memory, and
   every checkpoint completed from the load to the end of the burst, from the job's REST API:
   what it wrote (Flink's checkpointed size), the full state it covers, and its duration.
3. Restore: once a checkpoint completed after the burst, kill -9 of all the job's processes,
   --after-kill more events published, and the job started again, resuming from its newest
   checkpoint: seconds until every task runs (state restored), and until every event is in Redis.
"""

import argparse
import re
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

import orjson
from rich.console import Console
from rich.table import Table

from infra.benches.stream import (
    BENCH_ITEMS,
    Configuration,
    Job,
    forget,
    forget_topic,
    fresh_topic,
    population,
    processed,
    produce_all,
    serialized,
    wait_until,
    wait_until_processed,
)
from infra.stack import FlinkRest
from schemas.config import Settings
from schemas.runtime.feature_store import FeatureStore
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec

console = Console(stderr=True)
REST_LINE = re.compile(r"Rest endpoint listening at (?P<address>\S+:\d+)")
LOAD_WITHIN_S = 3600.0


@dataclass(frozen=True)
class Checkpoint:
    """One completed checkpoint as Flink's REST API reports it."""

    id: int
    phase: str
    checkpointed_bytes: int
    state_bytes: int
    duration_ms: int


@dataclass
class StateResult:
    backend: str
    users: int
    load_events_per_s: float
    burst_events_per_s: float
    resident_bytes: int
    checkpoint_directory_bytes: int
    restored_checkpoint: int | None
    restart_to_running_s: float
    restart_to_caught_up_s: float
    checkpoints: list[Checkpoint] = field(default_factory=list)


def job_rest(job: Job) -> FlinkRest:
    """The REST API of a job's MiniCluster, at the address the job's Flink log announces."""

    def announced() -> str | None:
        text = "\n".join(path.read_text(errors="replace") for path in job.log_dir.glob("flink-*.log"))
        match = REST_LINE.search(text)
        return match["address"] if match else None

    wait_until(lambda: announced() is not None, job, "REST is up")
    return FlinkRest(f"http://{announced()}")


def job_id_of(rest: FlinkRest, job: Job) -> str:
    wait_until(lambda: bool(rest.job_ids()), job, "the job is submitted")
    return rest.job_ids()[0]


class CheckpointWatch:
    """Collects a job's completed checkpoints while waiting (Flink's history keeps only the newest few)."""

    def __init__(self, rest: FlinkRest, job: Job, job_id: str):
        self.rest, self.job, self.job_id = rest, job, job_id
        self.seen: dict[int, Checkpoint] = {}
        self.phase = "load"

    def poll(self) -> None:
        for c in self.rest.completed_checkpoints(self.job_id):
            if c["id"] not in self.seen:
                self.seen[c["id"]] = Checkpoint(
                    c["id"], self.phase, c["checkpointed_size"], c["state_size"], c["end_to_end_duration"]
                )

    def until(self, condition, what: str, within_s: float = LOAD_WITHIN_S) -> float:
        def polled() -> bool:
            self.poll()
            return condition()

        return wait_until(polled, self.job, what, within_s)


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def measure(settings: Settings, backend: str, records: list[tuple[bytes, bytes]], state_count: int,
            arguments: argparse.Namespace, store: FeatureStore) -> StateResult:  # fmt: skip
    configuration = Configuration(f"KF_STATE_BACKEND={backend}", True, environment={"KF_STATE_BACKEND": backend})
    topic, namespace = fresh_topic(settings, "bench-state"), f"bench-state-{uuid.uuid4().hex[:8]}"
    console.print(f"[bold]{configuration.label}[/]: publishing {len(records):,} events to {topic} ...")
    produce_all(settings, topic, records)
    job = Job(settings, configuration, topic, namespace)
    try:
        rest = job_rest(job)
        watch = CheckpointWatch(rest, job, job_id_of(rest, job))
        console.print(f"  loading the state of {arguments.users:,} users ...")
        started = watch.until(lambda: processed(store, namespace) >= 1, "the first event")
        loaded = watch.until(lambda: processed(store, namespace) >= state_count, "the users' events")
        watch.phase = "burst"
        console.print(f"  the burst of {len(records) - state_count:,} events ...")
        burst_done = watch.until(lambda: processed(store, namespace) >= len(records), "the burst")
        resident = job.resident_bytes()
        watch.phase = "after the burst"
        after_burst = len(watch.seen)
        watch.until(lambda: len(watch.seen) > after_burst, "a checkpoint after the burst")
        console.print("  kill -9, then a restart from the newest checkpoint ...")
        job.kill()
        checkpoint_bytes = directory_bytes(settings.stack.checkpoints_dir / namespace)
        produce_all(settings, topic, extra_records(arguments))
        for log in job.log_dir.glob("flink-*.log"):  # the restarted job's REST address is the only one left
            log.rename(log.with_suffix(".killed"))
        restarted_at = time.monotonic()
        job = Job(settings, configuration, topic, namespace, fresh=False)
        rest = job_rest(job)
        job_id = job_id_of(rest, job)
        running = wait_until(lambda: rest.all_tasks_running(job_id), job, "every task runs", LOAD_WITHIN_S)
        total = len(records) + arguments.after_kill
        caught_up = wait_until_processed(store, namespace, total, job, LOAD_WITHIN_S)
        result = StateResult(
            backend=backend,
            users=arguments.users,
            load_events_per_s=state_count / (loaded - started),
            burst_events_per_s=(len(records) - state_count) / (burst_done - loaded),
            resident_bytes=resident,
            checkpoint_directory_bytes=checkpoint_bytes,
            restored_checkpoint=rest.restored_checkpoint(job_id),
            restart_to_running_s=running - restarted_at,
            restart_to_caught_up_s=caught_up - restarted_at,
            checkpoints=sorted(watch.seen.values(), key=lambda c: c.id),
        )
        shutil.rmtree(job.log_dir, ignore_errors=True)  # kept when the measurement fails
        return result
    finally:
        job.stop()
        forget(settings, store, namespace)
        forget_topic(settings, topic)


def extra_records(arguments: argparse.Namespace) -> list[tuple[bytes, bytes]]:
    world = SyntheticWorld(WorldSpec(users=arguments.users, items=BENCH_ITEMS, seed=11))
    return serialized(event.model_copy(update={"event_id": f"after-kill:{event.event_id}"})
                      for event in world.events(arguments.after_kill))  # fmt: skip


def report(results: list[StateResult]) -> None:
    out = Console(width=150)
    mb = 1e6
    table = Table("backend", "load events/s", "burst events/s", "job RSS", "checkpoint dir", "restart → tasks running",
                  "restart → caught up", title=f"the job holding {results[0].users:,} users' state")  # fmt: skip
    for r in results:
        table.add_row(r.backend, f"{r.load_events_per_s:,.0f}", f"{r.burst_events_per_s:,.0f}",
                      f"{r.resident_bytes / mb:,.0f} MB", f"{r.checkpoint_directory_bytes / mb:,.0f} MB",
                      f"{r.restart_to_running_s:.1f} s", f"{r.restart_to_caught_up_s:.1f} s")  # fmt: skip
    out.print(table)
    checkpoints = Table("backend", "during", "checkpoints", "written: median", "max", "full state: max",
                        "duration: median", "max", title="completed checkpoints")  # fmt: skip
    for r in results:
        for phase in ("load", "burst", "after the burst"):
            if taken := [c for c in r.checkpoints if c.phase == phase]:
                written, durations = [c.checkpointed_bytes / mb for c in taken], [c.duration_ms / 1000 for c in taken]
                checkpoints.add_row(r.backend, phase, str(len(taken)), f"{median(written):,.1f} MB",
                                    f"{max(written):,.1f} MB", f"{max(c.state_bytes for c in taken) / mb:,.1f} MB",
                                    f"{median(durations):,.1f} s", f"{max(durations):,.1f} s")  # fmt: skip
    out.print(checkpoints)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.state", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000, help="distinct users (default 1000000)")
    parser.add_argument("--events", type=int, default=300_000, help="events of the burst (default 300000)")
    parser.add_argument("--after-kill", type=int, default=10_000, help="events published after the kill (10000)")
    parser.add_argument(
        "--backends", default="hashmap,rocksdb", help="state backends, in turn (default hashmap,rocksdb)"
    )
    arguments = parser.parse_args(argv)
    settings = Settings()
    store = FeatureStore.for_stack(settings.stack)
    console.print(f"generating {arguments.users + arguments.events:,} events ...")
    state = serialized(population(arguments.users, 1, seed=5))
    burst = serialized(
        SyntheticWorld(WorldSpec(users=arguments.users, items=BENCH_ITEMS, seed=3)).events(arguments.events)
    )
    results = [measure(settings, backend, state + burst, len(state), arguments, store)
               for backend in arguments.backends.split(",")]  # fmt: skip
    report(results)
    path = settings.stack.run_dir / "bench" / f"state-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps({"results": [asdict(r) for r in results], "arguments": vars(arguments)},
                                  option=orjson.OPT_INDENT_2))  # fmt: skip
    console.print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
