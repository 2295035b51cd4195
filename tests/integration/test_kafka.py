from confluent_kafka import Producer

from tests.conftest import Stack, consume_all


def test_produced_records_are_consumed_back_with_keys_and_per_key_order(stack: Stack, new_topic: str):
    sent = [(f"user-{i % 50}".encode(), f"event-{i}".encode()) for i in range(300)]
    acknowledged = []
    producer = Producer(
        {"bootstrap.servers": stack.settings.stack.kafka_bootstrap, "enable.idempotence": True, "acks": "all"}
    )
    for key, value in sent:
        producer.produce(
            new_topic, key=key, value=value, on_delivery=lambda error, message: acknowledged.append(message)
        )
    producer.flush(30)

    received = [(message.key(), message.value()) for message in consume_all(stack, new_topic, expected=len(sent))]

    assert [message.error() for message in acknowledged] == [None] * len(sent)
    assert sorted(received) == sorted(sent)
    assert {message.partition() for message in acknowledged} == {0, 1, 2}
    for key in {key for key, _ in sent}:
        assert [value for k, value in received if k == key] == [value for k, value in sent if k == key]
