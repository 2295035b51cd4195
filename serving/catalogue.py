"""The catalogue as the service follows it: the compacted `items` topic read from its start, then
each new record as it comes, so that titles and the models' items (`ModelHolder.apply`) follow the
catalogue within a poll instead of waiting for the next retraining: items published since training
join the models, withdrawn ones (tombstones) leave the answers."""

import asyncio
import threading
import uuid

from confluent_kafka import Consumer

from schemas.catalogue import CatalogueItem
from schemas.config import Settings
from schemas.runtime.catalogue_topic import CatalogueChanges, end_offsets

POLL_S = 0.1
BATCH_RECORDS = 5_000
"""Records read in one poll at most: a burst of new items reaches the models in batches this big."""


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
            unread = end_offsets(consumer, topic)
            consumer.subscribe([topic])
            while not stop.is_set():
                changes = CatalogueChanges()
                for message in consumer.consume(BATCH_RECORDS, POLL_S):
                    if message.error():
                        continue
                    changes.record(message)
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
