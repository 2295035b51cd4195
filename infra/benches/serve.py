"""`python -m infra.benches.serve` (make bench-serve): latency of /v1/recommendations at fixed request rates.

Sets up live state for MovieLens users in a Redis namespace of its own (through the same feature
functions the stream uses), starts the service as a separate process on the live model (training
one on MovieLens first if the registry is empty), then sends requests open-loop from an aiohttp
client on uvloop (it shares the two cores with the service, so the cheaper loop): request i
leaves at start + i / rate whatever the answers before it, and its latency counts from that
moment, so a slow service cannot hide queueing. Two mixes: `fresh` writes a new click of the user
(through the stream's feature functions and store) before each request, so no answer could come
from a cache of earlier ones; `repeat` asks about unchanged states. Reports p50/p95/p99, errors and fallbacks
(answers without DIN, e.g. shed under overload) per rate, and from the service's own metrics
where the time went: the mean candidates ranked per request, the mean batch of a model call, the
mean wait for the models, the mean model call (user tower, Faiss and DIN for the whole batch) and
the time garbage collection stopped the service, and the CPU time the service's processes used per
request sent (user + system, from /proc through psutil), and of it the event loops' (each process's
main thread: HTTP, the Redis read, decoding the state, the answer's JSON); the rest is the model
threads' (user tower, Faiss and DIN) and the idle pollers'. `--workers 1,2` measures the service with
one process and then with two sharing the port (KF_SERVE_WORKERS), side by side in one table;
`--previous CHECKOUT` measures another checkout's service (the previous code) right after this
one's on the same model and state, and prints the ratio of their CPU per request.
"""

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import psutil
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from schemas.bundle import Registry
from schemas.config import Settings
from schemas.events import Event, EventType
from schemas.redis_format import TRENDING_ENTITY, KeyKind
from schemas.runtime.feature_store import EntityWrite, FeatureStore, SeenAddition
from schemas.runtime.features import update_seen
from schemas.runtime.sources.movielens import LoadReport, locate_dataset, rating_events
from schemas.runtime.streaming import apply_user_event, fold_stream, seen_sets, trending_list

log = logging.getLogger("kingfisher.bench")
NAMESPACE = "bench"
READY_TIMEOUT_S = 180
TARGET_P99_MS, TARGET_RATE = 50, 200
FRESH, REPEAT = "fresh", "repeat"
SUMMED_HISTOGRAMS = (
    "kingfisher_model_batch_size",
    "kingfisher_stage_seconds",
    "kingfisher_candidates",
    "kingfisher_gc_pause_seconds",
)


class BenchState:
    """Live state of MovieLens users (and trending, and their seen sets) in the bench namespace,
    written through the same feature functions and store the stream uses. `change(user_id)` applies
    one more click of that user, on an item the user has not seen, and writes the new state: the
    fresh mix calls it before every request, so each answer reflects a state no earlier request saw."""

    def __init__(self, settings: Settings, users: int):
        self.spec = settings.pipeline.features
        events = list(rating_events(locate_dataset(settings.stack.movielens_path), LoadReport()))
        self.states, _, trending = fold_stream(events, self.spec)
        self.seen = seen_sets(events, self.spec)
        self.users = sorted(self.states)[:users]
        self.catalogue = sorted({event.item_id for event in events})
        self.store = FeatureStore.for_stack(settings.stack)
        self._random = random.Random(0)
        self._lock = threading.Lock()
        listed = trending_list(trending, self.spec)
        trending_write = EntityWrite(KeyKind.TRENDING, TRENDING_ENTITY, trending.version, listed, listed.at_ts)
        self.store.write(
            NAMESPACE,
            [trending_write, *(write for user_id in self.users for write in self._writes(user_id))],
            {user_id: self._seen(user_id) for user_id in self.users},
        )

    def _writes(self, user_id: str) -> list[EntityWrite]:
        state = self.states[user_id]
        return [
            EntityWrite(kind, user_id, state.version, value, state.features.last_ts)
            for kind, value in ((KeyKind.USER_SEQUENCE, state.sequence), (KeyKind.USER_FEATURES, state.features))
        ]

    def _seen(self, user_id: str, entries: dict[str, int] | None = None) -> SeenAddition:
        added = self.seen[user_id] if entries is None else entries
        return SeenAddition(dict(added), self.spec.seen_capacity)

    def change(self, user_id: str) -> None:
        """One new click of `user_id` now, applied and written (thread-safe: the load's writer threads call it)."""
        with self._lock:
            seen = self.seen[user_id]
            item_id = self._random.choice(self.catalogue)
            while item_id in seen:
                item_id = self._random.choice(self.catalogue)
            click = Event(
                event_id=f"bench-{user_id}-{self.states[user_id].version}",
                user_id=user_id,
                item_id=item_id,
                type=EventType.CLICK,
                ts=int(time.time() * 1000),
            )
            self.states[user_id] = apply_user_event(self.states[user_id], click, self.spec)
            self.seen[user_id] = update_seen(seen, (item_id, click.ts), self.spec)
            writes = self._writes(user_id)
        self.store.write(NAMESPACE, writes, {user_id: self._seen(user_id, {item_id: click.ts})})


def ensure_model(settings: Settings) -> int:
    registry = Registry(settings.stack.models_dir)
    if not registry.servable():
        log.info("no model this code can serve in %s: training one on MovieLens first", settings.stack.models_dir)
        subprocess.run(
            [sys.executable, "-m", "training", "--source", "movielens", "--no-announce", "--no-progress"], check=True
        )
    return registry.current()


async def wait_ready(base: str, service: subprocess.Popen) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if service.poll() is not None:
                raise RuntimeError("the service exited while starting")
            try:
                async with session.get(base + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"service not ready in {READY_TIMEOUT_S}s")


async def service_totals(base: str) -> dict[str, float]:
    """Sums and counts of the service's batch-size, stage and GC-pause histograms, by sample name and
    stage (GC pauses summed over generations)."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        text = await response.text()
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        if family.name in SUMMED_HISTOGRAMS:
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    totals[sample.name + sample.labels.get("stage", "")] += sample.value
    return totals


def where_time_went(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean candidates, batch size, queue wait (ms) and model call (ms), and the time garbage
    collection stopped the service (ms), between two service_totals."""

    def mean(name: str, stage: str = "") -> float:
        count = after.get(f"{name}_count{stage}", 0) - before.get(f"{name}_count{stage}", 0)
        return (after.get(f"{name}_sum{stage}", 0) - before.get(f"{name}_sum{stage}", 0)) / count if count else 0.0

    stages = "kingfisher_stage_seconds"
    return {
        "candidates": mean("kingfisher_candidates"),
        "batch": mean("kingfisher_model_batch_size"),
        "queue": mean(stages, "queue") * 1000,
        "model": (mean(stages, "retrieval") + mean(stages, "ranking")) * 1000,
        "gc": (after["kingfisher_gc_pause_seconds_sum"] - before["kingfisher_gc_pause_seconds_sum"]) * 1000,
    }


async def drive(base: str, state: BenchState, rate: float, seconds: float, k: int, mix: str) -> dict:
    """Open-loop load at `rate` requests/s for `seconds`; latency from each request's scheduled time.
    Mix `fresh`: each request follows a new click of its user (written first, and counted in its
    latency); `repeat`: the users' states stay as they are."""
    latencies: list[float] = []
    errors = fallbacks = 0
    connector = aiohttp.TCPConnector(limit=0)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def one(n: int, scheduled: float) -> None:
            nonlocal errors, fallbacks
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            user_id = state.users[n % len(state.users)]
            try:
                if mix == FRESH:
                    await loop.run_in_executor(None, state.change, user_id)  # a write waits on Redis
                url = f"{base}/v1/recommendations?user_id={user_id}&k={k}&exclude_seen=true"
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        errors += 1
                    elif orjson.loads(body)["fallback"]:  # answered without DIN (load shed, Redis late)
                        fallbacks += 1
            except Exception:  # any failure of one request (refused, reset, timed out) is one error
                errors += 1
            latencies.append(time.perf_counter() - scheduled)

        start = time.perf_counter() + 0.5
        total = int(rate * seconds)
        await asyncio.gather(*(one(n, start + n / rate) for n in range(total)))
        elapsed = time.perf_counter() - start
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {
        "mix": mix,
        "rate": rate,
        "sent": total,
        "achieved": total / elapsed,
        "errors": errors,
        "fallbacks": fallbacks,
        "p50": p50,
        "p95": p95,
        "p99": p99,
    }


async def wait_all_workers(base: str, workers: int) -> None:
    """Until every service process has a model live (one model-version series each)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(base + "/metrics") as response:
                families = text_string_to_metric_families(await response.text())
            versions = [s.value for f in families for s in f.samples if s.name == "kingfisher_model_version"]
            if len(versions) == workers and min(versions) > 0:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"not every worker had a model in {READY_TIMEOUT_S}s")


@dataclass(frozen=True)
class ServiceCpu:
    """User + system CPU seconds of the service process and every process under it (the workers)."""

    total_s: float
    loop_s: float
    """Of `total_s`, the processes' main threads': where each runs its event loop."""

    def __sub__(self, earlier: "ServiceCpu") -> "ServiceCpu":
        return ServiceCpu(self.total_s - earlier.total_s, self.loop_s - earlier.loop_s)


def service_cpu(service: subprocess.Popen) -> ServiceCpu:
    processes = [psutil.Process(service.pid)]
    processes += processes[0].children(recursive=True)
    total = loop = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
            # A thread's id is its kernel task id, and a process's main thread's is the process's pid.
            loop += sum(
                thread.user_time + thread.system_time for thread in process.threads() if thread.id == process.pid
            )
    return ServiceCpu(total, loop)


def measure(
    settings: Settings, workers: int, state: BenchState, arguments: argparse.Namespace, code: Path | None = None
) -> list[dict]:
    """Start the service with `workers` processes (this code, or the checkout `code`) and drive it
    with each mix at each rate."""
    port = settings.serving.serve_port + 1
    label = "previous" if code else "this"
    log_path = Path(settings.stack.logs_dir) / f"bench-serve-{label}-{workers}.log"
    env = os.environ | {"KF_NAMESPACE": NAMESPACE, "KF_SERVE_WORKERS": str(workers)}
    if code is not None:  # the same run directory (models, logs) unless told, whatever the checkout's cwd
        run_dir = arguments.previous_run_dir or Path(settings.stack.run_dir)
        env |= {"PYTHONPATH": str(code), "KF_RUN_DIR": str(run_dir.resolve())}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as output:
        service = subprocess.Popen(
            [sys.executable, "-m", "serving", "--port", str(port)],
            env=env,
            cwd=code,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{settings.stack.bind_host}:{port}"
    results = []
    try:
        uvloop.run(wait_ready(base, service))
        uvloop.run(wait_all_workers(base, workers))
        uvloop.run(drive(base, state, 20, 5, arguments.k, REPEAT))  # warm-up, not reported
        for mix, rate in itertools.product(arguments.mixes.split(","), arguments.rates.split(",")):
            before, cpu = uvloop.run(service_totals(base)), service_cpu(service)
            driven = uvloop.run(drive(base, state, float(rate), arguments.seconds, arguments.k, mix))
            cpu = service_cpu(service) - cpu
            per_request = {
                "cpu_ms": 1000 * cpu.total_s / driven["sent"],
                "loop_cpu_ms": 1000 * cpu.loop_s / driven["sent"],
            }
            results.append({"code": label, "workers": workers} | per_request | driven)
            results[-1] |= where_time_went(before, uvloop.run(service_totals(base)))
            log.info(
                "%s",
                {key: round(value, 2) if isinstance(value, float) else value for key, value in results[-1].items()},
            )
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,200,500", help="requests/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of each rate")
    parser.add_argument("--users", type=int, default=500, help="distinct users asked for")
    parser.add_argument(
        "--mixes",
        default=f"{FRESH},{REPEAT}",
        help=f"comma-separated: {FRESH} (a new click of the user before every request) and/or {REPEAT} "
        "(the users' states unchanged between requests)",
    )
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument(
        "--workers",
        default=None,
        help="service processes, comma-separated, each measured in turn (default: KF_SERVE_WORKERS); e.g. 1,2",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        metavar="CHECKOUT",
        help="also measure the service of this checkout (e.g. `git worktree add /tmp/kf-previous HEAD~1`) on "
        "the same model and state, each rate right after this code's, so the two compare on the same day",
    )
    parser.add_argument(
        "--previous-run-dir",
        type=Path,
        metavar="DIR",
        help="the previous code's run directory (its own model registry), when it cannot read this code's "
        "bundles; default: this code's",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    version = ensure_model(settings)
    state = BenchState(settings, arguments.users)
    counts = [int(n) for n in (arguments.workers or str(settings.serving.serve_workers)).split(",")]
    codes = [None, arguments.previous.resolve()] if arguments.previous else [None]
    results = [
        result for workers in counts for code in codes for result in measure(settings, workers, state, arguments, code)
    ]
    table = Table(
        title=f"bench-serve: model v{version}, M={settings.pipeline.candidates} candidates ranked by DIN, "
        f"{len(state.users)} users, k={arguments.k}, {arguments.seconds:.0f} s per rate"
    )
    columns = (
        "code",
        "workers",
        "mix",
        "rate req/s",
        "sent",
        "achieved req/s",
        "errors",
        "fallbacks",
        "p50 ms",
        "p95 ms",
    )
    for column in (
        *columns,
        "p99 ms",
        "CPU ms/req",
        "loop CPU ms/req",
        "candidates",
        "batch",
        "queue ms",
        "model call ms",
        "gc ms",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["code"],
            str(r["workers"]),
            r["mix"],
            f"{r['rate']:.0f}",
            str(r["sent"]),
            f"{r['achieved']:.1f}",
            str(r["errors"]),
            str(r["fallbacks"]),
            f"{r['p50']:.1f}",
            f"{r['p95']:.1f}",
            f"{r['p99']:.1f}",
            f"{r['cpu_ms']:.2f}",
            f"{r['loop_cpu_ms']:.2f}",
            f"{r['candidates']:.0f}",
            f"{r['batch']:.1f}",
            f"{r['queue']:.1f}",
            f"{r['model']:.1f}",
            f"{r['gc']:.0f}",
        )
    console = Console(width=190)
    console.print(table)
    previous = {(r["workers"], r["mix"], r["rate"]): r["cpu_ms"] for r in results if r["code"] == "previous"}
    for r in results:
        if r["code"] == "this" and (r["workers"], r["mix"], r["rate"]) in previous:
            ratio = r["cpu_ms"] / previous[r["workers"], r["mix"], r["rate"]]
            console.print(
                f"{r['workers']} worker(s), {r['mix']} mix, {r['rate']:.0f} req/s: CPU per request "
                f"{ratio:.2f}x the previous code's"
            )
    targets = [
        r
        for r in results
        if r["code"] == "this" and r["rate"] == TARGET_RATE and r["workers"] == settings.serving.serve_workers
    ]
    met = all(r["p99"] <= TARGET_P99_MS and r["errors"] == r["fallbacks"] == 0 for r in targets)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
