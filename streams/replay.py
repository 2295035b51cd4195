"""Replay the events topic into a fresh Redis namespace, then point serving at it.

The replay reads the topic up to the offsets that are latest when it starts and rebuilds every key
from it. By default it is a backfill (`streams.backfill`): the job's fold in worker processes
without Flink, each user written once per KF_BACKFILL_FLUSH_S and at the end, every other key once
at the end. With `--flink` it
is the feature job itself, bounded and without a checkpoint to restore, gathering its batches for
KF_REPLAY_BATCH_MS instead of the live job's KF_STREAM_BATCH_MS (checkpointed, slower); its
progress comes from the offsets the job commits to Kafka on each checkpoint.
"""

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from rich.console import Console
from rich.progress import Progress

from schemas.config import Settings, environment_variable
from schemas.runtime.feature_store import FeatureStore
from schemas.sample_log import log_directory
from streams.backfill import backfill
from streams.publish import progress_bar

log = logging.getLogger(__name__)
REPLAY_CHECKPOINT_INTERVAL_S = "2"
POLL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class ReplayPlan:
    topic: str
    namespace: str
    group_id: str
    start: dict[int, int]
    """partition -> first offset to replay"""
    end: dict[int, int]
    """partition -> offset the replay stops before (the latest when it was planned)"""

    @property
    def events(self) -> int:
        return sum(self.end[p] - self.start[p] for p in self.end)


def group_consumer(settings: Settings, group_id: str) -> Consumer:
    """A consumer in `group_id` that never commits: it reads the group's committed offsets."""
    return Consumer(
        {"bootstrap.servers": settings.stack.kafka_bootstrap, "group.id": group_id, "enable.auto.commit": False}
    )


def plan(settings: Settings, topic: str, namespace: str, from_ms: int | None) -> ReplayPlan:
    group_id = settings.feature_job_name(namespace)
    consumer = group_consumer(settings, group_id)
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        watermarks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in partitions}
        start = {p: low for p, (low, _) in watermarks.items()}
        if from_ms is not None:
            found = consumer.offsets_for_times([TopicPartition(topic, p, from_ms) for p in partitions], timeout=10)
            # -1: no record at or after the time: nothing to replay from that partition.
            start = {tp.partition: (tp.offset if tp.offset >= 0 else watermarks[tp.partition][1]) for tp in found}
        return ReplayPlan(topic, namespace, group_id, start, {p: high for p, (_, high) in watermarks.items()})
    finally:
        consumer.close()


def replayed_so_far(consumer: Consumer, replay: ReplayPlan) -> int:
    committed = consumer.committed([TopicPartition(replay.topic, p) for p in replay.end], timeout=10)
    return sum(max(0, tp.offset - replay.start[tp.partition]) for tp in committed if tp.offset >= 0)


def job_command(
    settings: Settings, replay: ReplayPlan, from_ms: int | None, samples: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The bounded feature job's command line and environment: its batches gather for KF_REPLAY_BATCH_MS."""
    command = [sys.executable, "-m", "streams.feature_job", "--namespace", replay.namespace, "--topic", replay.topic,
               "--bounded", "--fresh"] + ([] if samples else ["--no-samples"])  # fmt: skip
    if from_ms is not None:
        command += ["--from-timestamp", str(from_ms)]
    env = os.environ | {
        "KF_CHECKPOINT_INTERVAL_S": os.environ.get("KF_CHECKPOINT_INTERVAL_S", REPLAY_CHECKPOINT_INTERVAL_S),
        environment_variable("stream_batch_ms"): str(settings.stream.replay_batch_ms),
    }
    return command, env


def run_flink(settings: Settings, replay: ReplayPlan, from_ms: int | None, samples: bool, progress: Progress) -> int:
    """Run the bounded job with a progress bar; returns its exit code."""
    command, env = job_command(settings, replay, from_ms, samples)
    log_path = settings.stack.logs_dir / f"replay-{replay.namespace}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    task = progress.add_task(f"replaying into {replay.namespace}", total=replay.events)
    # One consumer of the job's group reads its committed offsets for the whole run.
    offsets = group_consumer(settings, replay.group_id)
    with log_path.open("ab") as job_log:
        job = subprocess.Popen(command, stdout=job_log, stderr=subprocess.STDOUT, env=env)
        while job.poll() is None:
            progress.update(task, completed=min(replayed_so_far(offsets, replay), replay.events))
            time.sleep(POLL_INTERVAL_S)
    offsets.close()
    if job.returncode == 0:
        progress.update(task, completed=replay.events)
    return job.returncode


def run_backfill(settings: Settings, replay: ReplayPlan, samples: bool, progress: Progress) -> int:
    """Backfill with a progress bar (and the namespace's sample log when `samples`); returns 0, or 1
    when it failed (logged)."""
    task = progress.add_task(f"backfilling {replay.namespace}", total=replay.events)
    store = FeatureStore.for_stack(settings.stack)
    store.record_feature_spec(replay.namespace, settings.pipeline.features)
    store.close()
    try:
        share = backfill(settings, replay, lambda read: progress.update(task, completed=min(read, replay.events)),
                         log_directory(settings.stack.samples_dir, replay.namespace) if samples else None)  # fmt: skip
    except (RuntimeError, KafkaException) as failure:
        log.error("%s", failure)
        return 1
    log.info("backfill of %s: %s events applied, %s duplicates dropped, %s dead letters",
             replay.namespace, f"{share.applied:,}", f"{share.duplicates:,}", f"{share.invalid:,}")  # fmt: skip
    return 0


def replay_command(settings: Settings, topic: str, namespace: str, from_ms: int | None, *, dry_run: bool,
                   switch: bool, show_progress: bool, console: Console, flink: bool = False,
                   samples: bool = False) -> int:  # fmt: skip
    store = FeatureStore.for_stack(settings.stack)
    current = store.active_namespace(settings.stack.namespace)
    if namespace == current:
        console.print(f"[red]namespace {namespace!r} is the active one; replay into a fresh namespace")
        return 2
    existing = store.count_keys(namespace)
    if existing:
        console.print(f"[red]namespace {namespace!r} already holds {existing:,} keys; drop it or pick another")
        return 2
    replay = plan(settings, topic, namespace, from_ms)
    partitions = ", ".join(f"{p}: {replay.start[p]}..{replay.end[p]}" for p in replay.end)
    console.print(f"replay {replay.events:,} events of {topic!r} (offsets {partitions}) into namespace "
                  f"{namespace!r}; serving reads {current!r}{' and will switch' if switch else ''}")  # fmt: skip
    if dry_run:
        console.print("dry run: nothing replayed, nothing switched")
        return 0
    started = time.monotonic()
    with progress_bar(enabled=show_progress) as progress:
        if flink:
            code = run_flink(settings, replay, from_ms, samples, progress)
        else:
            code = run_backfill(settings, replay, samples, progress)
    seconds = time.monotonic() - started
    if code != 0:
        where = f"see {settings.stack.logs_dir / f'replay-{namespace}.log'}" if flink else "see the log above"
        console.print(f"[red]the replay failed (exit {code}); {where}; drop {namespace!r} before replaying again")
        return 1
    console.print(f"replayed {replay.events:,} events in {seconds:.1f} s ({replay.events / seconds:,.0f}/s); "
                  f"{store.count_keys(namespace):,} keys in {namespace!r}")  # fmt: skip
    if switch:
        previous = store.switch_namespace(namespace)
        console.print(f"serving now reads {namespace!r} (was {previous or current!r}); the old namespace stays "
                      f"until `kingfisher namespace drop {previous or current}`")  # fmt: skip
    return 0
