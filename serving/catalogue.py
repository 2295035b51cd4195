"""The catalogue as the service follows it: the compacted `items` topic read from its start, then
each new record as it comes, so that titles and the models' items (`ModelHolder.apply`) follow the
catalogue within a poll instead of waiting for the next retraining: items published since training
join the models, withdrawn ones (tombstones) leave the answers."""

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from schemas.catalogue import CatalogueItem, parse_catalogue_item, withdrawn_item
from schemas.config import Settings
from schemas.validation import InvalidRecord

log = logging.getLogger("kingfisher.serving.catalogue")
POLL_S = 0.1
BATCH_RECORDS = 5_000
"""Records read in one poll at most: a burst of new items reaches the models in batches this big."""


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

    def then(self, later: "CatalogueChanges") -> "CatalogueChanges":
        """These changes followed by `later` ones."""
        for item_id in later.withdrawn:
            self.withdraw(item_id)
        for item in later.published.values():
            self.publish(item)
        return self

    def __bool__(self) -> bool:
        return bool(self.published or self.withdrawn)


class LiveCatalogue:
    """Every item the service has read and not seen withdrawn (the newest record per item), and the
    items seen withdrawn."""

    def __init__(self, items: list[CatalogueItem] | None = None):
        self.items: dict[str, CatalogueItem] = {}
        self.withdrawn: set[str] = set()
        self.apply(CatalogueChanges({item.item_id: item for item in items or []}))

    def apply(self, changes: CatalogueChanges) -> None:
        self.items.update(changes.published)
        self.withdrawn -= changes.published.keys()
        for item_id in changes.withdrawn:
            self.items.pop(item_id, None)
        self.withdrawn |= changes.withdrawn

    def title(self, item_id: str) -> str | None:
        item = self.items.get(item_id)
        return item.title if item else None


def follow_catalogue(
    settings: Settings,
    loop: asyncio.AbstractEventLoop,
    batches: asyncio.Queue,
    caught_up: asyncio.Event,
    stop: threading.Event,
) -> threading.Thread:
    """A thread that reads the items topic from its start and puts each poll's valid records on
    `batches` (CatalogueChanges; invalid records are logged and skipped); it sets `caught_up` once
    the records the topic held when it started are on the queue."""
    topic = settings.stack.topic_items

    def run() -> None:
        consumer = private_consumer(settings, "serving-catalogue", "earliest")
        try:
            unread = _end_offsets(consumer, topic)
            consumer.subscribe([topic])
            while not stop.is_set():
                changes = CatalogueChanges()
                for message in consumer.consume(BATCH_RECORDS, POLL_S):
                    if message.error():
                        continue
                    _record(changes, message)
                    if message.offset() + 1 >= unread.get(message.partition(), 0):
                        unread.pop(message.partition(), None)
                if changes:
                    loop.call_soon_threadsafe(batches.put_nowait, changes)
                if not unread and not caught_up.is_set():
                    loop.call_soon_threadsafe(caught_up.set)  # after the batches before it: the loop runs them in order
        finally:
            consumer.close()

    thread = threading.Thread(target=run, name="catalogue", daemon=True)
    thread.start()
    return thread


def private_consumer(settings: Settings, name: str, start: str) -> Consumer:
    """A consumer in a group of its own (each service process reads the whole topic), committing
    nothing, that starts at the `start` ("earliest" or "latest") of its partitions."""
    return Consumer(
        {
            "bootstrap.servers": settings.stack.kafka_bootstrap,
            "group.id": f"{name}-{uuid.uuid4().hex}",
            "auto.offset.reset": start,
            "enable.auto.commit": False,
        }
    )


def _end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """Each partition's end offset now, for the partitions that hold records (none: the topic does not exist)."""
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions or {}
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    return {partition: end for partition, end in ends.items() if end > 0}


def _record(changes: CatalogueChanges, message) -> None:
    if (withdrawn := withdrawn_item(message.key(), message.value())) is not None:
        changes.withdraw(withdrawn)
        return
    try:
        changes.publish(parse_catalogue_item(message.value()))
    except InvalidRecord as invalid:
        log.warning("skipping catalogue record at offset %d: %s", message.offset(), invalid)
