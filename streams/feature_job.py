"""The streaming feature job: Kafka events -> live user and item features in Redis.

Every record crossing from the JVM to a Python worker costs far more than the feature functions
themselves, so the job moves batches: Flink SQL gathers the raw records of each user bucket for
KF_STREAM_BATCH_MS and the Python operators each take one batch per call.

Operators (each named; stateful ones with a stable uid, so a checkpoint maps back on restore):

    kafka-events        raw bytes with partition, offset and Kafka append time (Flink SQL)
    batches             per user bucket and KF_STREAM_BATCH_MS window: the records in offset order (Flink SQL)
    parse-and-validate  schemas.parse_event; invalid records -> dead-letters -> Kafka events.dlq
    user-features       keyed by user bucket: dedupe, sequence, aggregates -> Redis; training samples
    item-features       keyed by item bucket: aggregates, decayed popularity, windows -> Redis
    trending            one instance: the top-K -> Redis
    training-samples    JSON lines partitioned by event date and hour, committed on checkpoint

The operators only call the pure functions of `schemas.streaming` and `schemas.samples`.
"""

import argparse
import functools
import logging
import os
import sys
import zlib
from collections import defaultdict
from dataclasses import dataclass

import orjson
from pyflink.common import Row, Time, Types
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig, ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from schemas.config import Settings
from schemas.dead_letters import dead_letter
from schemas.events import Event, EventType, parse_event
from schemas.features import FeatureSpec
from schemas.redis_format import TRENDING_ENTITY, KeyKind, encode_value, redis_key
from schemas.samples import hour_partition, training_sample
from schemas.streaming import (
    ItemState,
    TrendingState,
    TrendingUpdate,
    UserState,
    apply_item_event,
    apply_trending_update,
    apply_user_event,
    remember_event_id,
    trending_list,
)
from schemas.validation import InvalidRecord
from streams.entity_states import EntityStates
from streams.flink_env import discarding_sink, execution_environment, latest_checkpoint
from streams.redis_writer import RedisWriter

log = logging.getLogger("kingfisher.features")
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
SAMPLE_ROW = Types.ROW_NAMED(["line", "dt", "hr"], [Types.STRING(), Types.STRING(), Types.STRING()])
SAMPLES = OutputTag("training-samples", SAMPLE_ROW)
# A dead letter carries the rejected record in base64 (4/3 of its size): the broker allows 4 MiB records.
MAX_RECORD_BYTES = 4 * 1024 * 1024


@functools.lru_cache(maxsize=1 << 18)
def _redis_key(kind: KeyKind, entity_id: str, namespace: str) -> str:
    """Building and checking a key costs more than the rest of a Redis write; active entities repeat."""
    return redis_key(kind, entity_id, namespace)


@dataclass(frozen=True)
class JobParameters:
    """What the operators need, in a form that pickles to the Python workers."""

    redis_host: str
    redis_port: int
    namespace: str
    spec: FeatureSpec
    entity_ttl_ms: int
    flush_interval_ms: int
    dedupe_ttl_ms: int
    dedupe_capacity: int
    key_buckets: int
    states_in_memory: int

    @classmethod
    def of(cls, settings: Settings, namespace: str) -> "JobParameters":
        ttl_ms = round(settings.entity_ttl_h * 3_600_000)
        return cls(
            redis_host=settings.bind_host,
            redis_port=settings.redis_port,
            namespace=namespace,
            spec=settings.feature_spec(),
            entity_ttl_ms=ttl_ms,
            flush_interval_ms=settings.redis_flush_interval_ms,
            dedupe_ttl_ms=round(settings.dedupe_ttl_h * 3_600_000),
            dedupe_capacity=settings.dedupe_capacity,
            key_buckets=settings.stream_key_buckets,
            states_in_memory=settings.python_state_cache_size,
        )

    def key(self, kind: KeyKind, entity_id: str) -> str:
        return _redis_key(kind, entity_id, self.namespace)

    def writer(self, name: str) -> RedisWriter:
        return RedisWriter(self.redis_host, self.redis_port, self.flush_interval_ms, name)

    def entity_states(self, runtime_context: RuntimeContext, name: str, ttl_ms: int) -> EntityStates:
        # Flink state of inactive entities expires with their Redis keys, so both stay bounded.
        descriptor = MapStateDescriptor(name, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
        return EntityStates(runtime_context.get_map_state(_expiring(descriptor, ttl_ms)), self.states_in_memory)

    def item_bucket(self, item_id: str) -> int:
        # crc32, not hash(): every Python worker must put an item in the same bucket.
        return zlib.crc32(item_id.encode()) % self.key_buckets


def _expiring(descriptor, ttl_ms: int):
    # PyFlink turns its Python-side state cache off for the default visibility (NeverReturnExpired),
    # making every state access a blocking round trip to the JVM (~2 ms measured here). Seeing an
    # expired entry until it is cleaned up is harmless for features and dedupe, and keeps the cache.
    ttl = (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
        .set_state_visibility(StateTtlConfig.StateVisibility.ReturnExpiredIfNotCleanedUp)
        .build()
    )
    descriptor.enable_time_to_live(ttl)
    return descriptor


def to_wire(event: Event, append_ms: int | None) -> tuple:
    """An event as it crosses a shuffle between operators: plain values pickle ~10x faster than the model."""
    return (event.event_id, event.user_id, event.item_id, event.type.value, event.value, event.ts, event.context,
            append_ms)  # fmt: skip


def from_wire(wire: tuple) -> tuple[Event, int | None]:
    """The event back, without validating it again: it was validated when it was parsed."""
    event_id, user_id, item_id, event_type, value, ts, context, append_ms = wire
    event = Event.model_construct(event_id=event_id, user_id=user_id, item_id=item_id, type=EventType(event_type),
                                  value=value, ts=ts, context=context)  # fmt: skip
    return event, append_ms


class ParseAndValidate(ProcessFunction):
    """A batch of raw Kafka records -> (bucket, wire events in offset order); invalid records -> dead letters."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.dead_letters = runtime_context.get_metrics_group().counter("dead_letters")

    def process_element(self, batch: Row, ctx: ProcessFunction.Context):
        bucket, records = batch[0], sorted(batch[1], key=lambda record: (record[1], record[2]))
        events = []
        for record in records:
            raw, partition, offset, appended = bytes(record[0]), record[1], record[2], record[3]
            append_ms = appended.to_epoch_milli() if appended is not None else None
            try:
                events.append(to_wire(parse_event(raw), append_ms))
            except InvalidRecord as invalid:
                self.dead_letters.inc()
                yield DEAD_LETTERS, dead_letter(raw, invalid.problems, partition, offset, append_ms).decode()
        if events:
            yield bucket, events


class UserFeaturesFunction(KeyedProcessFunction):
    """Keyed by user bucket; one call per batch, each user's events in their Kafka order."""

    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        p = self.parameters
        self.users = p.entity_states(runtime_context, "users", p.entity_ttl_ms)
        # A duplicate carries the same user_id, so it meets the ids remembered for that user here.
        self.recent_ids = p.entity_states(runtime_context, "recent-event-ids", p.dedupe_ttl_ms)
        self.writer = p.writer("users")
        metrics = runtime_context.get_metrics_group()
        self.duplicates = metrics.counter("duplicates")
        for name in ("event_p50_ms", "event_p99_ms", "append_p50_ms", "append_p99_ms"):
            # Freshness of the last 10 s window: Redis write time - event time, and - Kafka append time.
            metrics.gauge(f"freshness_{name}", lambda name=name: round(self.writer.latest.get(name, 0)))

    def process_element(self, batch: tuple, ctx: KeyedProcessFunction.Context):
        self.users.enter(batch[0])
        self.recent_ids.enter(batch[0])
        samples: dict[tuple[str, str], list[str]] = defaultdict(list)
        by_item_bucket: dict[int, list[tuple]] = defaultdict(list)
        for wire in batch[1]:
            event, append_ms = from_wire(wire)
            if not self._is_new(event):
                continue
            sample = self._apply(event, append_ms)
            if sample is not None:
                samples[hour_partition(event.ts)].append(orjson.dumps(sample).decode())
            by_item_bucket[self.parameters.item_bucket(event.item_id)].append(wire)
        self.users.commit()
        self.recent_ids.commit()
        for (dt, hr), lines in samples.items():
            yield SAMPLES, Row("\n".join(lines), dt, hr)
        yield from by_item_bucket.items()

    def _is_new(self, event: Event) -> bool:
        """Remember the event's id; False for a redelivery of an event already applied."""
        remembered = self.recent_ids.get(event.user_id, ())
        recent, is_new = remember_event_id(remembered, event.event_id, self.parameters.dedupe_capacity)
        if is_new:
            self.recent_ids.put(event.user_id, recent)
        else:
            self.duplicates.inc()
        return is_new

    def _apply(self, event: Event, append_ms: int | None) -> dict | None:
        """Apply one new event to its user and queue the Redis writes; returns its training sample, if any."""
        p = self.parameters
        before = self.users.get(event.user_id, UserState())
        after = apply_user_event(before, event, p.spec)
        self.users.put(event.user_id, after)
        for kind, value in ((KeyKind.USER_SEQUENCE, after.sequence), (KeyKind.USER_FEATURES, after.features)):
            encode = _encoder(value, after.features.last_ts)
            self.writer.put(p.key(kind, event.user_id), after.version, encode, p.entity_ttl_ms, event.ts, append_ms)
        return training_sample(before, event)

    def close(self) -> None:
        self.writer.close()


class ItemFeaturesFunction(KeyedProcessFunction):
    """Keyed by item bucket; passes each event's new item features on to trending, one list per batch."""

    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.items = self.parameters.entity_states(runtime_context, "items", self.parameters.entity_ttl_ms)
        self.writer = self.parameters.writer("items")

    def process_element(self, batch: tuple, ctx: KeyedProcessFunction.Context):
        p, updates = self.parameters, []
        self.items.enter(batch[0])
        for wire in batch[1]:
            event, append_ms = from_wire(wire)
            state = apply_item_event(self.items.get(event.item_id, ItemState()), event, p.spec)
            self.items.put(event.item_id, state)
            encode = _encoder(state.features, state.features.last_ts)
            self.writer.put(p.key(KeyKind.ITEM_FEATURES, event.item_id), state.version, encode, p.entity_ttl_ms,
                            event.ts, append_ms)  # fmt: skip
            updates.append((TrendingUpdate.of(event.item_id, state.features, p.spec), event.ts, append_ms))
        self.items.commit()
        yield updates

    def close(self) -> None:
        self.writer.close()


class TrendingFunction(KeyedProcessFunction):
    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor("trending", Types.PICKLED_BYTE_ARRAY()))
        self.writer = self.parameters.writer("trending")

    def process_element(self, updates: list, ctx: KeyedProcessFunction.Context):
        p, state = self.parameters, self.state.value() or TrendingState()
        for update, event_ts, append_ms in updates:
            state = apply_trending_update(state, update, p.spec)
            self.writer.put(p.key(KeyKind.TRENDING, TRENDING_ENTITY), state.version, _trending_encoder(state, p.spec),
                            0, event_ts, append_ms)  # fmt: skip
        self.state.update(state)
        return iter(())

    def close(self) -> None:
        self.writer.close()


def _encoder(value, as_of: int):
    return lambda: encode_value(value, as_of)


def _trending_encoder(state: TrendingState, spec: FeatureSpec):
    return lambda: encode_value(trending_list(state, spec), state.at_ts)


def build(batches: DataStream, settings: Settings, namespace: str) -> tuple[DataStream, DataStream]:
    """Wire the feature graph onto batches of raw records: (bucket, [(value bytes, partition, offset, append time)]).

    Returns the dead letters and the training-sample rows, for the caller to sink."""
    parameters = JobParameters.of(settings, namespace)
    parsed = batches.process(ParseAndValidate(), output_type=Types.PICKLED_BYTE_ARRAY()).name("parse-and-validate")
    users = (
        parsed.key_by(lambda batch: batch[0], key_type=Types.INT())
        .process(UserFeaturesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("user-features")
        .uid("user-features")
    )
    (
        users.key_by(lambda batch: batch[0], key_type=Types.INT())
        .process(ItemFeaturesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("item-features")
        .uid("item-features")
        .key_by(lambda _updates: TRENDING_ENTITY, key_type=Types.STRING())
        .process(TrendingFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("trending")
        .uid("trending")
        .set_parallelism(1)
        .sink_to(discarding_sink())
        .name("end")
    )
    return parsed.get_side_output(DEAD_LETTERS), users.get_side_output(SAMPLES)


def dead_letter_sink(settings: Settings) -> KafkaSink:
    # At-least-once: after a restart a dead letter may repeat; its source partition/offset identifies it.
    serializer = (
        KafkaRecordSerializationSchema.builder()
        .set_topic(settings.topic_dlq)
        .set_value_serialization_schema(SimpleStringSchema())
        .build()
    )
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_record_serializer(serializer)
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .set_property("max.request.size", str(MAX_RECORD_BYTES))
        .build()
    )


def kafka_event_batches(
    t_env: StreamTableEnvironment, settings: Settings, topic: str, group_id: str, bounded: bool, from_ms: int | None
) -> DataStream:
    """The events topic as batches of raw records, one per user bucket and KF_STREAM_BATCH_MS window:
    (bucket, [(value bytes, partition, offset, append time)]). Bounded: up to the offsets latest at start."""
    startup = (
        f"'scan.startup.mode' = 'timestamp', 'scan.startup.timestamp-millis' = '{from_ms}'"
        if from_ms is not None
        else "'scan.startup.mode' = 'earliest-offset'"
    )
    bounded_option = ", 'scan.bounded.mode' = 'latest-offset'" if bounded else ""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE kafka_events (
          `value` BYTES,
          `partition` INT METADATA VIRTUAL,
          `offset` BIGINT METADATA VIRTUAL,
          `append_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          {_time_columns(settings, bounded)}
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{settings.kafka_bootstrap}',
          'properties.group.id' = '{group_id}',
          'properties.commit.offsets.on.checkpoint' = 'true',
          'scan.watermark.idle-timeout' = '{round(settings.source_idleness_s * 1000)} ms',
          {startup}{bounded_option},
          'format' = 'raw'
        )""")
    # Malformed records land in the bucket of the empty user_id, to be parsed and dead-lettered there.
    user_id = "COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.user_id'), '')"
    buckets = settings.stream_key_buckets
    batches = t_env.sql_query(f"""
        SELECT bucket, ARRAY_AGG(ROW(`value`, `partition`, `offset`, `append_ts`)) AS records
        FROM TABLE(TUMBLE(
          (SELECT *, MOD(MOD(HASH_CODE({user_id}), {buckets}) + {buckets}, {buckets}) AS bucket FROM kafka_events),
          DESCRIPTOR(batch_time), {_interval(settings.stream_batch_ms)}))
        GROUP BY window_start, window_end, bucket""")
    return t_env.to_data_stream(batches)


def _interval(ms: int) -> str:
    return f"INTERVAL '{ms / 1000:.3f}' SECOND"  # Flink SQL has no MILLISECOND interval literal


def _time_columns(settings: Settings, bounded: bool) -> str:
    """Batches close on processing time, so a lone event waits at most one batch. Flink drops
    processing-time timers at the end of a bounded input, so a bounded job closes its batches on
    ingestion time instead, whose watermark reaches the end when the input does."""
    if bounded:
        return """`batch_time` AS CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(3)),
          WATERMARK FOR `batch_time` AS `batch_time` - INTERVAL '1' SECOND"""
    event_ms = "TRY_CAST(JSON_VALUE(CAST(`value` AS STRING), '$.ts') AS BIGINT)"
    return f"""`batch_time` AS PROCTIME(),
          `event_time` AS COALESCE(TO_TIMESTAMP_LTZ({event_ms}, 3), `append_ts`),
          WATERMARK FOR `event_time` AS `event_time` - {_interval(settings.watermark_out_of_orderness_ms)}"""


def add_sample_log(t_env: StreamTableEnvironment, samples: DataStream, directory: str) -> None:
    """Training samples as JSON lines in <directory>/dt=YYYY-MM-DD/hr=HH/, files finished on checkpoint."""
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE training_samples (line STRING, dt STRING, hr STRING)
        PARTITIONED BY (dt, hr) WITH (
          'connector' = 'filesystem',
          'path' = '{directory}',
          'format' = 'raw',
          'sink.partition-commit.policy.kind' = 'success-file'
        )""")
    statements = t_env.create_statement_set()
    statements.add_insert("training_samples", t_env.from_data_stream(samples))
    statements.attach_as_datastream()


def assemble(
    env: StreamExecutionEnvironment,
    settings: Settings,
    namespace: str,
    *,
    topic: str,
    bounded: bool,
    from_ms: int | None,
    samples_dir: str | None,
) -> None:
    """The whole job on `env`: Kafka source, the feature graph, the DLQ and the sample log."""
    t_env = StreamTableEnvironment.create(env)
    batches = kafka_event_batches(t_env, settings, topic, settings.feature_job_name(namespace), bounded, from_ms)
    dead_letters, samples = build(batches, settings, namespace)
    dead_letters.sink_to(dead_letter_sink(settings)).name("events.dlq")
    if samples_dir is not None:
        add_sample_log(t_env, samples, samples_dir)


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m streams.feature_job",
        description="Run the streaming feature job: Kafka events -> live features in Redis (settings: KF_*).",
    )
    parser.add_argument("--namespace", default=settings.namespace, help="Redis namespace to write (KF_NAMESPACE)")
    parser.add_argument("--topic", default=settings.topic_events, help="events topic (KF_TOPIC_EVENTS)")
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets that are latest at start")
    parser.add_argument("--from-timestamp", type=int, metavar="MS", help="start at this Kafka time, not the beginning")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints: rebuild state from the topic")
    parser.add_argument("--no-samples", action="store_true", help="do not write the training-sample log")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # PyFlink sets the root logger to WARNING when it creates the environment; ours keeps its own level.
    log.setLevel(logging.INFO)
    # Flink's log (with the Python operators' lines, e.g. Redis freshness) goes with the stack's logs.
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLINK_LOG_DIR", str(settings.logs_dir.resolve()))

    checkpoints = settings.checkpoints_dir / arguments.namespace
    restore = None if arguments.fresh else latest_checkpoint(checkpoints)
    env = execution_environment(settings, settings.flink_parallelism, checkpoints, restore)
    samples = None if arguments.no_samples else settings.samples_dir.resolve().as_uri()
    assemble(env, settings, arguments.namespace, topic=arguments.topic, bounded=arguments.bounded,
             from_ms=arguments.from_timestamp, samples_dir=samples)  # fmt: skip
    log.info("feature job: topic %s -> namespace %s; %s", arguments.topic, arguments.namespace,
             f"restoring from {restore}" if restore else "starting without a checkpoint")  # fmt: skip
    env.execute(settings.feature_job_name(arguments.namespace))
    return 0


if __name__ == "__main__":
    sys.exit(main())
