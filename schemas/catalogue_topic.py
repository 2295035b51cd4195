"""Reading the catalogue contract from its compacted Kafka topic (training and serving)."""

import logging
import time

from confluent_kafka import Consumer, TopicPartition

from schemas.catalogue import CatalogueItem, parse_catalogue_item, withdrawn_item
from schemas.config import Settings
from schemas.validation import InvalidRecord

log = logging.getLogger("kingfisher.catalogue")
CATALOGUE_READ_TIMEOUT_S = 60


def read_catalogue_topic(settings: Settings) -> dict[str, CatalogueItem]:
    """The compacted items topic from its start to its end at call time; the newest record per item
    wins, and an item whose newest record is a tombstone is left out."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.stack.kafka_bootstrap,
            "group.id": "kingfisher-training",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = (
            consumer.list_topics(settings.stack.topic_items, timeout=10).topics[settings.stack.topic_items].partitions
        )
        assignments = [TopicPartition(settings.stack.topic_items, p, 0) for p in partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in assignments}
        consumer.assign(assignments)
        items: dict[str, CatalogueItem] = {}
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + CATALOGUE_READ_TIMEOUT_S
        while pending and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            try:
                if (withdrawn := withdrawn_item(message.key(), message.value())) is not None:
                    items.pop(withdrawn, None)
                else:
                    item = parse_catalogue_item(message.value())
                    items[item.item_id] = item
            except InvalidRecord as invalid:
                log.warning("skipping catalogue record at offset %d: %s", message.offset(), invalid)
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        if pending:
            raise TimeoutError(
                f"catalogue topic {settings.stack.topic_items} not read to its end in {CATALOGUE_READ_TIMEOUT_S}s"
            )
        log.info("read %d catalogue items from topic %s", len(items), settings.stack.topic_items)
        return items
    finally:
        consumer.close()
