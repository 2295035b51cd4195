from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.conftest import Stack


def test_produced_records_are_consumed_back_with_keys_and_per_key_order(stack: Stack, new_topic: str):
    sent = [(f"user-{i % 50}".encode(), f"event-{i}".encode()) for i in range(300)]
    producer = KafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    acknowledged = [producer.send(new_topic, key=key, value=value).get(timeout=30) for key, value in sent]
    producer.close()

    consumer = KafkaConsumer(
        bootstrap_servers=stack.settings.kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    consumer.assign([TopicPartition(new_topic, partition) for partition in range(3)])
    received = [(record.key, record.value) for record in consumer]
    consumer.close()

    assert len(acknowledged) == len(sent)
    assert sorted(received) == sorted(sent)
    assert {metadata.partition for metadata in acknowledged} == {0, 1, 2}
    for key in {key for key, _ in sent}:
        assert [value for k, value in received if k == key] == [value for k, value in sent if k == key]
