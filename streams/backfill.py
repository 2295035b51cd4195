"""Backfill: the feature job's fold of a bounded topic, in worker processes, each key written rarely.

A replay fills a fresh namespace nobody reads before it ends, so only each key's state at the end
matters. The live job pays per batch for what a replay does not need: records crossing from the JVM
to Python, states pickled into Flink's MapState, a Redis round trip per stage and batch. The
backfill applies the same functions of `schemas.runtime.streaming` to the same records in the same
per-partition order (parse and validate, dedupe by event id, users, seen sets, items, experiments)
with its state in dictionaries, so every key and value equals the live job's.

Up to `KF_BACKFILL_WORKERS` processes each read a share of the topic's partitions, balanced by their
records: the events contract keys each event by its user_id, so all of a user's events sit in one
partition, in order, and meet one worker. A worker writes its changed users once per
`KF_BACKFILL_FLUSH_S` (and at its end) and hands back its part of the items and experiment tallies,
which are sums and maxima of their events: the parent merges the parts, derives trending from the
items, and writes them once. A user found in two workers' partitions (a topic keyed against the
contract) fails the backfill; the Flink job (`kingfisher replay --flink`) keys by user itself.

What it gives up is the job's checkpoints: a backfill that fails leaves a partial namespace, to drop
and replay again. Dead letters go to the DLQ through an idempotent producer (at least once).
"""

import gc
import logging
import multiprocessing
import os
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, TYPE_CHECKING

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, Producer, TopicPartition

from schemas import sample_log
from schemas.config import Settings
from schemas.dead_letters import MAX_DEAD_LETTER_BYTES, dead_letter
from schemas.events import Event, parse_event
from schemas.experiments import ExperimentTallies, counted_arm
from schemas.features import FeatureSpec, ItemState, RecentEventIds, UserState
from schemas.runtime.feature_store import FeatureStore
from schemas.runtime.features import seen_entry
from schemas.runtime.streaming import (
    apply_item_event,
    apply_user_event,
    merge_item_states,
    trending_of,
)
from schemas.sample_log import SampleLogLines
from schemas.validation import InvalidRecord
from streams.redis_writer import RedisWriter, put_item, put_tallies, put_trending, put_user

if TYPE_CHECKING:
    from streams.replay import ReplayPlan

log = logging.getLogger(__name__)
CONSUME_BATCH = 10_000
CONSUME_TIMEOUT_S = 0.5
PROGRESS_POLL_S = 0.2


RawRecord = tuple[bytes, int, int, int | None]
"""One Kafka record of the events topic as the job's source reads it: payload, partition, offset,
and the Kafka append time (epoch ms; None when the broker gave none)."""


class UserInTwoShares(RuntimeError):
    """Two workers folded events of one user: the topic holds a user's events in two partitions."""


@dataclass
class Share:
    """What one worker folded beyond writing its users: the users it folded, its part of every
    item's events and of each experiment's, and its counts of records."""

    users: set[str] = field(default_factory=set)
    items: dict[str, ItemState] = field(default_factory=dict)
    tallies: dict[str, ExperimentTallies] = field(default_factory=dict)
    applied: int = 0
    duplicates: int = 0
    invalid: int = 0

    def merged(self, other: "Share", spec: FeatureSpec) -> "Share":
        """Both shares as one; raises UserInTwoShares when they folded events of the same user."""
        if shared := self.users & other.users:
            raise UserInTwoShares(
                f"the events of user {min(shared)!r} (and {len(shared) - 1:,} more) sit in more than one partition, "
                "against the events contract (each event keyed by its user_id): drop the namespace and replay "
                "with --flink, which keys events by user itself"
            )
        items = dict(self.items)
        for item_id, state in other.items.items():
            items[item_id] = merge_item_states(items[item_id], state, spec) if item_id in items else state
        tallies = dict(self.tallies)
        for experiment, counted in other.tallies.items():
            tallies[experiment] = tallies[experiment].merged(counted) if experiment in tallies else counted
        return Share(self.users | other.users, items, tallies, self.applied + other.applied,
                     self.duplicates + other.duplicates, self.invalid + other.invalid)  # fmt: skip


class BackfillFold:
    """The users' states after the records taken so far, and this fold's share of the items and
    experiments; `flush_users` writes the users changed since the last flush.

    Records must come in offset order within each partition (a user's events share one), as Kafka
    delivers them; partitions may interleave, as they do in the live job."""

    def __init__(self, spec: FeatureSpec, writer: RedisWriter, entity_ttl_ms: int, dedupe_capacity: int,
                 sample_log: SampleLogLines | None = None):  # fmt: skip
        self.spec, self.writer, self.sample_log = spec, writer, sample_log
        self.entity_ttl_ms, self.dedupe_capacity = entity_ttl_ms, dedupe_capacity
        self.users: dict[str, UserState] = {}
        self.recent_ids: dict[str, RecentEventIds] = {}
        self.share = Share()
        self.changed_users: set[str] = set()

    def take(self, records: Iterable[RawRecord], send_dead_letter: Callable[[bytes], None]) -> str | None:
        """Apply `records`; each invalid one becomes a dead letter handed to `send_dead_letter`.
        Returns their sample-log lines as one text when the fold logs samples (None: no lines)."""
        counted_by_experiment: dict[str, list[tuple]] = defaultdict(list)
        if self.sample_log is not None:
            self.sample_log.start_batch()
        for payload, partition, offset, append_ms in records:
            try:
                event = parse_event(payload)
            except InvalidRecord as invalid:
                self.share.invalid += 1
                send_dead_letter(dead_letter(payload, invalid.problems, partition, offset, append_ms))
                continue
            if not self._is_new(event.user_id, event.event_id):
                continue
            self._apply(event, partition, offset)
            if (counted := counted_arm(event)) is not None:
                experiment, arm, shadows_shown = counted
                counted_by_experiment[experiment].append((arm, event.type, event.ts, shadows_shown))
        tallies = self.share.tallies
        for experiment, counted in counted_by_experiment.items():
            experiment_tallies = tallies.get(experiment) or ExperimentTallies()
            for arm, event_type, ts, shadows_shown in counted:
                experiment_tallies = experiment_tallies.counted(arm, event_type, ts, shadows_shown)
            tallies[experiment] = experiment_tallies
        return None if self.sample_log is None else self.sample_log.take()

    def _is_new(self, user_id: str, event_id: str) -> bool:
        recent = self.recent_ids.get(user_id)
        if recent is None:
            recent = self.recent_ids[user_id] = RecentEventIds(self.dedupe_capacity)
        if recent.remember(event_id):
            return True
        self.share.duplicates += 1
        return False

    def _apply(self, event: Event, partition: int, offset: int) -> None:
        spec, user_id, item_id, items = self.spec, event.user_id, event.item_id, self.share.items
        before = self.users.get(user_id) or UserState()
        after = self.users[user_id] = apply_user_event(before, event, spec)
        if self.sample_log is not None:
            self.sample_log.add(before, event, partition, offset, after.version)
        items[item_id] = apply_item_event(items.get(item_id) or ItemState(), event, spec)
        self.changed_users.add(user_id)
        if (entry := seen_entry(event)) is not None:
            self.writer.add_seen(user_id, *entry, spec.seen_capacity, self.entity_ttl_ms)
        self.share.applied += 1

    def flush_users(self) -> None:
        """Write every user changed since the last flush (sequence, features, seen set), each once."""
        for user_id in self.changed_users:
            put_user(self.writer, user_id, self.users[user_id], self.entity_ttl_ms)
        self.writer.flush()
        self.changed_users = set()

    def finish(self) -> Share:
        """Write the users changed since the last flush; returns the share, with the users folded."""
        self.flush_users()
        self.share.users = set(self.users)
        return self.share


def write_shared(writer: RedisWriter, share: Share, spec: FeatureSpec, entity_ttl_ms: int) -> None:
    """Write the items, trending and experiment tallies of the whole topic, each key once."""
    for item_id, state in share.items.items():
        put_item(writer, item_id, state, entity_ttl_ms)
    if share.items:
        put_trending(writer, trending_of(share.items, spec), spec)
    for experiment, tallies in share.tallies.items():
        put_tallies(writer, experiment, tallies)
    writer.flush()


class SampleFiles:
    """A worker's part of the namespace's sample log (`schemas.sample_log`): a hidden file in the
    directory of each UTC day it writes on, as the job's file sink buckets by day, made visible at
    `commit` (readers see only visible files). A failed backfill leaves hidden files nobody reads."""

    def __init__(self, directory: Path, name: str, clock: Callable[[], float] = time.time):
        self.directory, self.name, self.clock = directory, name, clock
        self.files: dict[Path, IO[str]] = {}
        """visible path -> the open hidden file that becomes it."""

    def write(self, text: str) -> None:
        path = sample_log.part_file(self.directory, datetime.fromtimestamp(self.clock(), UTC).date(), self.name)
        if path not in self.files:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.files[path] = self._hidden(path).open("w")
        self.files[path].write(text + "\n")

    def commit(self) -> None:
        for path, file in self.files.items():
            file.close()
            os.replace(self._hidden(path), path)
        self.files = {}

    @staticmethod
    def _hidden(path: Path) -> Path:
        return path.with_name(f".{path.name}.inprogress")


def partition_shares(replay: "ReplayPlan", workers: int) -> list[list[int]]:
    """The partitions each worker reads: at most `workers` non-empty shares, balanced by the records
    to replay (largest partition first, each to the share with the fewest records so far)."""
    sizes = {p: replay.end[p] - replay.start[p] for p in replay.end if replay.end[p] > replay.start[p]}
    shares: list[list[int]] = [[] for _ in range(min(workers, len(sizes)))]
    loads = [0] * len(shares)
    for partition in sorted(sizes, key=lambda p: (-sizes[p], p)):
        lightest = loads.index(min(loads))
        shares[lightest].append(partition)
        loads[lightest] += sizes[partition]
    return shares


def topic_batches(consumer: Consumer, replay: "ReplayPlan", partitions: list[int]) -> Iterator[list[RawRecord]]:
    """The records of `partitions` within the replay's offsets, in offset order per partition, in
    batches as Kafka hands them over."""
    remaining = set(partitions)
    consumer.assign([TopicPartition(replay.topic, p, replay.start[p]) for p in remaining])
    while remaining:
        messages = consumer.consume(CONSUME_BATCH, CONSUME_TIMEOUT_S)
        batch = []
        for message in messages:
            if message.error():
                raise KafkaException(message.error())
            partition, offset = message.partition(), message.offset()
            if partition not in remaining or offset >= replay.end[partition]:
                continue
            if offset + 1 >= replay.end[partition]:
                remaining.discard(partition)
            # Plain tuples: a NamedTuple per record cost more than parsing it.
            kind, append_ms = message.timestamp()
            batch.append((message.value(), partition, offset, None if kind == TIMESTAMP_NOT_AVAILABLE else append_ms))
        if not messages:  # offsets can end in control records no message shows: ask where reading stands
            positions = consumer.position([TopicPartition(replay.topic, p) for p in remaining])
            remaining -= {tp.partition for tp in positions if tp.offset >= replay.end[tp.partition]}
        yield batch


def dead_letter_producer(settings: Settings) -> Producer:
    # Idempotent, so a retried batch is written once; sized for the largest dead letter.
    return Producer({"bootstrap.servers": settings.stack.kafka_bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 50, "message.max.bytes": MAX_DEAD_LETTER_BYTES})  # fmt: skip


def fold_worker(settings: Settings, replay: "ReplayPlan", partitions: list[int], read, samples: Path | None) -> Share:
    """One worker's fold of `partitions`: its users written to the replay's namespace once per
    KF_BACKFILL_FLUSH_S and at its end, and its sample-log lines under `samples` (None: no log);
    `read` (a shared integer) counts the records it has read."""
    gc.set_threshold(*settings.stream.python_gc_thresholds)
    spec, stream = settings.pipeline.features, settings.stream
    entity_ttl_ms = round(stream.entity_ttl_h * 3_600_000)
    store = FeatureStore.for_stack(settings.stack)
    name = f"backfill-{'-'.join(map(str, partitions))}"
    writer = RedisWriter(store, name, replay.namespace)
    sample_log = None if samples is None else SampleLogLines(spec)
    fold = BackfillFold(spec, writer, entity_ttl_ms, stream.dedupe_capacity, sample_log)
    sample_files = None if samples is None else SampleFiles(samples, name)
    consumer = Consumer({"bootstrap.servers": settings.stack.kafka_bootstrap,
                         "group.id": f"backfill-{replay.namespace}", "enable.auto.commit": False})  # fmt: skip
    dead_letters = dead_letter_producer(settings)
    last_flush = time.monotonic()
    try:
        for batch in topic_batches(consumer, replay, partitions):
            lines = fold.take(batch, lambda letter: dead_letters.produce(settings.stack.topic_dlq, letter))
            if lines is not None and sample_files is not None:
                sample_files.write(lines)
            read.value += len(batch)
            dead_letters.poll(0)
            if time.monotonic() - last_flush >= stream.backfill_flush_s:
                fold.flush_users()
                last_flush = time.monotonic()
        share = fold.finish()
        if dead_letters.flush(60) > 0:
            raise RuntimeError(f"could not deliver every dead letter to {settings.stack.topic_dlq}")
        if sample_files is not None:
            sample_files.commit()
        return share
    finally:
        consumer.close()
        store.close()


def _worker_main(settings: Settings, replay: "ReplayPlan", partitions: list[int], read, samples: Path | None,
                 results: Connection) -> None:  # fmt: skip
    try:
        results.send(fold_worker(settings, replay, partitions, read, samples))
    except BaseException:
        results.send(RuntimeError(f"backfill of partitions {partitions} failed:\n{traceback.format_exc()}"))


def backfill(
    settings: Settings, replay: "ReplayPlan", on_progress: Callable[[int], None], samples: Path | None = None
) -> Share:
    """Fold the replay's offsets of its topic into its namespace with up to KF_BACKFILL_WORKERS
    processes, and its sample log into `samples` (None: no log); `on_progress` gets the records
    read so far. Returns the merged share."""
    shares = partition_shares(replay, settings.stream.backfill_workers)
    context = multiprocessing.get_context("spawn")  # a fork would copy the parent's Kafka and Redis clients
    counters = [context.Value("q", 0, lock=False) for _ in shares]
    pipes = [context.Pipe(duplex=False) for _ in shares]
    processes = []
    for worker, partitions in enumerate(shares):
        arguments = (settings, replay, partitions, counters[worker], samples, pipes[worker][1])
        processes.append(context.Process(target=_worker_main, args=arguments, name=f"backfill-{worker}"))
    for process in processes:
        process.start()
    for _, sending in pipes:  # the workers hold the only writing ends: a dead one reads as EOF
        sending.close()
    try:
        results = _collect([receiving for receiving, _ in pipes], counters, on_progress)
        if isinstance(results[0], BaseException):
            raise results[0]
    except BaseException:  # the others' work is lost with it: stop them
        for process in processes:
            process.kill()
        raise
    finally:
        for process in processes:
            process.join()
    merged = Share()
    for share in results:
        merged = merged.merged(share, settings.pipeline.features)
    store = FeatureStore.for_stack(settings.stack)
    writer = RedisWriter(store, "backfill", replay.namespace)
    write_shared(writer, merged, settings.pipeline.features, round(settings.stream.entity_ttl_h * 3_600_000))
    writer.close()
    return merged


def _collect(pipes: list[Connection], counters: list, on_progress: Callable[[int], None]) -> list:
    """Each worker's result in worker order, reporting progress while they run; stops at the first
    failure."""
    results: dict[int, object] = {}
    while len(results) < len(pipes):
        for worker, pipe in enumerate(pipes):
            if worker not in results and pipe.poll(PROGRESS_POLL_S / len(pipes)):
                try:
                    results[worker] = pipe.recv()
                except EOFError:
                    results[worker] = RuntimeError(f"backfill worker {worker} ended without an answer")
                if isinstance(results[worker], BaseException):
                    return [results[worker]]
        on_progress(sum(counter.value for counter in counters))
    return [results[worker] for worker in range(len(pipes))]
