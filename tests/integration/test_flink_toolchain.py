"""The smoke test of the whole toolchain: Kafka -> PyFlink (KafkaSource, Python operator) -> Redis."""

import json
import subprocess
import sys

from confluent_kafka import Producer

from schemas.runtime.feature_store import FeatureStore
from streams.key_layout import KEY_GROUPS, key_group
from tests.conftest import Stack

FLINKS_KEY_GROUPS = """
import json
from pyflink.java_gateway import get_gateway
gateway = get_gateway()
jvm = gateway.jvm
assign = jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment.assignToKeyGroup
select = jvm.KeyByKeySelector()  # what PyFlink's key_by keys by: (key, record) -> the key as a Row
def key_of(key):
    fields = gateway.new_array(jvm.java.lang.Object, 2)
    fields[0] = jvm.java.lang.Integer(key)
    return select.getKey(jvm.org.apache.flink.types.Row.of(fields))
print(json.dumps([assign(key_of(key), {key_groups}) for key in range({keys})]))
"""


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


def test_the_key_groups_the_bucket_layout_computes_are_flinks():
    """`streams.key_layout` spreads buckets over subtasks by Flink's hash of an Integer key, written
    again in Python; Flink's own assignment is the reference."""
    keys = 1024
    flink = subprocess.run(
        [sys.executable, "-c", FLINKS_KEY_GROUPS.format(key_groups=KEY_GROUPS, keys=keys)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert json.loads(flink.stdout.splitlines()[-1]) == [key_group(key) for key in range(keys)]
