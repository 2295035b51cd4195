"""The smoke test of the whole toolchain: Kafka -> PyFlink (KafkaSource, Python operator) -> Redis."""

from confluent_kafka import Producer

from schemas.runtime.feature_store import FeatureStore
from tests.conftest import Stack


def test_flink_job_copies_a_kafka_topic_into_redis(stack: Stack, new_topic: str):
    records = [f'{{"n": {i}, "text": "récord {i}"}}' for i in range(500)]
    producer = Producer({"bootstrap.servers": stack.settings.stack.kafka_bootstrap, "acks": "all"})
    for i, record in enumerate(records):
        producer.produce(new_topic, key=str(i % 11).encode(), value=record.encode())
    assert producer.flush(30) == 0

    job = stack.run("-m", "infra.benches.smoke", "--topic", new_topic, "--namespace", "flinktest")

    assert job.returncode == 0, job.stdout + job.stderr
    assert f"{len(records)} distinct records" in job.stdout
    assert FeatureStore.for_stack(stack.settings.stack).toolchain_records(new_topic, "flinktest") == set(records)
