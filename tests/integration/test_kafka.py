import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.conftest import Stack

RECEIVE_TIMEOUT_S = 60


def consume_all(stack: Stack, topic: str, expected: int) -> list[tuple[bytes, bytes]]:
    consumer = KafkaConsumer(bootstrap_servers=stack.settings.kafka_bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(topic, partition) for partition in range(3)])
    received: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while len(received) < expected and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            received.extend((record.key, record.value) for record in records)
    consumer.close()
    return received


def test_produced_records_are_consumed_back_with_keys_and_per_key_order(stack: Stack, new_topic: str):
    sent = [(f"user-{i % 50}".encode(), f"event-{i}".encode()) for i in range(300)]
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    acknowledged = [producer.send(new_topic, key=key, value=value).get(timeout=30) for key, value in sent]
    producer.close()

    received = consume_all(stack, new_topic, expected=len(sent))

    assert len(acknowledged) == len(sent)
    assert sorted(received) == sorted(sent)
    assert {metadata.partition for metadata in acknowledged} == {0, 1, 2}
    for key in {key for key, _ in sent}:
        assert [value for k, value in received if k == key] == [value for k, value in sent if k == key]
