"""The streaming feature job: Kafka events -> live user and item features in Redis.

Operators (each named; stateful ones with a stable uid, so a checkpoint maps back on restore):

    kafka-events        raw bytes with partition, offset and Kafka append time
    parse-and-validate  schemas.parse_event; invalid records -> dead-letters -> Kafka events.dlq
    event-time          watermarks: bounded out-of-orderness, idleness
    user-features       keyed by user: dedupe, sequence, aggregates -> Redis; training samples
    item-features       keyed by item: aggregates, decayed popularity, windows -> Redis
    trending            one instance: the top-K -> Redis
    training-samples    JSON lines partitioned by event date and hour, committed on checkpoint

The operators only call the pure functions of `schemas.streaming` and `schemas.samples`.
"""

import argparse
import logging
import os
import sys
from dataclasses import dataclass

import orjson
from pyflink.common import Duration, Row, Time, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.common.watermark_strategy import TimestampAssigner
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
from pyflink.datastream.state import StateTtlConfig, ValueStateDescriptor
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
    UserState,
    apply_item_event,
    apply_trending_update,
    apply_user_event,
    remember_event_id,
    trending_list,
)
from schemas.validation import InvalidRecord
from streams.flink_env import discarding_sink, execution_environment, latest_checkpoint
from streams.redis_writer import RedisWriter

log = logging.getLogger("kingfisher.features")
DEAD_LETTERS = OutputTag("dead-letters", Types.STRING())
SAMPLE_ROW = Types.ROW_NAMED(["line", "dt", "hr"], [Types.STRING(), Types.STRING(), Types.STRING()])
SAMPLES = OutputTag("training-samples", SAMPLE_ROW)
WIRE_USER, WIRE_ITEM, WIRE_TS = 1, 2, 5
# A dead letter carries the rejected record in base64 (4/3 of its size): the broker allows 4 MiB records.
MAX_RECORD_BYTES = 4 * 1024 * 1024


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
        )

    def key(self, kind: KeyKind, entity_id: str) -> str:
        return redis_key(kind, entity_id, self.namespace)

    def writer(self, name: str) -> RedisWriter:
        return RedisWriter(self.redis_host, self.redis_port, self.flush_interval_ms, name)

    def state(self, name: str) -> ValueStateDescriptor:
        # Flink state of inactive keys expires with their Redis keys, so both stay bounded.
        return _expiring(ValueStateDescriptor(name, Types.PICKLED_BYTE_ARRAY()), self.entity_ttl_ms)

    def recent_event_ids(self) -> ValueStateDescriptor:
        # Not a MapState: each lookup of a never-seen id would be a blocking round trip to the JVM.
        return _expiring(ValueStateDescriptor("recent-event-ids", Types.PICKLED_BYTE_ARRAY()), self.dedupe_ttl_ms)


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
    """Raw Kafka record -> (Event, append time); an invalid record -> a dead letter, never an exception."""

    def open(self, runtime_context: RuntimeContext) -> None:
        self.dead_letters = runtime_context.get_metrics_group().counter("dead_letters")

    def process_element(self, record: Row, ctx: ProcessFunction.Context):
        raw, partition, offset, appended = bytes(record[0]), record[1], record[2], record[3]
        append_ms = appended.to_epoch_milli() if appended is not None else None
        try:
            event = parse_event(raw)
        except InvalidRecord as invalid:
            self.dead_letters.inc()
            yield DEAD_LETTERS, dead_letter(raw, invalid.problems, partition, offset, append_ms).decode()
            return
        yield to_wire(event, append_ms)


class EventTime(TimestampAssigner):
    def extract_timestamp(self, value, record_timestamp: int) -> int:
        return value[WIRE_TS]


class UserFeaturesFunction(KeyedProcessFunction):
    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(self.parameters.state("user"))
        self.recent_ids = runtime_context.get_state(self.parameters.recent_event_ids())
        self.writer = self.parameters.writer("users")
        metrics = runtime_context.get_metrics_group()
        self.duplicates = metrics.counter("duplicates")
        for name in ("event_p50_ms", "event_p99_ms", "append_p50_ms", "append_p99_ms"):
            # Freshness of the last 10 s window: Redis write time - event time, and - Kafka append time.
            metrics.gauge(f"freshness_{name}", lambda name=name: round(self.writer.latest.get(name, 0)))

    def process_element(self, wire: tuple, ctx: KeyedProcessFunction.Context):
        event, append_ms = from_wire(wire)
        # A duplicate carries the same user_id, so it reaches this same key and its remembered ids.
        recent, is_new = remember_event_id(
            self.recent_ids.value() or (), event.event_id, self.parameters.dedupe_capacity
        )
        if not is_new:
            self.duplicates.inc()
            return
        self.recent_ids.update(recent)
        before = self.state.value() or UserState()
        after = apply_user_event(before, event, self.parameters.spec)
        self.state.update(after)
        p, as_of = self.parameters, after.features.last_ts
        for kind, value in ((KeyKind.USER_SEQUENCE, after.sequence), (KeyKind.USER_FEATURES, after.features)):
            encode = _encoder(value, as_of)
            self.writer.put(p.key(kind, event.user_id), after.version, encode, p.entity_ttl_ms, event.ts, append_ms)
        sample = training_sample(before, event)
        if sample is not None:
            yield SAMPLES, Row(orjson.dumps(sample).decode(), *hour_partition(event.ts))
        yield wire

    def close(self) -> None:
        self.writer.close()


class ItemFeaturesFunction(KeyedProcessFunction):
    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(self.parameters.state("item"))
        self.writer = self.parameters.writer("items")

    def process_element(self, wire: tuple, ctx: KeyedProcessFunction.Context):
        event, append_ms = from_wire(wire)
        state = apply_item_event(self.state.value() or ItemState(), event, self.parameters.spec)
        self.state.update(state)
        p = self.parameters
        encode = _encoder(state.features, state.features.last_ts)
        self.writer.put(p.key(KeyKind.ITEM_FEATURES, event.item_id), state.version, encode, p.entity_ttl_ms,
                        event.ts, append_ms)  # fmt: skip
        yield event.item_id, state.features, event.ts, append_ms


class TrendingFunction(KeyedProcessFunction):
    def __init__(self, parameters: JobParameters):
        self.parameters = parameters

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor("trending", Types.PICKLED_BYTE_ARRAY()))
        self.writer = self.parameters.writer("trending")

    def process_element(self, update, ctx: KeyedProcessFunction.Context):
        item_id, features, event_ts, append_ms = update
        p = self.parameters
        state = apply_trending_update(self.state.value() or TrendingState(), item_id, features, p.spec)
        self.state.update(state)

        def encode() -> bytes:
            return encode_value(trending_list(state, p.spec), state.at_ts)

        self.writer.put(p.key(KeyKind.TRENDING, TRENDING_ENTITY), state.version, encode, 0, event_ts, append_ms)
        return iter(())

    def close(self) -> None:
        self.writer.close()


def _encoder(value, as_of: int):
    return lambda: encode_value(value, as_of)


def build(raw: DataStream, settings: Settings, namespace: str) -> tuple[DataStream, DataStream]:
    """Wire the feature graph onto a stream of raw records (value bytes, partition, offset, append time).

    Returns the dead letters and the training-sample rows, for the caller to sink."""
    parameters = JobParameters.of(settings, namespace)
    watermarks = (
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(settings.watermark_out_of_orderness_ms))
        .with_idleness(Duration.of_millis(round(settings.source_idleness_s * 1000)))
        .with_timestamp_assigner(EventTime())
    )
    parsed = raw.process(ParseAndValidate(), output_type=Types.PICKLED_BYTE_ARRAY()).name("parse-and-validate")
    users = (
        parsed.assign_timestamps_and_watermarks(watermarks)
        .name("event-time")
        .key_by(lambda wire: wire[WIRE_USER], key_type=Types.STRING())
        .process(UserFeaturesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("user-features")
        .uid("user-features")
    )
    (
        users.key_by(lambda wire: wire[WIRE_ITEM], key_type=Types.STRING())
        .process(ItemFeaturesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("item-features")
        .uid("item-features")
        .key_by(lambda _update: TRENDING_ENTITY, key_type=Types.STRING())
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


def kafka_events_table(
    t_env: StreamTableEnvironment, settings: Settings, topic: str, group_id: str, bounded: bool, from_ms: int | None
) -> DataStream:
    """The events topic as raw records; bounded: up to the offsets that were latest at start."""
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
          `append_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{topic}',
          'properties.bootstrap.servers' = '{settings.kafka_bootstrap}',
          'properties.group.id' = '{group_id}',
          'properties.commit.offsets.on.checkpoint' = 'true',
          {startup}{bounded_option},
          'format' = 'raw'
        )""")
    return t_env.to_data_stream(t_env.from_path("kafka_events"))


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
    raw = kafka_events_table(t_env, settings, topic, settings.feature_job_name(namespace), bounded, from_ms)
    dead_letters, samples = build(raw, settings, namespace)
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
