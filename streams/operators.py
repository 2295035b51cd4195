"""The feature job's Python operators. Each takes one batch per call and only calls the pure
functions of `schemas.runtime.streaming`, `schemas.events` and `schemas.runtime.samples`.

They live in a module of their own, not in the job's entry point, so that they pickle by reference
to `streams.operators`: under `python -m streams.feature_job` the entry point is `__main__`, which
the interpreter embedded in Flink's JVM (thread mode) cannot import.
"""

import gc
import zlib
from collections import defaultdict
from dataclasses import dataclass

from pyflink.common import Row, Time, Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor

from schemas.config import Settings
from schemas.dead_letters import dead_letter
from schemas.events import Event, EventType, parse_event
from schemas.experiments import ExperimentTallies, counted_arm
from schemas.features import FeatureSpec, ItemEvent, ItemState, RecentEventIds, TrendingState, UserState
from schemas.runtime.feature_store import FeatureStore
from schemas.runtime.features import seen_entry
from schemas.runtime.streaming import (
    TrendingUpdate,
    apply_item_event,
    apply_trending_updates,
    apply_user_event,
)
from schemas.sample_log import SampleLogLines
from schemas.validation import InvalidRecord
from streams.entity_states import EntityStates
from streams.gc_pauses import GcPauses, collect_and_freeze
from streams.redis_writer import RedisWriter, put_item, put_tallies, put_trending, put_user

DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
SAMPLES = OutputTag("training-samples", Types.STRING())
ARM_EVENTS = OutputTag("arm-events", Types.PICKLED_BYTE_ARRAY())


@dataclass(frozen=True)
class JobParameters:
    """What the operators need, in a form that pickles to the Python workers."""

    redis_host: str
    redis_port: int
    redis_cluster: bool
    redis_timeout_s: float
    namespace: str
    spec: FeatureSpec
    entity_ttl_ms: int
    dedupe_ttl_ms: int
    dedupe_capacity: int
    key_buckets: int
    states_in_memory: int
    state_backend: str
    log_samples: bool
    gc_thresholds: tuple[int, int, int]
    gc_per_batch: bool
    window_write_ms: int
    """The item and trending stages write each key at most once per this long (0: at every message)."""

    @classmethod
    def of(cls, settings: Settings, namespace: str, log_samples: bool, bounded: bool = False) -> "JobParameters":
        """Flink drops processing-time timers at the end of a bounded input, so a bounded job's item
        and trending stages write at every message instead of once per batch window."""
        return cls(
            redis_host=settings.stack.redis_address,
            redis_port=settings.stack.redis_port,
            redis_cluster=settings.stack.redis_cluster,
            redis_timeout_s=settings.stream.redis_write_timeout_s,
            namespace=namespace,
            spec=settings.pipeline.features,
            entity_ttl_ms=round(settings.stream.entity_ttl_h * 3_600_000),
            dedupe_ttl_ms=round(settings.stream.dedupe_ttl_h * 3_600_000),
            dedupe_capacity=settings.stream.dedupe_capacity,
            key_buckets=settings.stream.stream_key_buckets,
            states_in_memory=settings.stream.python_state_cache_size,
            state_backend=settings.stream.state_backend,
            log_samples=log_samples,
            gc_thresholds=settings.stream.python_gc_thresholds,
            gc_per_batch=settings.stream.python_gc_per_batch,
            window_write_ms=0 if bounded else settings.stream.stream_batch_ms,
        )

    def writer(self, name: str, gc_pauses: GcPauses | None = None) -> RedisWriter:
        store = FeatureStore.connect(self.redis_host, self.redis_port, self.redis_timeout_s, self.redis_cluster)
        return RedisWriter(store, name, self.namespace, gc_pauses=gc_pauses)

    def entity_states(self, runtime_context: RuntimeContext, name: str, ttl_ms: int) -> EntityStates:
        # Inactive entities expire with their Redis keys (EntityStates decides); Flink's TTL frees their storage.
        descriptor = MapStateDescriptor(name, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        state = runtime_context.get_map_state(_expiring(descriptor, ttl_ms, self.state_backend))
        return EntityStates(state, self.states_in_memory, ttl_ms)

    def item_bucket(self, item_id: str) -> int:
        # crc32, not hash(): every Python worker must put an item in the same bucket.
        return zlib.crc32(item_id.encode()) % self.key_buckets


def _expiring(descriptor, ttl_ms: int, state_backend: str):
    """Flink's TTL for the storage of expired entries; whether an entry has expired, the operators
    read from EntityStates, so visibility here only has to keep PyFlink's state cache, which it turns
    off for NeverReturnExpired (every access a blocking round trip to the JVM in process mode)."""
    builder = (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
        .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
        .cleanup_full_snapshot()
    )
    if state_backend != "rocksdb":
        # The heap's default incremental cleanup checks a few keys' values on every access; here a
        # key is a bucket whose value is a map of thousands of entities, which it copied each time
        # (with 100,000 users, 93 % of the user stage's time). Expired entities leave with each full
        # snapshot instead, and from memory as EntityStates meets them.
        builder = builder.disable_cleanup_in_background()
    # With background cleanup on, RocksDB drops expired entries as it compacts (Flink's default
    # compaction filter, each file at least every 30 days), as incremental checkpoints need: full-
    # snapshot cleanup does not apply to them. PyFlink's own call to configure it builds a Java
    # Duration, which a Python worker (process mode) has no JVM to build.
    descriptor.enable_time_to_live(builder.build())
    return descriptor


def in_kafka_order(batch: Row) -> list[tuple[bytes, int, int, int | None]]:
    """A batch of raw records, (bucket, payloads, partitions, offsets, append times) as parallel
    arrays, as (payload, partition, offset, append time) in offset order within each partition."""
    _, payloads, partitions, offsets, append_times = batch
    records = zip(map(bytes, payloads), partitions, offsets, append_times, strict=True)
    return sorted(records, key=lambda record: (record[1], record[2]))


def _write_at_window_end(ctx: KeyedProcessFunction.Context, window_ms: int) -> None:
    """Call the operator's `on_timer` for the current key at the end of this window. Flink keeps one
    of several timers at the same time and key, so every message of a window registers the same one."""
    timers = ctx.timer_service()
    timers.register_processing_time_timer((timers.current_processing_time() // window_ms + 1) * window_ms)


class UserFeaturesFunction(KeyedProcessFunction):
    """Keyed by user bucket; one call per batch of raw Kafka records: each is parsed and validated
    (invalid ones become dead letters), redeliveries are dropped, and each event is applied to its
    user in Kafka order, added to the user's seen set and logged for training. Passes the events on
    to the item buckets, one list per bucket and batch, the batch's sample-log lines as one text, and
    its impressions and clicks of experiments' answers, one list per experiment: (arm, type, ts, and
    for a click each shadow arm with whether it would have shown the item)."""

    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        gc.set_threshold(*self.parameters.gc_thresholds)
        p = self.parameters
        self.users = p.entity_states(runtime_context, "users", p.entity_ttl_ms)
        # A duplicate carries the same user_id, so it meets the ids remembered for that user here.
        self.recent_ids = p.entity_states(runtime_context, "recent-event-ids", p.dedupe_ttl_ms)
        self.gc_pauses = GcPauses()
        self.gc_pauses.open()
        self.writer = p.writer("users", self.gc_pauses)
        self.sample_log = SampleLogLines(p.spec) if p.log_samples else None
        metrics = runtime_context.get_metrics_group()
        self.dead_letters = metrics.counter("dead_letters")
        self.duplicates = metrics.counter("duplicates")
        for name in ("event_p50_ms", "event_p99_ms", "append_p50_ms", "append_p99_ms"):
            # Freshness of the last 10 s window: Redis write time - event time, and - Kafka append time.
            metrics.gauge(f"freshness_{name}", lambda name=name: round(self.writer.latest.get(name, 0)))

    def process_element(self, batch: Row, ctx: KeyedProcessFunction.Context):
        self.users.enter(batch[0])
        self.recent_ids.enter(batch[0])
        if self.sample_log is not None:
            self.sample_log.start_batch()
        by_item_bucket: dict[int, list[tuple]] = defaultdict(list)
        by_experiment: dict[str, list[tuple]] = defaultdict(list)
        event_times, append_times = [], []
        for raw, partition, offset, append_ms in in_kafka_order(batch):
            try:
                event = parse_event(raw)
            except InvalidRecord as invalid:
                self.dead_letters.inc()
                yield DEAD_LETTERS, dead_letter(raw, invalid.problems, partition, offset, append_ms).decode()
                continue
            if not self._is_new(event):
                continue
            self._apply(event, partition, offset)
            by_item_bucket[self.parameters.item_bucket(event.item_id)].append((ItemEvent.row_of(event), append_ms))
            if (counted := counted_arm(event)) is not None:
                experiment, arm, shadows_shown = counted
                by_experiment[experiment].append((arm, event.type._value_, event.ts, shadows_shown))
            event_times.append(event.ts)
            append_times.append(append_ms)
        self._write(self.users.commit())
        self.recent_ids.commit()
        self.writer.applied(event_times, append_times)
        self.writer.flush()
        if self.parameters.gc_per_batch:
            collect_and_freeze()
        if self.sample_log is not None and (lines := self.sample_log.take()) is not None:
            yield SAMPLES, lines
        for counted in by_experiment.items():
            yield ARM_EVENTS, counted
        yield from by_item_bucket.items()

    def _is_new(self, event: Event) -> bool:
        """Remember the event's id; False for a redelivery of an event already applied."""
        recent = self.recent_ids.get(event.user_id, None) or RecentEventIds(self.parameters.dedupe_capacity)
        if not recent.remember(event.event_id):
            self.duplicates.inc()
            return False
        self.recent_ids.put(event.user_id, recent)
        return True

    def _apply(self, event: Event, partition: int, offset: int) -> None:
        """Apply one new event to its user and the user's seen set, and log it for training when the
        job logs samples. The seen set's additions are queued per event and merged by the writer."""
        p = self.parameters
        before = self.users.get(event.user_id, UserState())
        after = apply_user_event(before, event, p.spec)
        self.users.put(event.user_id, after)
        if (entry := seen_entry(event)) is not None:
            self.writer.add_seen(event.user_id, *entry, p.spec.seen_capacity, p.entity_ttl_ms)
        if self.sample_log is not None:
            self.sample_log.add(before, event, partition, offset, after.version)

    def _write(self, changed: list[tuple[str, UserState]]) -> None:
        """Queue the Redis writes of the users a batch changed: once per user, not per event."""
        p = self.parameters
        for user_id, state in changed:
            put_user(self.writer, user_id, state, p.entity_ttl_ms)

    def close(self) -> None:
        self.writer.close()
        self.gc_pauses.close()


class ItemFeaturesFunction(KeyedProcessFunction):
    """Keyed by item bucket; passes each event's new item features on to trending as one message per
    batch: (updates, event times, Kafka append times). Events arrive, and updates leave, as rows of
    plain values: they pickle several times faster than NamedTuples.

    A bucket's changed items are written once per batch window (`JobParameters.window_write_ms`):
    every user bucket's batch sends each item bucket a message, and an item changed by several of
    them is written once. Until the window's timer fires, the items it owes a write are kept in
    Flink state, so a job restored from a checkpoint taken in between still writes them."""

    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.items = self.parameters.entity_states(runtime_context, "items", self.parameters.entity_ttl_ms)
        descriptor = ValueStateDescriptor("items-unwritten", Types.PICKLED_BYTE_ARRAY())
        self.unwritten = runtime_context.get_state(descriptor)
        self.writer = self.parameters.writer("items")

    def process_element(self, batch: tuple, ctx: KeyedProcessFunction.Context):
        p, updates, event_times, append_times = self.parameters, [], [], []
        self.items.enter(batch[0])
        for row, append_ms in batch[1]:
            event = ItemEvent.of_row(*row)
            state = apply_item_event(self.items.get(event.item_id, ItemState()), event, p.spec)
            self.items.put(event.item_id, state)
            updates.append(tuple(TrendingUpdate.of(event.item_id, state.features, p.spec)))
            event_times.append(event.ts)
            append_times.append(append_ms)
        changed = self.items.commit()
        self.writer.applied(event_times, append_times)
        if p.window_write_ms == 0:
            self._write(changed)
        else:
            self.unwritten.update((self.unwritten.value() or set()).union(item_id for item_id, _ in changed))
            _write_at_window_end(ctx, p.window_write_ms)
        yield updates, event_times, append_times

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        self.items.enter(ctx.get_current_key())
        for item_id in self.unwritten.value() or ():
            if (state := self.items.get(item_id, None)) is not None:
                # Expire in Redis when Flink's copy does (EntityStates), not a window later: a
                # returning item's new state must not meet its old key and be refused as older.
                put_item(self.writer, item_id, state, self.parameters.entity_ttl_ms - self.items.age_ms(item_id))
        self.writer.flush()
        self.unwritten.clear()
        return iter(())

    def _write(self, changed: list[tuple[str, ItemState]]) -> None:
        for item_id, state in changed:
            put_item(self.writer, item_id, state, self.parameters.entity_ttl_ms)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class TrendingFunction(KeyedProcessFunction):
    """One instance: takes each item-bucket message's updates into the top-K, and writes the list at
    most once per batch window (`JobParameters.window_write_ms`): every user bucket's batch sends a
    message per item bucket, and writing the list for each cost more than taking the updates in.
    The write waits on a processing-time timer, which a checkpoint holds with the state, so a job
    restored before it fired still writes what it holds."""

    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor("trending", Types.PICKLED_BYTE_ARRAY()))
        self.writer = self.parameters.writer("trending")

    def process_element(self, batch: tuple, ctx: KeyedProcessFunction.Context):
        p, (updates, event_times, append_times) = self.parameters, batch
        state = apply_trending_updates(self.state.value() or TrendingState(), updates, p.spec)
        self.writer.applied(event_times, append_times)
        self.state.update(state)
        if p.window_write_ms == 0:
            self._write(state)
        else:
            _write_at_window_end(ctx, p.window_write_ms)
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):
        self._write(self.state.value())
        return iter(())

    def _write(self, state: TrendingState) -> None:
        put_trending(self.writer, state, self.parameters.spec)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ExperimentTalliesFunction(KeyedProcessFunction):
    """Keyed by experiment; counts each arm's impressions and clicks (`schemas.experiments`) and
    writes the tallies once per message."""

    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor("tallies", Types.PICKLED_BYTE_ARRAY()))
        self.writer = self.parameters.writer("experiments")

    def process_element(self, message: tuple, ctx: KeyedProcessFunction.Context):
        experiment, counted = message
        tallies = self.state.value() or ExperimentTallies()
        for arm, event_type, ts, shadows_shown in counted:
            tallies = tallies.counted(arm, EventType(event_type), ts, shadows_shown)
        self.state.update(tallies)
        put_tallies(self.writer, experiment, tallies)
        self.writer.flush()
        return iter(())

    def close(self) -> None:
        self.writer.close()
