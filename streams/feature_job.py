"""The streaming feature job: Kafka events -> live user and item features in Redis.

Every record crossing from the JVM to Python costs far more than the feature functions
themselves, so the job moves batches: Flink SQL gathers the raw records of each user bucket for
KF_STREAM_BATCH_MS and the Python operators (`streams.operators`) each take one batch per call.

Operators (each named; stateful ones with a stable uid, so a checkpoint maps back on restore):

    kafka-events        raw bytes with partition, offset and Kafka append time (Flink SQL)
    batches             per user bucket and KF_STREAM_BATCH_MS window: the records (Flink SQL)
    user-features       keyed by user bucket (`streams.key_layout`): parse and validate (invalid ->
                        events.dlq), dedupe, sequence, aggregates -> Redis; training samples
    item-features       keyed by item bucket: aggregates, decayed popularity, windows -> Redis
    trending            one instance: the top-K -> Redis, at most once per KF_STREAM_BATCH_MS
    experiments         keyed by experiment: each arm's impressions and clicks -> Redis
    training-samples    the sample log (schemas/SAMPLE_LOG.md): files per UTC day, committed on every checkpoint
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from pyflink.common import Types
from pyflink.common.serialization import Encoder, SimpleStringSchema
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.file_system import BucketAssigner, FileSink, OutputFileConfig, RollingPolicy
from pyflink.datastream.connectors.kafka import KafkaRecordSerializationSchema, KafkaSink
from pyflink.table import StreamTableEnvironment

from schemas import sample_log
from schemas.config import Settings
from schemas.dead_letters import MAX_DEAD_LETTER_BYTES
from schemas.redis_format import TRENDING_ENTITY
from schemas.runtime.feature_store import FeatureStore
from streams.flink_env import (
    FeatureSpecChanged,
    check_feature_spec,
    checkpoint_uri,
    discarding_sink,
    execution_environment,
    local_directory,
    restore_location,
)
from streams.key_layout import bucket_key_selector, layout_name
from streams.operators import (
    ARM_EVENTS,
    DEAD_LETTERS,
    SAMPLES,
    ExperimentTalliesFunction,
    ItemFeaturesFunction,
    JobParameters,
    TrendingFunction,
    UserFeaturesFunction,
)
from streams.sample_log import SampleLogKeeper

log = logging.getLogger("kingfisher.features")
DLQ_TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000


def build(
    batches: DataStream, settings: Settings, namespace: str, log_samples: bool, bounded: bool
) -> tuple[DataStream, DataStream]:
    """Wire the feature graph onto batches of raw records (see `streams.operators.in_kafka_order`).

    Returns the dead letters and the training-sample rows, for the caller to sink."""
    parameters = JobParameters.of(settings, namespace, log_samples, bounded)
    buckets, parallelism = settings.stream.stream_key_buckets, settings.stream.flink_parallelism
    bucket_key, layout = bucket_key_selector(buckets, parallelism), layout_name(buckets, parallelism)
    users = (
        batches.key_by(bucket_key, key_type=Types.INT())
        .process(UserFeaturesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("user-features")
        .uid(f"user-features{layout}")
    )
    (
        users.key_by(bucket_key, key_type=Types.INT())
        .process(ItemFeaturesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("item-features")
        .uid(f"item-features{layout}")
        .key_by(lambda _updates: TRENDING_ENTITY, key_type=Types.STRING())
        .process(TrendingFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("trending")
        .uid("trending")
        .set_parallelism(1)
        .sink_to(discarding_sink())
        .name("end")
    )
    (
        users.get_side_output(ARM_EVENTS)
        .key_by(lambda counted: counted[0], key_type=Types.STRING())
        .process(ExperimentTalliesFunction(parameters), output_type=Types.PICKLED_BYTE_ARRAY())
        .name("experiments")
        .uid("experiments")
        .sink_to(discarding_sink())
        .name("experiments-end")
    )
    return users.get_side_output(DEAD_LETTERS), users.get_side_output(SAMPLES)


def dead_letter_sink(settings: Settings, namespace: str) -> KafkaSink:
    """Exactly once: each checkpoint commits the Kafka transaction holding the dead letters it covers,
    so a restart from it cannot repeat one; readers see them once committed (read_committed)."""
    serializer = (
        KafkaRecordSerializationSchema.builder()
        .set_topic(settings.stack.topic_dlq)
        .set_value_serialization_schema(SimpleStringSchema())
        .build()
    )
    return (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.stack.kafka_bootstrap)
        .set_record_serializer(serializer)
        .set_delivery_guarantee(DeliveryGuarantee.EXACTLY_ONCE)
        .set_transactional_id_prefix(f"{settings.feature_job_name(namespace)}-dlq")
        .set_property("max.request.size", str(MAX_DEAD_LETTER_BYTES))
        # The broker's largest: a transaction a checkpoint covered must outlive the job being down
        # until its restart commits it.
        .set_property("transaction.timeout.ms", str(DLQ_TRANSACTION_TIMEOUT_MS))
        .build()
    )


def kafka_event_batches(
    t_env: StreamTableEnvironment, settings: Settings, topic: str, group_id: str, bounded: bool, from_ms: int | None
) -> DataStream:
    """The events topic as batches of raw records, one per user bucket and KF_STREAM_BATCH_MS window:
    (bucket, payloads, partitions, offsets, append times in epoch ms). Bounded: up to the offsets
    latest at start."""
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
          'properties.bootstrap.servers' = '{settings.stack.kafka_bootstrap}',
          'properties.group.id' = '{group_id}',
          'properties.commit.offsets.on.checkpoint' = 'true',
          'scan.watermark.idle-timeout' = '{round(settings.stream.source_idleness_s * 1000)} ms',
          {startup}{bounded_option},
          'format' = 'raw'
        )""")
    # Malformed records land in the bucket of the empty user_id, to be parsed and dead-lettered there.
    user_id = "COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.user_id'), '')"
    buckets = settings.stream.stream_key_buckets
    # Parallel arrays of plain values: an array of rows reaches Python in thread mode as one reused row.
    batches = t_env.sql_query(f"""
        SELECT bucket, ARRAY_AGG(`value`) AS payloads, ARRAY_AGG(`partition`) AS partitions,
               ARRAY_AGG(`offset`) AS offsets, ARRAY_AGG(append_ms) AS append_times
        FROM TABLE(TUMBLE(
          (SELECT *, MOD(MOD(HASH_CODE({user_id}), {buckets}) + {buckets}, {buckets}) AS bucket,
                  {_epoch_ms("`append_ts`")} AS append_ms
           FROM kafka_events),
          DESCRIPTOR(batch_time), {_interval(settings.stream.stream_batch_ms)}))
        GROUP BY window_start, window_end, bucket""")
    return t_env.to_data_stream(batches)


def _epoch_ms(timestamp: str) -> str:
    """Epoch milliseconds of a TIMESTAMP_LTZ(3), as a BIGINT: plain values reach Python the same way
    in both execution modes (an instant does not). Flink SQL casts no timestamp to a number, and
    TIMESTAMPDIFF in milliseconds overflows an INT."""
    seconds = f"TIMESTAMPDIFF(SECOND, TO_TIMESTAMP_LTZ(0, 3), {timestamp})"
    return f"({seconds} * CAST(1000 AS BIGINT) + MOD(EXTRACT(MILLISECOND FROM {timestamp}), 1000))"


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
          WATERMARK FOR `event_time` AS `event_time` - {_interval(settings.stream.watermark_out_of_orderness_ms)}"""


def sample_log_sink(directory: Path) -> FileSink:
    """Each batch's lines, in a directory per UTC day. Every checkpoint closes the open files, and
    its completion commits them (renames them visible): exactly once, and a line is visible within
    one checkpoint interval in every day's directory, however little arrives after it."""
    names = OutputFileConfig.builder().with_part_prefix(sample_log.PART_PREFIX)
    return (
        FileSink.for_row_format(str(directory.resolve()), Encoder.simple_string_encoder())
        .with_bucket_assigner(BucketAssigner.date_time_bucket_assigner(sample_log.DAY_BUCKET_FORMAT, "UTC"))
        .with_rolling_policy(RollingPolicy.on_checkpoint_rolling_policy())
        .with_output_file_config(names.with_part_suffix(sample_log.PART_SUFFIX).build())
        .build()
    )


def assemble(
    env: StreamExecutionEnvironment,
    settings: Settings,
    namespace: str,
    *,
    topic: str,
    bounded: bool,
    from_ms: int | None,
    samples_dir: Path | None,
) -> None:
    """The whole job on `env`: Kafka source, the feature graph, the DLQ and the sample log."""
    t_env = StreamTableEnvironment.create(env)
    batches = kafka_event_batches(t_env, settings, topic, settings.feature_job_name(namespace), bounded, from_ms)
    dead_letters, samples = build(batches, settings, namespace, samples_dir is not None, bounded)
    dead_letters.sink_to(dead_letter_sink(settings, namespace)).name("events.dlq").uid("events.dlq")
    if samples_dir is not None:
        samples.sink_to(sample_log_sink(samples_dir)).name("training-samples").uid("training-samples")


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m streams.feature_job",
        description="Run the streaming feature job: Kafka events -> live features in Redis (settings: KF_*).",
    )
    parser.add_argument("--namespace", default=settings.stack.namespace, help="Redis namespace to write (KF_NAMESPACE)")
    parser.add_argument("--topic", default=settings.stack.topic_events, help="events topic (KF_TOPIC_EVENTS)")
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets that are latest at start")
    parser.add_argument("--from-timestamp", type=int, metavar="MS", help="start at this Kafka time, not the beginning")
    parser.add_argument("--fresh", action="store_true", help="ignore checkpoints: rebuild state from the topic")
    parser.add_argument("--no-samples", action="store_true", help="do not write the training-sample log")
    parser.add_argument(
        "--restore",
        metavar="PATH",
        help="resume from this savepoint or checkpoint, a directory or URI (`flink stop` writes one); with the state "
        "changelog (KF_STATE_CHANGELOG) the job owns it afterwards and deletes it once newer checkpoints cover it",
    )
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # PyFlink sets the root logger to WARNING when it creates the environment; ours keeps its own level.
    log.setLevel(logging.INFO)
    # Flink's log (with the Python operators' lines, e.g. Redis freshness) goes with the stack's logs.
    settings.stack.logs_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLINK_LOG_DIR", str(settings.stack.logs_dir.resolve()))

    checkpoints = checkpoint_uri(settings, arguments.namespace)
    local_checkpoints = local_directory(checkpoints)
    restore = restore_location(arguments.restore, None if arguments.fresh else local_checkpoints)
    try:
        check_feature_spec(checkpoints, settings.pipeline.features, resuming=restore is not None)
    except FeatureSpecChanged as changed:
        log.error("%s", changed)
        return 2
    store = FeatureStore.for_stack(settings.stack)
    store.record_feature_spec(arguments.namespace, settings.pipeline.features)
    store.close()
    env = execution_environment(settings, settings.stream.flink_parallelism, checkpoints, restore)
    samples = (
        None if arguments.no_samples else sample_log.log_directory(settings.stack.samples_dir, arguments.namespace)
    )
    assemble(env, settings, arguments.namespace, topic=arguments.topic, bounded=arguments.bounded,
             from_ms=arguments.from_timestamp, samples_dir=samples)  # fmt: skip
    log.info("feature job: topic %s -> namespace %s; %s", arguments.topic, arguments.namespace,
             f"restoring from {restore}" if restore else "starting without a checkpoint")  # fmt: skip
    keeper = SampleLogKeeper(samples, checkpoints, settings.stream.sample_retention_days) if samples else None
    if keeper is not None:
        keeper.start()
    env.execute(settings.feature_job_name(arguments.namespace))
    if keeper is not None:  # a finished job has committed all it wrote: anything in progress is left over
        keeper.stop()
        keeper.delete_leftovers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
