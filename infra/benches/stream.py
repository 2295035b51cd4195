"""Benchmark of the streaming feature job as `make demo` runs it (`make bench-stream`).

On the running local stack, for the job as `make demo` runs it (live, sample log on) and, in the
same run, beside it the job with --no-samples (and with --compare-with, a previous checkout's job):

1. State: N users' events (--users, --events-per-user) and a burst of synthetic events over the
   same users (--events) are published to a fresh topic; the live job applies the users' events,
   so it holds their state when it reaches the burst.
2. Throughput of the burst: events/s from the first of its events applied in Redis to the last;
   the job's CPU (its Python and JVM) per 1,000 events, and that CPU by thread (in thread mode,
   by stage); and, with the log on, the seconds from the last event in Redis until the sample log
   has committed every event.
3. Freshness: events stamped with the current time at each fixed rate (--rates) over the same
   users, after a warm-up at that rate that is not counted; the job's Redis writer measures write
   time - event time (and - Kafka append time) for every event and logs percentiles every 10 s.
4. Replay: `kingfisher replay` of the first topic into a fresh namespace, as an operator runs it
   (a backfill), then the same with `--flink` (the bounded feature job) beside it.
"""

import argparse
import itertools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
import psutil
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from infra.stack import Redis as RedisServer
from schemas import sample_log
from schemas.config import Settings
from schemas.events import Event, EventType
from schemas.redis_format import TRENDING_ENTITY, KeyKind
from schemas.runtime.feature_store import FeatureStore
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec, item_id, sample_index, user_id
from streams.publish import Pacer, make_producer, publish
from streams.redis_writer import REPORT_EVERY_S

console = Console(stderr=True)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
FRESHNESS_LINE = re.compile(
    r"^(?P<time>\S+ \S+),\d+ .*redis writer users: .*event_p50_ms (?P<p50>[\d,.]+), event_p99_ms (?P<p99>[\d,.]+), "
    r"append_p50_ms (?P<ap50>[\d,.]+), append_p99_ms (?P<ap99>[\d,.]+)"
)
REPLAY_LINE = re.compile(r"replayed (?P<events>[\d,]+) events in (?P<seconds>[\d.]+) s")
BENCH_ITEMS = 10_000
POLL_S = 0.2
SESSION_MEAN = 20
ACTIVE_SESSIONS = 32
HISTORY_KINDS = (EventType.CLICK, EventType.RATING, EventType.PLAY)
HISTORY_SHARES = (0.6, 0.2, 0.2)
WORKLOADS = ("real", "short")
CATCH_UP_S = 600.0


@dataclass(frozen=True)
class FreshnessReport:
    """One of the users' Redis writer's periodic reports: milliseconds from event time (`event_`) and
    from the Kafka append (`append_`) to the write into Redis, over the events since the last report."""

    logged_at: str
    event_p50_ms: float
    event_p99_ms: float
    append_p50_ms: float
    append_p99_ms: float


def freshness_reports(log_dir: Path, since: str) -> list[FreshnessReport]:
    """The reports in the job's Flink Python logs under `log_dir` logged at or after `since`
    ("YYYY-MM-DD HH:MM:SS", the logs' local time)."""
    text = "\n".join(path.read_text(errors="replace") for path in log_dir.glob("flink-*python*.log"))
    matches = [m for m in map(FRESHNESS_LINE.match, text.splitlines()) if m and m["time"] >= since]
    return [
        FreshnessReport(m["time"], *(float(m[name].replace(",", "")) for name in ("p50", "p99", "ap50", "ap99")))
        for m in matches
    ]


@dataclass(frozen=True)
class Configuration:
    label: str
    log_samples: bool
    code: Path = PROJECT_ROOT
    """The checkout whose job runs: this one, or a previous one to compare with."""
    environment: dict[str, str] = field(default_factory=dict)
    """Settings of this configuration's job (KF_* variables)."""


@dataclass
class FreshnessResult:
    rate: int
    sent: int
    achieved_rate: float
    caught_up: bool
    backlog: int
    p50_ms: float | None
    p99_ms: float | None
    append_p50_ms: float | None
    append_p99_ms: float | None
    cpu_ms_per_1000_events: float
    """The job's CPU while the measured events were sent, per 1,000 of them."""
    cpu_ms_per_1000_events_by_thread: dict[str, float]
    """The same by thread name (`thread_cpu_seconds`; in thread mode, by stage), largest first."""
    redis_cpu_ms_per_1000_events: float | None
    """The stack's Redis server's CPU over the same time, per 1,000 events (None: not found)."""


@dataclass
class Result:
    label: str
    state_events: int
    state_seconds: float
    burst_events: int
    burst_seconds: float
    cpu_ms_per_1000_events: float
    log_committed_after_s: float | None
    log_bytes_per_event: float | None
    burst_cpu_share_by_thread: dict[str, float] = field(default_factory=dict)
    """The job's CPU in the burst by thread name (`thread_cpu_seconds`), as shares of it, largest first."""
    freshness: list[FreshnessResult] = field(default_factory=list)

    @property
    def burst_rate(self) -> float:
        return self.burst_events / self.burst_seconds


def population(users: int, per_user: int, seed: int) -> Iterator[Event]:
    """`per_user` ratings and clicks of each of `users` users, round by round, items by popularity."""
    world = SyntheticWorld(WorldSpec(users=users, items=BENCH_ITEMS, seed=seed))
    rng, ts = np.random.default_rng(seed), world.spec.start_ts
    for round_number in range(per_user):
        items = np.searchsorted(world.popularity_cdf, rng.random(users)).clip(0, BENCH_ITEMS - 1)
        ratings = rng.integers(1, 11, users) / 2
        for user, (item, rating) in enumerate(zip(items, ratings, strict=True)):
            ts += 1
            rated = (user + round_number) % 2 == 0
            yield Event(
                event_id=f"pop:{round_number}:{user}",
                user_id=user_id(user),
                item_id=item_id(int(item)),
                type=EventType.RATING if rated else EventType.CLICK,
                value=rating if rated else None,
                ts=ts,
            )


def histories(users: int, count: int, seed: int) -> Iterator[Event]:
    """`count` events that change users' sequences and seen sets (clicks, ratings, plays), in
    sessions as real users make them: a session's user drawn by Zipf's law over `users` (activity
    rank r with weight 1/r, so the heaviest users fill their sequences and see thousands of items
    while most add a few events), its length geometric (mean SESSION_MEAN), ACTIVE_SESSIONS
    sessions interleaved event by event; items by popularity."""
    world = SyntheticWorld(WorldSpec(users=users, items=BENCH_ITEMS, seed=seed))
    rng, ts = np.random.default_rng(seed), world.spec.start_ts
    items = np.searchsorted(world.popularity_cdf, rng.random(count)).clip(0, BENCH_ITEMS - 1)
    kinds = rng.choice(len(HISTORY_KINDS), size=count, p=HISTORY_SHARES)
    values = rng.integers(1, 11, count) / 2
    sessions: list[list[int]] = [[0, 0] for _ in range(ACTIVE_SESSIONS)]
    """Each active session's [user, events left]."""
    for n in range(count):
        session = sessions[n % ACTIVE_SESSIONS]
        if session[1] == 0:
            session[:] = [sample_index(world.activity_cdf, rng), int(rng.geometric(1 / SESSION_MEAN))]
        session[1] -= 1
        kind, ts = HISTORY_KINDS[kinds[n]], ts + 1
        yield Event(
            event_id=f"history:{seed}:{n}",
            user_id=user_id(session[0]),
            item_id=item_id(int(items[n])),
            type=kind,
            value=None if kind == EventType.CLICK else float(values[n]) * (1 if kind == EventType.RATING else 60),
            ts=ts,
        )


@dataclass(frozen=True)
class Workload:
    """The shape of the events measured (WORKLOADS) over the same `users` the job holds."""

    name: str
    users: int

    def events(self, count: int, seed: int) -> Iterator[Event]:
        if self.name == "real":
            return histories(self.users, count, seed)
        return SyntheticWorld(WorldSpec(users=self.users, items=BENCH_ITEMS, seed=seed)).events(count)


def serialized(events: Iterator[Event]) -> list[tuple[bytes, bytes]]:
    return [(event.kafka_key, event.to_json()) for event in events]


def produce_all(settings: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(settings)
    for key, value in records:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120) > 0:
        raise RuntimeError(f"could not publish every event to {topic}")


def fresh_topic(settings: Settings, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": settings.stack.kafka_bootstrap})  # referenced until the future resolves
    admin.create_topics([NewTopic(name, settings.stack.events_partitions, 1)])[name].result(timeout=60)
    return name


def processed(store: FeatureStore, namespace: str) -> int:
    """Distinct events the job has applied: the trending key's version counts them."""
    stored = store.read(KeyKind.TRENDING, TRENDING_ENTITY, namespace)
    return stored[0] if stored is not None else 0


class Job:
    """The live feature job of one configuration, with its own Flink log directory."""

    def __init__(
        self, settings: Settings, configuration: Configuration, topic: str, namespace: str, *, fresh: bool = True
    ):
        """`fresh`: ignore the namespace's checkpoints; otherwise resume from the newest."""
        self.log_dir = settings.stack.logs_dir / "bench" / namespace
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "streams.feature_job",
            "--topic",
            topic,
            "--namespace",
            namespace,
            *(["--fresh"] if fresh else []),
            *([] if configuration.log_samples else ["--no-samples"]),
        ]
        # Absolute: a previous checkout's job runs in its own directory, on this stack and these jars.
        env = os.environ | {
            "FLINK_LOG_DIR": str(self.log_dir.resolve()),
            "PYTHONPATH": str(configuration.code),
            "KF_RUN_DIR": str(settings.stack.run_dir.resolve()),
            "KF_JARS_DIR": str(settings.stack.jars_dir.resolve()),
            **configuration.environment,
        }
        with (self.log_dir / "job.log").open("ab") as output:
            self.process = subprocess.Popen(
                command,
                cwd=configuration.code,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def cpu_seconds(self) -> float:
        """CPU time of the job's processes (its Python driver and the JVM it starts, with Python inside)."""
        return self._summed(own_cpu_seconds)

    def cpu_seconds_by_thread(self) -> Counter[str]:
        """CPU time of the job's processes' threads, by thread name (`thread_cpu_seconds`)."""
        return sum(family_measures(self.process.pid, thread_cpu_seconds).values(), Counter())

    def resident_bytes(self) -> int:
        """Resident memory of the job's processes."""
        return round(self._summed(lambda member: member.memory_info().rss))

    def _summed(self, measure) -> float:
        return sum(family_measures(self.process.pid, measure).values())

    def kill(self) -> None:
        """kill -9 of every process of the job, as when its machine fails."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def family_measures(pid: int, measure) -> dict[int, float]:
    """`measure(process)` of the process `pid` and each process under it, by pid; those that ended
    meanwhile are left out."""
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    measured = {}
    for member in family:
        try:
            measured[member.pid] = measure(member)
        except psutil.NoSuchProcess:
            continue
    return measured


def own_cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def thread_cpu_seconds(process: psutil.Process, proc: Path = Path("/proc")) -> Counter[str]:
    """CPU seconds of `process`'s threads by name, digits masked so a pool's threads count as one. In
    thread mode a Flink task's thread (named after its first operator) runs its operators' Python
    too, so this is the job's CPU by stage."""
    by_name: Counter[str] = Counter()
    for thread in process.threads():
        try:
            name = (proc / str(process.pid) / "task" / str(thread.id) / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        by_name[re.sub(r"\d+", "N", name)] += thread.user_time + thread.system_time
    return by_name


def shares(seconds: Counter[str], top: int = 8) -> dict[str, float]:
    """The `top` largest of `seconds` as shares of their whole, largest first."""
    total = sum(seconds.values())
    return {name: spent / total for name, spent in seconds.most_common(top)} if total > 0 else {}


def wait_until(condition, job: Job, what: str, within_s: float = CATCH_UP_S) -> float:
    """Until `condition()`; returns the monotonic time it held."""
    deadline = time.monotonic() + within_s
    while not condition():
        if job.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the job stopped or fell behind before {what}; see {job.log_dir}")
        time.sleep(POLL_S)
    return time.monotonic()


def wait_until_processed(
    store: FeatureStore, namespace: str, count: int, job: Job, within_s: float = CATCH_UP_S
) -> float:
    return wait_until(lambda: processed(store, namespace) >= count, job, f"{count:,} events in Redis", within_s)


def committed_event_lines(directory: Path, counted: dict[Path, int]) -> int:
    """Event lines in the log's committed files; `counted` remembers files already read (they never change)."""
    for path in sample_log.committed_files(directory, sample_log.today()):
        if path not in counted:
            counted[path] = sum(line.startswith(b'["e"') for line in path.read_bytes().splitlines())
    return sum(counted.values())


def wait_until_logged(directory: Path, count: int, job: Job) -> float:
    counted: dict[Path, int] = {}
    return wait_until(lambda: committed_event_lines(directory, counted) >= count, job, f"{count:,} events logged")


def live_events(
    workload: Workload, limit: int, seed: int, pacer: Pacer, now_ms: Callable[[], int] = lambda: int(time.time() * 1000)
) -> Iterator[Event]:
    """The workload's events, each held back until the pacer lets it go and then stamped, as an app
    stamps an event it sends: stamped before the wait, an event would look up to 1 / rate older."""
    for index, event in enumerate(workload.events(limit, seed)):
        pacer.wait(index, None)
        yield event.model_copy(update={"ts": now_ms()})


def freshness(
    job: Job,
    producer: Producer,
    topic: str,
    workload: Workload,
    rate: int,
    seconds: float,
    warmup_s: float,
    store: FeatureStore,
    namespace: str,
    redis_server: psutil.Process | None,
) -> FreshnessResult:
    """Freshness while events arrive at `rate` for `seconds`, after `warmup_s` at that rate that are
    not counted, and the CPU of the job and of `redis_server` while they arrive."""
    before = processed(store, namespace)
    with Progress(disable=True) as quiet:
        warm_up = live_events(workload, int(rate * warmup_s), seed=rate, pacer=Pacer(rate=rate))
        warm = publish(warm_up, producer, topic, Pacer(), quiet)
    # The writer's first report after the warm-up still covers some of it: counted from the next one.
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + REPORT_EVERY_S))
    # The writer reports when a batch arrives: the input goes on for one more report, which covers the end.
    measured = int(rate * (seconds + REPORT_EVERY_S + 2))
    cpu_before, threads_before, redis_before = job.cpu_seconds(), job.cpu_seconds_by_thread(), cpu_of(redis_server)
    with Progress(disable=True) as quiet:
        summary = publish(
            live_events(workload, measured, seed=rate + 1, pacer=Pacer(rate=rate)), producer, topic, Pacer(), quiet
        )
    per_1000_events = 1e6 / summary.sent
    cpu, threads = job.cpu_seconds() - cpu_before, job.cpu_seconds_by_thread() - threads_before
    redis_cpu = None if redis_before is None else cpu_of(redis_server) - redis_before
    target = before + warm.sent + summary.sent
    catch_up_until = time.monotonic() + 30
    while processed(store, namespace) < target and time.monotonic() < catch_up_until:
        time.sleep(POLL_S)
    time.sleep(REPORT_EVERY_S + 2)  # the writer logs its percentiles every 10 s
    backlog = target - processed(store, namespace)
    reports = freshness_reports(job.log_dir, since)

    def values(name: str) -> list[float]:
        return sorted(getattr(report, name) for report in reports)

    def median(name: str) -> float | None:
        return values(name)[len(reports) // 2] if reports else None

    return FreshnessResult(
        rate=rate,
        sent=summary.sent,
        achieved_rate=summary.per_second,
        caught_up=backlog <= 0,
        backlog=max(backlog, 0),
        p50_ms=median("event_p50_ms"),
        p99_ms=max(values("event_p99_ms"), default=None),
        append_p50_ms=median("append_p50_ms"),
        append_p99_ms=max(values("append_p99_ms"), default=None),
        cpu_ms_per_1000_events=cpu * per_1000_events,
        cpu_ms_per_1000_events_by_thread={name: spent * per_1000_events for name, spent in threads.most_common(8)},
        redis_cpu_ms_per_1000_events=None if redis_cpu is None else redis_cpu * per_1000_events,
    )


def cpu_of(process: psutil.Process | None) -> float | None:
    """CPU seconds of `process`, None when there is none or it ended."""
    try:
        return None if process is None else own_cpu_seconds(process)
    except psutil.NoSuchProcess:
        return None


def measure(
    settings: Settings,
    configuration: Configuration,
    workload: Workload,
    records: list[tuple[bytes, bytes]],
    state_count: int,
    arguments: argparse.Namespace,
    store: FeatureStore,
) -> tuple[Result, str]:
    """One configuration on its own topic and namespace, `records` its state events (the first
    `state_count`) and `workload`'s burst; returns its result and its topic."""
    topic, namespace = fresh_topic(settings, "bench"), f"bench-{uuid.uuid4().hex[:8]}"
    console.print(f"[bold]{configuration.label}[/]: publishing {len(records):,} events to {topic} ...")
    produce_all(settings, topic, records)
    job = Job(settings, configuration, topic, namespace)
    try:
        console.print(f"  applying {state_count:,} events of {arguments.users:,} users ...")
        started = wait_until_processed(store, namespace, 1, job)  # JVM and job start-up not counted
        state_done = wait_until_processed(store, namespace, state_count, job)
        cpu_before, threads_before = job.cpu_seconds(), job.cpu_seconds_by_thread()
        console.print(f"  the burst of {len(records) - state_count:,} events ...")
        burst_done = wait_until_processed(store, namespace, len(records), job)
        cpu, threads = job.cpu_seconds() - cpu_before, job.cpu_seconds_by_thread() - threads_before
        log_dir = sample_log.log_directory(settings.stack.samples_dir, namespace)
        # A previous checkout's log may be in another format, which this one cannot count.
        logged = configuration.log_samples and configuration.code == PROJECT_ROOT
        logged_at = wait_until_logged(log_dir, len(records), job) if logged else None
        log_bytes = sum(path.stat().st_size for path in log_dir.rglob("*")) if logged else None
        result = Result(
            label=configuration.label,
            state_events=state_count,
            state_seconds=state_done - started,
            burst_events=len(records) - state_count,
            burst_seconds=burst_done - state_done,
            cpu_ms_per_1000_events=cpu * 1e6 / (len(records) - state_count),
            log_committed_after_s=None if logged_at is None else logged_at - burst_done,
            log_bytes_per_event=None if log_bytes is None else log_bytes / len(records),
            burst_cpu_share_by_thread=shares(threads),
        )
        producer, redis_server = make_producer(settings), RedisServer(settings).running_process()
        for rate in map(int, arguments.rates.split(",")):
            console.print(f"  freshness at {rate:,} events/s for {arguments.seconds:.0f} s ...")
            result.freshness.append(
                freshness(
                    job,
                    producer,
                    topic,
                    workload,
                    rate,
                    arguments.seconds,
                    arguments.warmup_seconds,
                    store,
                    namespace,
                    redis_server,
                )
            )
    finally:
        job.stop()
        forget(settings, store, namespace)
    return result, topic


def forget(settings: Settings, store: FeatureStore, namespace: str) -> None:
    """Delete what a measurement left: its keys, checkpoints and sample log. Left behind,
    they fill Redis up to its memory limit, where eviction slows every later run."""
    store.drop_namespace(namespace)
    shutil.rmtree(settings.stack.checkpoints_dir / namespace, ignore_errors=True)
    shutil.rmtree(settings.stack.samples_dir / namespace, ignore_errors=True)


def forget_topic(settings: Settings, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": settings.stack.kafka_bootstrap})  # referenced until the future resolves
    admin.delete_topics([topic])[topic].result(timeout=60)


def replay(settings: Settings, topic: str, store: FeatureStore, engine: str) -> dict[str, float | str]:
    """`kingfisher replay` of `topic` into a fresh namespace (`engine` "flink": with `--flink`): the
    operator's wall time and events/s as the command reports them, its CPU (every process it
    started; those nobody waits for sampled every POLL_S, so a lower bound) per 1,000 events, and
    for the Flink job, events/s from its first Redis write to its last."""
    namespace = f"bench-replay-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "streams.cli", "replay", "--namespace", namespace, "--topic", topic,
               "--no-switch", "--no-progress"] + (["--flink"] if engine == "flink" else [])  # fmt: skip
    cpu_before, started = _children_cpu_seconds(), time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = last = None
    sampled: dict[int, float] = {}
    """pid -> CPU seconds at its latest sample, for the command and every process under it."""
    while process.poll() is None:
        sampled |= family_measures(process.pid, own_cpu_seconds)
        count, now = processed(store, namespace), time.monotonic()
        if count and first is None:
            first = (now, count)
        if first and (last is None or count != last[1]):
            last = (now, count)
        time.sleep(POLL_S)
    output = process.stdout.read()
    # Waited-for descendants count exactly; the Flink job's JVM is not waited for, so is sampled.
    cpu_seconds = max(_children_cpu_seconds() - cpu_before, sum(sampled.values()))
    forget(settings, store, namespace)
    match = REPLAY_LINE.search(" ".join(output.split()))
    if process.returncode != 0 or match is None:
        raise RuntimeError(f"the replay failed:\n{output[-3000:]}")
    events = int(match["events"].replace(",", ""))
    result = {
        "engine": engine,
        "events": events,
        "wall_seconds": time.monotonic() - started,
        "cli_events_per_s": events / float(match["seconds"]),
        "cpu_ms_per_1000_events": cpu_seconds * 1e6 / events,
    }
    if first and last and last[0] > first[0]:  # a backfill writes the trending key once, at its end
        result["processing_events_per_s"] = (last[1] - first[1]) / (last[0] - first[0])
    return result


def _children_cpu_seconds() -> float:
    """CPU time of this process's finished children and their waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def report(results: list[Result], per_round: int, replays: list[dict[str, float | str]]) -> None:
    table = Table(
        "configuration",
        "burst events/s",
        "job CPU ms / 1,000 events",
        "state events/s",
        "log committed after",
        "log bytes / event",
        title="throughput (job holding the users' state)",
    )
    for r in results:
        table.add_row(
            r.label,
            f"{r.burst_rate:,.0f}",
            f"{r.cpu_ms_per_1000_events:,.0f}",
            f"{r.state_events / r.state_seconds:,.0f}",
            "-" if r.log_committed_after_s is None else f"{r.log_committed_after_s:.1f} s",
            "-" if r.log_bytes_per_event is None else f"{r.log_bytes_per_event:.0f}",
        )
    Console().print(table)
    for r in results:
        by_thread = ", ".join(f"{name} {share:.0%}" for name, share in r.burst_cpu_share_by_thread.items())
        Console().print(f"{r.label}: the burst's job CPU by thread: {by_thread}")
    for start in range(0, len(results), per_round):  # each round's first configuration against the others
        base, *others = results[start : start + per_round]
        for other in others:
            Console().print(
                f"{base.label} / {other.label}: burst throughput x{base.burst_rate / other.burst_rate:.2f}, "
                f"CPU per event x{base.cpu_ms_per_1000_events / other.cpu_ms_per_1000_events:.2f}"
            )
    fresh = Table(
        "configuration",
        "input events/s",
        "kept up",
        "event→Redis p50 ms",
        "p99 ms",
        "Kafka append→Redis p50 ms",
        "p99 ms",
        "job CPU ms / 1,000 events",
        "Redis CPU ms / 1,000",
        title="freshness",
    )
    for r in results:
        for f in r.freshness:
            fresh.add_row(
                r.label,
                f"{f.rate:,} ({f.achieved_rate:,.0f})",
                "yes" if f.caught_up else f"no ({f.backlog:,})",
                *(
                    f"{v:,.0f}" if v is not None else "-"
                    for v in (f.p50_ms, f.p99_ms, f.append_p50_ms, f.append_p99_ms, f.cpu_ms_per_1000_events)
                ),
                "-" if f.redis_cpu_ms_per_1000_events is None else f"{f.redis_cpu_ms_per_1000_events:,.1f}",
            )
    Console().print(fresh)
    for r in results:
        for f in r.freshness:
            by_thread = ", ".join(f"{name} {ms:,.1f}" for name, ms in f.cpu_ms_per_1000_events_by_thread.items())
            Console().print(f"{r.label} at {f.rate:,} events/s: job CPU ms per 1,000 events by thread: {by_thread}")
    for replayed in replays:
        between = replayed.get("processing_events_per_s")
        Console().print(
            f"replay ({replayed['engine']}): {replayed['events']:,} events in {replayed['wall_seconds']:.1f} s wall, "
            f"{replayed['cli_events_per_s']:,.0f}/s as `kingfisher replay` reports it (start-up included), "
            f"{replayed['cpu_ms_per_1000_events']:,.0f} ms CPU per 1,000 events"
            + ("" if between is None else f"; {between:,.0f}/s from its first Redis write to its last")
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.stream", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=100_000, help="users whose state the job holds (default 100000)")
    parser.add_argument("--events-per-user", type=int, default=5, help="events of each of them first (default 5)")
    parser.add_argument("--events", type=int, default=300_000, help="events of the measured burst (default 300000)")
    parser.add_argument(
        "--workloads",
        default="real,short",
        help="bursts to measure, each on its own topic (default real,short): real, sessions of users with Zipf-"
        "distributed activity whose sequences fill and seen sets grow into the thousands; short, the synthetic "
        "world's mostly-impression sessions over users of a few events each",
    )
    parser.add_argument("--rates", default="1000,5000", help="input rates for freshness, events/s (default 1000,5000)")
    parser.add_argument("--seconds", type=float, default=30, help="how long each rate is measured (default 30)")
    parser.add_argument(
        "--warmup-seconds", type=float, default=20, help="how long each rate is held before it is measured (default 20)"
    )
    parser.add_argument(
        "--no-samples-beside",
        dest="beside",
        action="store_false",
        help="skip the --no-samples configurations (this checkout's and --compare-with's)",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="CHECKOUT",
        help="also run a previous checkout's job (e.g. a `git worktree`), in the same run",
    )
    parser.add_argument(
        "--with-setting",
        action="append",
        default=[],
        metavar="'KF_NAME=VALUE ...'",
        help="also run the job (sample log on) with these settings (space-separated), in the same run; repeatable: "
        "each is one more configuration",
    )
    parser.add_argument(
        "--replay-engines",
        default="backfill,flink",
        help="replay the first topic with each in turn (default backfill,flink: `kingfisher replay`, then --flink)",
    )
    parser.add_argument("--no-replay", dest="replay", action="store_false", help="skip the replay measurements")
    parser.add_argument("--repeat", type=int, default=1, help="run the configurations this many times, interleaved")
    arguments = parser.parse_args(argv)
    settings = Settings()
    store = FeatureStore.for_stack(settings.stack)
    configurations = [Configuration("as make demo runs it (sample log on)", True)]
    if arguments.beside:
        configurations.append(Configuration("--no-samples", False))
    for settings_text in arguments.with_setting:
        environment = {}
        for setting in settings_text.split():
            name, _, value = setting.partition("=")
            if not name.startswith("KF_") or not value:
                parser.error(f"--with-setting takes KF_NAME=VALUE, not {setting!r}")
            environment[name] = value
        configurations.append(Configuration(f"{settings_text} (sample log on)", True, environment=environment))
    if arguments.compare_with:
        name = arguments.compare_with.name
        configurations.append(Configuration(f"{name}: sample log on", True, arguments.compare_with.resolve()))
        if arguments.beside:
            configurations.append(Configuration(f"{name}: --no-samples", False, arguments.compare_with.resolve()))
    workloads = [Workload(name, arguments.users) for name in arguments.workloads.split(",")]
    if unknown := {workload.name for workload in workloads} - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}: choose from {', '.join(WORKLOADS)}")
    console.print(f"generating {arguments.users * arguments.events_per_user:,} events and {len(workloads)} bursts ...")
    state = serialized(population(arguments.users, arguments.events_per_user, seed=5))
    bursts = {workload: serialized(workload.events(arguments.events, seed=3)) for workload in workloads}
    results, topics = [], []
    for repetition in range(arguments.repeat):  # interleaved: the machine's speed drifts within minutes
        for workload, configuration in itertools.product(workloads, configurations):
            records = state + bursts[workload]
            result, topic = measure(settings, configuration, workload, records, len(state), arguments, store)
            result.label = f"{workload.name}: {result.label}" + (f" #{repetition + 1}" if arguments.repeat > 1 else "")
            results.append(result)
            topics.append(topic)
    engines = arguments.replay_engines.split(",") if arguments.replay else []
    if unknown_engines := set(engines) - {"backfill", "flink"}:
        parser.error(f"unknown replay engines {sorted(unknown_engines)}: choose from backfill, flink")
    replayed = [replay(settings, topics[0], store, engine) for engine in engines]
    for topic in topics:
        forget_topic(settings, topic)
    report(results, len(configurations), replayed)
    path = settings.stack.run_dir / "bench" / f"stream-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(
            {"results": [asdict(r) for r in results], "replay": replayed, "arguments": vars(arguments)},
            option=orjson.OPT_INDENT_2,
            default=str,
        )
    )
    console.print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
