"""Reading the catalogue contract from its compacted Kafka topic: training reads it to its end
(`read_catalogue_topic`), the service follows it (`serving.catalogue`); both through
`CatalogueChanges.record`."""

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from schemas.catalogue import CatalogueItem, parse_catalogue_item, withdrawn_item
from schemas.config import Settings
from schemas.validation import InvalidRecord

log = logging.getLogger("kingfisher.catalogue")
CATALOGUE_READ_TIMEOUT_S = 60


def read_catalogue_topic(settings: Settings) -> dict[str, CatalogueItem]:
    """The compacted items topic from its start to its end at call time; the newest record per item
    wins, and an item whose newest record is a tombstone is left out."""
    topic = settings.stack.topic_items
    consumer = Consumer(
        {
            "bootstrap.servers": settings.stack.kafka_bootstrap,
            "group.id": "kingfisher-training",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        pending = end_offsets(consumer, topic)
        consumer.assign([TopicPartition(topic, partition, 0) for partition in pending])
        changes = CatalogueChanges()
        deadline = time.monotonic() + CATALOGUE_READ_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            changes.record(message)
            if message.offset() + 1 >= pending.get(message.partition(), 0):
                pending.pop(message.partition(), None)
        if pending:
            raise TimeoutError(f"catalogue topic {topic} not read to its end in {CATALOGUE_READ_TIMEOUT_S}s")
        log.info("read %d catalogue items from topic %s", len(changes.published), topic)
        return changes.published
    finally:
        consumer.close()


@dataclass
class CatalogueChanges:
    """Catalogue records in the order they were read: the items published (the newest record per
    item) and the items withdrawn, each item in one of the two as its last record says."""

    published: dict[str, CatalogueItem] = field(default_factory=dict)
    withdrawn: set[str] = field(default_factory=set)

    def publish(self, item: CatalogueItem) -> None:
        self.published[item.item_id] = item
        self.withdrawn.discard(item.item_id)

    def withdraw(self, item_id: str) -> None:
        self.published.pop(item_id, None)
        self.withdrawn.add(item_id)

    def record(self, message) -> None:
        """One Kafka record of the items topic; an invalid one is logged and skipped."""
        if (withdrawn := withdrawn_item(message.key(), message.value())) is not None:
            self.withdraw(withdrawn)
            return
        try:
            self.publish(parse_catalogue_item(message.value()))
        except InvalidRecord as invalid:
            log.warning("skipping catalogue record at offset %d: %s", message.offset(), invalid)

    def then(self, later: "CatalogueChanges") -> "CatalogueChanges":
        """These changes followed by `later` ones."""
        for item_id in later.withdrawn:
            self.withdraw(item_id)
        for item in later.published.values():
            self.publish(item)
        return self

    def __bool__(self) -> bool:
        return bool(self.published or self.withdrawn)


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """Each partition's end offset now, for the partitions that hold records (none: the topic does not exist)."""
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions or {}
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    return {partition: end for partition, end in ends.items() if end > 0}
