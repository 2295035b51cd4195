"""Benchmark of the streaming feature job on the running local stack (`make bench-stream`).

1. Throughput: N synthetic events are published first, then the bounded job processes them; the
   rate is timed from its first Redis write to its last, so JVM and worker start-up are excluded.
2. Freshness: the job runs live while events stamped with the current time are published at each
   fixed rate (after a warm-up at that rate, which is not counted); the job's Redis writer measures
   write time - event time (and - Kafka append time) for every event and logs percentiles every
   10 s, which this reads back from Flink's log.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

import orjson
import redis
from confluent_kafka.admin import NewTopic
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from infra.stack import kafka_admin
from schemas.config import Settings
from schemas.redis_format import TRENDING_ENTITY, VERSION_FIELD, KeyKind, redis_key
from schemas.sources.synthetic import SyntheticWorld, WorldSpec
from streams.publish import Pacer, make_producer, publish
from streams.redis_writer import REPORT_EVERY_S

console = Console(stderr=True)
FRESHNESS_LINE = re.compile(
    r"^(?P<time>\S+ \S+),\d+ .*redis writer users: .*event_p50_ms (?P<p50>[\d,.]+), event_p99_ms (?P<p99>[\d,.]+), "
    r"append_p50_ms (?P<ap50>[\d,.]+), append_p99_ms (?P<ap99>[\d,.]+)"
)


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


def fresh_topic(settings: Settings, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = kafka_admin(settings)
    admin.create_topics([NewTopic(name, settings.events_partitions, 1)])[name].result()
    return name


def start_job(topic: str, namespace: str, bounded: bool, log_name: str, settings: Settings) -> subprocess.Popen:
    command = [sys.executable, "-m", "streams.feature_job", "--topic", topic, "--namespace", namespace, "--fresh",
               "--no-samples", *(["--bounded"] if bounded else [])]  # fmt: skip
    log = (settings.logs_dir / log_name).open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_job(job: subprocess.Popen) -> None:
    if job.poll() is None:
        os.killpg(job.pid, signal.SIGTERM)
        try:
            job.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()


def processed(client: redis.Redis, namespace: str) -> int:
    """Distinct events the job has applied: the trending key's version counts them."""
    version = client.hget(redis_key(KeyKind.TRENDING, TRENDING_ENTITY, namespace), VERSION_FIELD)
    return int(version) if version is not None else 0


def throughput(settings: Settings, client: redis.Redis, events: int) -> tuple[float, float]:
    topic, namespace = fresh_topic(settings, "bench-tput"), f"bench-tput-{uuid.uuid4().hex[:6]}"
    with Progress(disable=True) as quiet:
        publish(SyntheticWorld(WorldSpec(seed=3)).events(events), make_producer(settings), topic, Pacer(), quiet)
    job = start_job(topic, namespace, bounded=True, log_name="bench-throughput.log", settings=settings)
    first: tuple[float, int] | None = None
    last = (time.monotonic(), 0)
    while job.poll() is None:
        count, now = processed(client, namespace), time.monotonic()
        if count and first is None:
            first = (now, count)
        if count != last[1]:
            last = (now, count)
        time.sleep(0.2)
    last = (last[0], processed(client, namespace)) if first else last
    if first is None or last[1] <= first[1]:
        raise RuntimeError(f"the throughput job wrote nothing; see {settings.logs_dir / 'bench-throughput.log'}")
    return (last[1] - first[1]) / (last[0] - first[0]), last[0] - first[0]


def live_events(limit: int, seed: int = 9):
    """Synthetic events stamped with the time they are sent."""
    for event in SyntheticWorld(WorldSpec(seed=seed)).events(limit):
        yield event.model_copy(update={"ts": int(time.time() * 1000)})


def freshness_lines(log: str, since: str) -> list[re.Match]:
    return [m for m in map(FRESHNESS_LINE.match, log.splitlines()) if m and m["time"] >= since]


def freshness(settings: Settings, client: redis.Redis, rate: int, seconds: float, warmup_s: float) -> FreshnessResult:
    """Freshness while events arrive at `rate` for `seconds`, after `warmup_s` at that rate that are
    not counted (the JVM compiles the job's hot paths during its first seconds)."""
    topic, namespace = fresh_topic(settings, "bench-fresh"), f"bench-fresh-{rate}-{uuid.uuid4().hex[:6]}"
    job = start_job(topic, namespace, bounded=False, log_name=f"bench-freshness-{rate}.log", settings=settings)
    producer = make_producer(settings)
    try:
        with Progress(disable=True) as quiet:  # one warm-up event (another world: no id in common)
            publish(live_events(1, seed=10), producer, topic, Pacer(), quiet)
        deadline = time.monotonic() + 180
        while processed(client, namespace) < 1:
            if time.monotonic() > deadline or job.poll() is not None:
                raise RuntimeError(f"the live job did not start; see {settings.logs_dir}/bench-freshness-{rate}.log")
            time.sleep(0.2)
        with Progress(disable=True) as quiet:
            publish(live_events(int(rate * warmup_s), seed=11), producer, topic, Pacer(rate=rate), quiet)
        # The writer's first report after the warm-up still covers some of it: counted from the next one.
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() + REPORT_EVERY_S))
        with Progress(disable=True) as quiet:
            summary = publish(live_events(int(rate * seconds)), producer, topic, Pacer(rate=rate), quiet)
        target = summary.sent + int(rate * warmup_s) + 1
        catch_up_until = time.monotonic() + 30
        while processed(client, namespace) < target and time.monotonic() < catch_up_until:
            time.sleep(0.2)
        time.sleep(12)  # the writer logs its percentiles every 10 s
        backlog = target - processed(client, namespace)
    finally:
        stop_job(job)
    log_path = next(settings.logs_dir.glob("flink-*python*.log"))
    lines = freshness_lines(log_path.read_text(errors="replace"), since)

    def number(match: re.Match, name: str) -> float:
        return float(match[name].replace(",", ""))

    return FreshnessResult(
        rate=rate,
        sent=summary.sent,
        achieved_rate=summary.per_second,
        caught_up=backlog <= 0,
        backlog=max(backlog, 0),
        p50_ms=sorted(number(m, "p50") for m in lines)[len(lines) // 2] if lines else None,
        p99_ms=max((number(m, "p99") for m in lines), default=None),
        append_p50_ms=sorted(number(m, "ap50") for m in lines)[len(lines) // 2] if lines else None,
        append_p99_ms=max((number(m, "ap99") for m in lines), default=None),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events for the throughput run (default 100000)")
    parser.add_argument("--rates", default="500,1000,5000", help="input rates for freshness, events/s")
    parser.add_argument("--seconds", type=float, default=30, help="how long each rate is measured (default 30)")
    parser.add_argument(
        "--warmup-seconds", type=float, default=20, help="how long each rate is held before it is measured (default 20)"
    )
    arguments = parser.parse_args(argv)
    settings = Settings()
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLINK_LOG_DIR", str(settings.logs_dir.resolve()))
    client = redis.Redis(host=settings.bind_host, port=settings.redis_port)

    console.print(f"throughput: {arguments.events:,} events through the bounded job ...")
    rate, seconds = throughput(settings, client, arguments.events)
    results = []
    for target in map(int, arguments.rates.split(",")):
        console.print(f"freshness at {target:,} events/s for {arguments.seconds:.0f} s ...")
        results.append(freshness(settings, client, target, arguments.seconds, arguments.warmup_seconds))

    console.print(
        f"sustained throughput: {rate:,.0f} events/s ({arguments.events:,} events, {seconds:.1f} s of processing)"
    )
    table = Table("input events/s", "sent", "kept up", "backlog", "event→Redis p50 ms", "p99 ms",
                  "Kafka append→Redis p50 ms", "p99 ms")  # fmt: skip
    for r in results:
        table.add_row(f"{r.rate:,} ({r.achieved_rate:,.0f})", f"{r.sent:,}", "yes" if r.caught_up else "no",
                      f"{r.backlog:,}", *(f"{v:,.0f}" if v is not None else "-"
                                          for v in (r.p50_ms, r.p99_ms, r.append_p50_ms, r.append_p99_ms)))  # fmt: skip
    Console().print(table)
    report = settings.run_dir / "bench" / f"stream-{time.strftime('%Y%m%dT%H%M%S')}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_bytes(
        orjson.dumps({"throughput_events_per_s": rate, "freshness": results}, option=orjson.OPT_INDENT_2)
    )
    console.print(f"written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
