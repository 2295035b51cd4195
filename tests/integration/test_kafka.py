import orjson
from confluent_kafka import Producer

from schemas.runtime.catalogue_topic import read_catalogue_topic
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


def test_training_reads_the_newest_record_of_each_catalogue_item_and_leaves_out_withdrawn_ones(stack, new_topic):
    producer = Producer({"bootstrap.servers": stack.settings.stack.kafka_bootstrap, "acks": "all"})
    records = [(b"m1", film("m1", "One")), (b"m2", film("m2", "Two")), (b"m3", film("m3", "Three")),
               (b"m1", film("m1", "One, renamed")), (b"m3", None)]  # fmt: skip
    for key, value in records:
        producer.produce(new_topic, key=key, value=value)
    producer.flush(30)

    items = read_catalogue_topic(stack.with_env(KF_TOPIC_ITEMS=new_topic).settings)

    assert {item_id: item.title for item_id, item in items.items()} == {"m1": "One, renamed", "m2": "Two"}


def film(item_id: str, title: str) -> bytes:
    return orjson.dumps({"item_id": item_id, "title": title, "updated_at": 1_735_689_600_000})
