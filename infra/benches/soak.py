"""`make soak` (`python -m infra.benches.soak`): the running `make demo` stack under fixed-rate mixed load for
30 minutes, with a retraining and a hot swap in the middle.

New users ("soak-<start>-<n>", each repeating the items of one demo user's sequence) send events
through POST /v1/events in batches, and clients ask GET /v1/recommendations (8 in 10 requests, half
for soak users, half for demo users), /v1/items/{id}/similar and /v1/trending, both open-loop: the
n-th batch or request leaves at start + n / rate whatever the answers before it, and its latency
counts from that moment. At `--retrain-at` (a third) of the run `python -m training --force` trains on the
stream's sample log and publishes (forced, so that the swap happens whatever the gate says; the
gate has tests of its own), and the service swaps the new version in under the load.

Every `--sample-every` seconds it records each process's resident memory (a process with its
children), Redis's used memory, the feature job's Kafka lag (records not yet covered by a
checkpoint) and the requests, errors and p99 latency of the interval. At the end it waits until the
job has checkpointed every event, then asks each soak user's profile for the events the stream
counted, which must equal the events Kafka acknowledged. Targets: resident memory of the service
and of the feature job growing < 10 % from the minute after the warm-up to the last minute, 0
errors, 0 events lost. Writes samples.jsonl, summary.json and soak.png to KF_RUN_DIR/soak/<start>/;
the exit code is 0 when every target is met.
"""

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import matplotlib
import numpy as np
import orjson
import psutil
import redis
import uvloop
from rich.table import Table

from infra.benches.stream import freshness_reports
from infra.demo import wait_for_stream
from infra.stack import FeatureJob, Kafka, RecommendationService, Redis, Service, StackError, console, exit_code
from schemas.bundle import Registry
from schemas.config import Settings
from streams.replay import group_consumer, plan, replayed_so_far

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after choosing the backend

TARGET_RSS_GROWTH = 0.10
WATCHED = ("service", "feature-job")  # the processes the memory target is for; Kafka and Redis are shown beside
BATCH_SIZE = 10
DEMO_USERS = 100
REQUEST_TIMEOUT_S = 10
EVENT_TYPES = ("click",) * 7 + ("play",) * 2 + ("rating",)


@dataclass(frozen=True)
class Load:
    minutes: float
    event_rate: float
    request_rate: float
    users: int
    retrain_at: float
    warm_up_minutes: float
    sample_every_s: float
    after_swap_s: float | None = None
    """The load ends this long after the first answer from the retraining's version (at `minutes`
    at the latest); None: it runs all `minutes`."""

    @property
    def seconds(self) -> float:
        return self.minutes * 60


@dataclass
class Interval:
    """What the clients saw since the last sample."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    events: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    at_s: float
    rss_mb: dict[str, float]
    redis_used_mb: float
    kafka_lag: int
    live_version: int | None
    requests: int
    errors: int
    fallbacks: int
    events: int
    p99_ms: float | None


@dataclass
class Retraining:
    started_s: float | None = None
    finished_s: float | None = None
    exit_code: int | None = None
    version: int | None = None


@dataclass(frozen=True)
class Tally:
    """The soak users' events, as Kafka acknowledged them and as the stream counted them."""

    acknowledged: int
    unsure: int
    """events whose POST got no answer (refused or timed out): maybe in Kafka, maybe not"""
    lost: int
    extra: int


def rss_growth(samples: list[Sample], component: str, warm_up_s: float, window_s: float) -> float | None:
    """Growth of `component`'s mean resident memory from the window after the warm-up to the last
    window, as a fraction (0.05 = 5 %); None without a sample in both."""
    after = [(s.at_s, s.rss_mb[component]) for s in samples if s.at_s >= warm_up_s and component in s.rss_mb]
    if not after:
        return None
    first = [mb for at, mb in after if at < warm_up_s + window_s]
    last = [mb for at, mb in after if at > after[-1][0] - window_s]
    return statistics.fmean(last) / statistics.fmean(first) - 1 if first and last else None


def tally(acknowledged: Counter[str], unsure: Counter[str], counted: dict[str, int]) -> Tally:
    """Lost: acknowledged events the stream did not count; extra: counted ones beyond the
    acknowledged and unsure, that is counted twice."""
    users = set(acknowledged) | set(unsure) | set(counted)
    lost = sum(max(0, acknowledged[u] - counted.get(u, 0)) for u in users)
    extra = sum(max(0, counted.get(u, 0) - acknowledged[u] - unsure[u]) for u in users)
    return Tally(sum(acknowledged.values()), sum(unsure.values()), lost, extra)


def misses(
    growth: dict[str, float | None], errors: int, events: Tally, retraining: Retraining, served: Counter[int]
) -> list[str]:
    """Each target the soak missed, in words; empty when it met them all. `served`: answers by model version."""
    found = [f"{name}: resident memory grew {g:.1%} (target < {TARGET_RSS_GROWTH:.0%})"
             for name, g in growth.items() if g is not None and g >= TARGET_RSS_GROWTH]  # fmt: skip
    found += [f"{name}: no resident memory measured after the warm-up" for name, g in growth.items() if g is None]
    if errors:
        found.append(f"{errors} requests or event batches failed (target 0)")
    if events.lost or events.extra:
        found.append(f"{events.lost} acknowledged events lost, {events.extra} counted twice (target 0)")
    if retraining.version is None:
        found.append(f"the retraining published nothing (exit code {retraining.exit_code})")
    elif not served[retraining.version]:
        found.append(f"no answer came from the new v{retraining.version} under the load (it was published too late)")
    return found


def progress_line(sample: Sample) -> str:
    memory = ", ".join(f"{name} {mb:,.0f}" for name, mb in sample.rss_mb.items())
    return (f"{sample.at_s / 60:5.1f} min  v{sample.live_version}  {sample.requests} requests, {sample.errors} errors, "
            f"p99 {sample.p99_ms or 0:.0f} ms  RSS MB: {memory}  Redis {sample.redis_used_mb:,.0f} MB  "
            f"lag {sample.kafka_lag}")  # fmt: skip


def percentile_ms(latencies_ms: list[float], q: float) -> float | None:
    return float(np.percentile(latencies_ms, q)) if latencies_ms else None


def resident_mb(service: Service) -> float | None:
    """Resident memory of the service's process and its children (the job's JVM and Python workers)."""
    process = service.running_process()
    if process is None:
        return None
    try:
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20
    except psutil.Error:
        return None


class Soak:
    """One soak run against the stack `settings` describe; `run()` returns the samples."""

    def __init__(self, settings: Settings, load: Load, out_dir: Path):
        self.settings, self.load, self.out_dir = settings, load, out_dir
        self.base = f"http://{settings.stack.bind_host}:{settings.serving.serve_port}"
        self.stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        self.soak_users = [f"soak-{self.stamp}-{n:04d}" for n in range(load.users)]
        self.processes: dict[str, Service] = {
            "service": RecommendationService(settings), "feature-job": FeatureJob(settings),
            "kafka": Kafka(settings), "redis": Redis(settings),
        }  # fmt: skip
        self.random = random.Random(0)
        self.interval, self.all_latencies_ms = Interval(), []
        self.failures: Counter[str] = Counter()
        self.acknowledged: Counter[str] = Counter()
        self.unsure: Counter[str] = Counter()
        self.versions_served: Counter[int] = Counter()
        self.samples: list[Sample] = []
        self.retraining = Retraining()
        self.walks: list[list[str]] = []
        self.demo_users: list[str] = []
        self.event_number = 0
        self.events_sent = 0
        self.ends_s = load.seconds
        """When the load ends, in seconds from its start: `end_after_swap` may bring it forward."""
        self.started = time.monotonic()
        self.session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
            self.session = session
            await self.find_demo_walks()
            self.started = time.monotonic()
            tasks: set[asyncio.Task] = set()
            await asyncio.gather(
                self.on_schedule(self.load.event_rate / BATCH_SIZE, self.post_batch, tasks),
                self.on_schedule(self.load.request_rate, self.ask, tasks),
                self.sample_periodically(),
                self.retrain_midway(),
            )
            await asyncio.gather(*tasks)
            await self.take_sample()  # the answers that came after the last periodic one

    async def find_demo_walks(self) -> None:
        """Up to DEMO_USERS demo users and their item sequences, for the soak users to repeat."""
        self.demo_users = (await self.get_json(f"/v1/users?limit={DEMO_USERS}"))["users"]
        profiles = [await self.get_json(f"/v1/users/{user}/profile") for user in self.demo_users]
        self.walks = [walk for profile in profiles if (walk := [entry["item_id"] for entry in profile["sequence"]])]
        if not self.walks:
            raise StackError("the demo's users have no sequences: has `make demo` applied its history?")

    async def get_json(self, path: str) -> dict:
        async with self.session.get(self.base + path) as response:
            response.raise_for_status()
            return await response.json()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def on_schedule(self, rate: float, action: Callable[[int], Awaitable[None]], tasks: set) -> None:
        n = 0
        while (due := n / rate) < self.ends_s:
            await asyncio.sleep(max(0.0, due - self.elapsed()))
            task = asyncio.create_task(self.timed(action, n, self.started + due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1

    async def timed(self, action: Callable[[int], Awaitable[None]], n: int, scheduled: float) -> None:
        try:
            await action(n)
        except (aiohttp.ClientError, TimeoutError) as error:  # refused, reset or timed out: one failure
            self.fail(f"{type(error).__name__}")
        latency_ms = (time.monotonic() - scheduled) * 1000
        self.interval.latencies_ms.append(latency_ms)
        self.all_latencies_ms.append(latency_ms)
        self.interval.requests += 1

    def fail(self, reason: str) -> None:
        self.interval.errors += 1
        self.failures[reason] += 1

    async def post_batch(self, _n: int) -> None:
        batch = [self.soak_event() for _ in range(BATCH_SIZE)]
        self.events_sent += BATCH_SIZE
        users = Counter(event["user_id"] for event in batch)
        self.unsure.update(users)  # until Kafka's answer is known
        async with self.session.post(self.base + "/v1/events", data=orjson.dumps(batch)) as response:
            await response.read()
            if response.status != 202:
                self.fail(f"POST /v1/events: {response.status}")
                return
        self.unsure.subtract(users)
        self.acknowledged.update(users)
        self.interval.events += BATCH_SIZE

    def soak_event(self) -> dict:
        self.event_number += 1
        user_index = self.random.randrange(len(self.soak_users))
        walk = self.walks[user_index % len(self.walks)]
        user = self.soak_users[user_index]
        kind = self.random.choice(EVENT_TYPES)
        value = {"play": float(self.random.randint(30, 7200)), "rating": self.random.choice((3.0, 4.0, 4.5, 5.0))}
        return {
            "event_id": f"{user}-{self.event_number}", "user_id": user, "type": kind, "value": value.get(kind),
            "item_id": walk[(self.acknowledged[user] + self.unsure[user]) % len(walk)], "ts": int(time.time() * 1000),
        }  # fmt: skip

    async def ask(self, n: int) -> None:
        if n % 10 == 8:
            await self.expect_200(f"/v1/items/{self.random.choice(self.random.choice(self.walks))}/similar?k=10")
        elif n % 10 == 9:
            await self.expect_200("/v1/trending?k=10")
        else:
            known = [u for u in self.soak_users if self.acknowledged[u]] if n % 2 else []
            user = self.random.choice(known or self.demo_users)
            answer = await self.expect_200(f"/v1/recommendations?user_id={user}&k=20&exclude_seen=true")
            if answer is not None:
                self.versions_served[answer["model_version"]] += 1
                self.interval.fallbacks += answer["fallback"]
                self.end_after_swap(answer["model_version"])

    def end_after_swap(self, version: int) -> None:
        """With `after_swap_s`, bring the end forward to that long after the first answer of the
        retraining's version: what the run is for has then been seen under the load."""
        if self.load.after_swap_s is not None and version == self.retraining.version:
            self.ends_s = min(self.ends_s, self.elapsed() + self.load.after_swap_s)

    async def expect_200(self, path: str) -> dict | None:
        async with self.session.get(self.base + path) as response:
            body = await response.read()
            if response.status != 200:
                self.fail(f"GET {path.split('?')[0].split('/')[2]}: {response.status}")
                return None
            return orjson.loads(body)

    async def sample_periodically(self) -> None:
        while self.elapsed() + self.load.sample_every_s < self.ends_s:
            await asyncio.sleep(self.load.sample_every_s)
            await self.take_sample()

    async def take_sample(self) -> None:
        live = (await self.get_json("/v1/models"))["live_version"]
        rss, redis_mb, lag = await asyncio.to_thread(self.measure)
        interval, self.interval = self.interval, Interval()
        self.samples.append(Sample(
            round(self.elapsed(), 1), rss, redis_mb, lag, live, interval.requests, interval.errors,
            interval.fallbacks, interval.events, percentile_ms(interval.latencies_ms, 99),
        ))  # fmt: skip
        console.log(progress_line(self.samples[-1]))

    def measure(self) -> tuple[dict[str, float], float, int]:
        """Resident memory (MB) per process, Redis used memory (MB), the feature job's Kafka lag."""
        rss = {name: mb for name, service in self.processes.items() if (mb := resident_mb(service)) is not None}
        client = redis.Redis(host=self.settings.stack.bind_host, port=self.settings.stack.redis_port)
        try:
            used_mb = client.info("memory")["used_memory"] / 2**20
        finally:
            client.close()
        return rss, used_mb, self.kafka_lag()

    def kafka_lag(self) -> int:
        target = plan(self.settings, self.settings.stack.topic_events, self.settings.stack.namespace, None)
        consumer = group_consumer(self.settings, target.group_id)
        try:
            return target.events - replayed_so_far(consumer, target)
        finally:
            consumer.close()

    async def retrain_midway(self) -> None:
        await asyncio.sleep(self.load.retrain_at * self.load.seconds)
        before = Registry(self.settings.stack.models_dir).current()
        self.retraining.started_s = self.elapsed()
        with (self.out_dir / "training.log").open("wb") as log:
            training = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "training", "--force", "--no-progress", stdout=log, stderr=subprocess.STDOUT
            )
            self.retraining.exit_code = await training.wait()
        self.retraining.finished_s = self.elapsed()
        after = Registry(self.settings.stack.models_dir).current()
        self.retraining.version = after if after != before else None

    async def counted_events(self) -> dict[str, int]:
        """Per soak user, the events the stream counted, from the user's profile."""
        counted = {}
        for user in self.acknowledged | self.unsure:
            features = (await self.get_json(f"/v1/users/{user}/profile"))["features"]
            counted[user] = sum(features["event_counts"].values()) if features else 0
        return counted


def summarise(soak: Soak, events: Tally, started_at: str) -> dict:
    window_s = max(60.0, soak.load.sample_every_s)
    warm_up_s = soak.load.warm_up_minutes * 60
    growth = {name: rss_growth(soak.samples, name, warm_up_s, window_s) for name in soak.processes}
    redis_mb = [s.redis_used_mb for s in soak.samples if s.at_s >= warm_up_s]
    # The first report also covers writes from before the soak (e.g. the demo's history).
    p99s = [report.event_p99_ms for report in freshness_reports(soak.settings.stack.logs_dir, started_at)[1:]]
    errors = sum(soak.failures.values())
    return {
        "load": asdict(soak.load), "ran_s": round(soak.ends_s, 1), "events_sent": soak.events_sent,
        "requests": len(soak.all_latencies_ms), "errors": errors,
        "failures": dict(soak.failures), "fallbacks": sum(s.fallbacks for s in soak.samples),
        "p50_ms": percentile_ms(soak.all_latencies_ms, 50), "p99_ms": percentile_ms(soak.all_latencies_ms, 99),
        "rss_growth": growth, "rss_mb_last": soak.samples[-1].rss_mb if soak.samples else {},
        "redis_used_mb": [redis_mb[0], redis_mb[-1]] if redis_mb else None,
        "kafka_lag_max": max((s.kafka_lag for s in soak.samples), default=None),
        "freshness_p99_ms": [statistics.median(p99s), max(p99s)] if p99s else None,
        "events": asdict(events), "retraining": asdict(soak.retraining),
        "versions_served": {str(v): n for v, n in sorted(soak.versions_served.items())},
        "misses": misses({name: growth[name] for name in WATCHED}, errors, events, soak.retraining,
                         soak.versions_served),
    }  # fmt: skip


def report_table(summary: dict) -> Table:
    table = Table(title="soak", show_header=False)
    load = summary["load"]
    table.add_row("load", f"{summary['ran_s']:g} s: {load['event_rate']:g} events/s in batches of {BATCH_SIZE}, "
                  f"{load['request_rate']:g} requests/s, {load['users']} new users")  # fmt: skip
    table.add_row("requests", f"{summary['requests']:,} (incl. event batches), errors {summary['errors']} "
                  f"{summary['failures'] or ''}, fallbacks {summary['fallbacks']}")  # fmt: skip
    table.add_row("latency", f"p50 {summary['p50_ms']:.1f} ms, p99 {summary['p99_ms']:.1f} ms (from schedule)")
    for name, growth in summary["rss_growth"].items():
        shown = "n/a" if growth is None else f"{growth:+.1%}"
        table.add_row(f"RSS {name}", f"{summary['rss_mb_last'].get(name, 0):,.0f} MB at the end, {shown} after warm-up")
    first, last = summary["redis_used_mb"] or (0, 0)
    table.add_row("Redis used memory", f"{first:,.1f} → {last:,.1f} MB after warm-up")
    table.add_row("Kafka lag", f"max {summary['kafka_lag_max']} records (checkpoint-granular)")
    median, worst = summary["freshness_p99_ms"] or (0, 0)
    table.add_row("freshness", f"writer's p99 per 10 s, event time → Redis: median {median:.0f} ms, max {worst:.0f} ms")
    table.add_row("events", str(summary["events"]))
    table.add_row("retraining", f"{summary['retraining']}; answers by version {summary['versions_served']}")
    table.add_row("verdict", "all targets met" if not summary["misses"] else "; ".join(summary["misses"]))
    return table


def plot(samples: list[Sample], retraining: Retraining, warm_up_s: float, path: Path) -> None:
    minutes = [s.at_s / 60 for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for name in samples[0].rss_mb if samples else ():
        axes[0].plot(minutes, [s.rss_mb.get(name, np.nan) for s in samples], label=name)
    axes[0].set_ylabel("resident MB")
    axes[1].plot(minutes, [s.redis_used_mb for s in samples])
    axes[1].set_ylabel("Redis used MB")
    axes[2].plot(minutes, [s.p99_ms or np.nan for s in samples], label="p99 ms")
    axes[2].plot(minutes, [s.errors for s in samples], label="errors")
    axes[2].set_yscale("symlog")
    axes[3].plot(minutes, [s.kafka_lag for s in samples])
    axes[3].set_ylabel("Kafka lag (records)")
    axes[3].set_xlabel("minutes")
    for axis in axes:
        axis.axvline(warm_up_s / 60, color="grey", linestyle=":")
        for at in (retraining.started_s, retraining.finished_s):
            if at is not None:
                axis.axvline(at / 60, color="red", linestyle="--")
    for axis in axes[[0, 2]]:
        axis.legend()
    figure.suptitle("make soak (dotted: end of warm-up; dashed: retraining started / published)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def soak(settings: Settings, load: Load) -> dict:
    for required in (RecommendationService(settings), FeatureJob(settings)):
        if required.running_process() is None:
            raise StackError(f"{required.name} is not running: start the stack with `make demo` first")
    started_at = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    out_dir = (settings.stack.run_dir / "soak" / started_at.replace(" ", "T")).resolve()
    out_dir.mkdir(parents=True)
    run = Soak(settings, load, out_dir)
    console.print(f"soaking {run.base} for {load.minutes:g} min; samples, summary and plot in {out_dir}")
    uvloop.run(run.run())
    wait_for_stream(settings, FeatureJob(settings))
    events = tally(run.acknowledged, run.unsure, uvloop.run(counted_after_stream(run)))
    summary = summarise(run, events, started_at)
    (out_dir / "samples.jsonl").write_bytes(b"".join(orjson.dumps(asdict(s)) + b"\n" for s in run.samples))
    (out_dir / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    plot(run.samples, run.retraining, load.warm_up_minutes * 60, out_dir / "soak.png")
    console.print(report_table(summary))
    return summary


async def counted_after_stream(run: Soak) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        run.session = session
        return await run.counted_events()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="duration of the load (default 30)")
    parser.add_argument("--event-rate", type=float, default=100.0, help="events/s, posted in batches of 10")
    parser.add_argument("--request-rate", type=float, default=20.0, help="GET requests/s")
    parser.add_argument("--users", type=int, default=500, help="new users who send the events")
    parser.add_argument("--retrain-at", type=float, default=0.33, help="fraction of the run at which to retrain")
    parser.add_argument("--warm-up-minutes", type=float, default=5.0, help="memory growth counts from here")
    parser.add_argument("--sample-every", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--end-after-swap", type=float, metavar="SECONDS",
                        help="end the load this long after the first answer from the retraining's version "
                        "(at --minutes at the latest; default: run all --minutes)")  # fmt: skip
    arguments = parser.parse_args(argv)
    load = Load(arguments.minutes, arguments.event_rate, arguments.request_rate, arguments.users,
                arguments.retrain_at, arguments.warm_up_minutes, arguments.sample_every,
                arguments.end_after_swap)  # fmt: skip
    return exit_code(lambda: not soak(Settings(), load)["misses"])


if __name__ == "__main__":
    sys.exit(main())
