"""Toolchain check: a bounded PyFlink job that copies one Kafka topic into a Redis set.

It exercises what every streaming job here stands on (the Kafka connector jar, KafkaSource, the
Python worker, a Redis client inside an operator) and ends once it has read the offsets the topic
had when it started. Operators can run it from a checkout against a new deployment's Kafka and
Redis (the KF_* settings) before the real jobs; it is not in the image.
"""

import argparse
import sys

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, ProcessFunction, RuntimeContext

from schemas.config import Settings
from schemas.redis_format import KeyKind, redis_key
from schemas.runtime.feature_store import FeatureStore
from streams.flink_env import discarding_sink, execution_environment, kafka_text_source


class AddToRedisSet(ProcessFunction):
    """Adds each record to the topic's toolchain-check set in the feature store; a re-run adds nothing twice."""

    def __init__(self, host: str, port: int, cluster: bool, topic: str, namespace: str):
        self.host, self.port, self.cluster, self.topic, self.namespace = host, port, cluster, topic, namespace
        self.store: FeatureStore | None = None

    def open(self, runtime_context: RuntimeContext) -> None:
        self.store = FeatureStore.connect(self.host, self.port, cluster=self.cluster)

    def process_element(self, value: str, ctx: ProcessFunction.Context):
        self.store.add_toolchain_records(self.topic, self.namespace, value)
        return iter(())

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


def build(records: DataStream, settings: Settings, topic: str, namespace: str) -> None:
    stack = settings.stack
    (
        records.process(AddToRedisSet(stack.redis_address, stack.redis_port, stack.redis_cluster, topic, namespace))
        .name("add-to-redis-set")
        .sink_to(discarding_sink())
        .name("end")
    )


def run(settings: Settings, topic: str, namespace: str) -> int:
    """Copy `topic` into Redis and return the size of the resulting set."""
    env = execution_environment(settings, parallelism=1)
    source = kafka_text_source(settings, topic, group_id=f"kingfisher-smoke-{namespace}", bounded=True)
    build(env.from_source(source, WatermarkStrategy.no_watermarks(), "kafka-source"), settings, topic, namespace)
    env.execute(f"kingfisher-smoke-{topic}")
    store = FeatureStore.for_stack(settings.stack)
    try:
        return len(store.toolchain_records(topic, namespace))
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.benches.smoke",
        description="Copy a Kafka topic into a Redis set with a bounded PyFlink job (toolchain check).",
    )
    parser.add_argument("--topic", required=True, help="Kafka topic to read from its earliest offset")
    parser.add_argument("--namespace", default="smoke", help="Redis namespace of the result key (default: smoke)")
    arguments = parser.parse_args(argv)
    settings = Settings()
    copied = run(settings, arguments.topic, arguments.namespace)
    key = redis_key(KeyKind.TOOLCHAIN_CHECK, arguments.topic, arguments.namespace)
    print(f"toolchain check: {copied} distinct records of topic {arguments.topic!r} are in Redis set {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
