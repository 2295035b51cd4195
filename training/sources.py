"""Where training data comes from: the stream's sample log with the catalogue topic (the normal
path), or a dataset passed through the same feature functions (the bootstrap path)."""

import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from confluent_kafka import Consumer, TopicPartition

from schemas.catalogue import CatalogueItem, parse_catalogue_item
from schemas.config import Settings
from schemas.sources.movielens import LoadReport, catalogue_items, locate_dataset, rating_events
from schemas.sources.synthetic import SyntheticWorld, WorldSpec
from schemas.validation import InvalidRecord
from training.data import Row, bootstrap_rows, catalogue_by_id, read_sample_log

log = logging.getLogger("kingfisher.training")
CATALOGUE_READ_TIMEOUT_S = 60


class Source(StrEnum):
    SAMPLES = "samples"
    MOVIELENS = "movielens"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class TrainingData:
    source: str
    rows: list[Row]
    catalogue: dict[str, CatalogueItem]


def load(settings: Settings, source: Source, synthetic_events: int = 20_000) -> TrainingData:
    spec, now = settings.feature_spec(), int(time.time() * 1000)
    if source is Source.SAMPLES:
        return TrainingData(
            f"sample log {settings.samples_dir}", read_sample_log(settings.samples_dir), read_catalogue_topic(settings)
        )
    if source is Source.MOVIELENS:
        directory = locate_dataset(settings.movielens_path)
        report = LoadReport()
        rows = bootstrap_rows(rating_events(directory, report), spec)
        return TrainingData(f"MovieLens {directory}", rows, catalogue_by_id(catalogue_items(directory, report, now)))
    world = SyntheticWorld(WorldSpec(seed=settings.train_seed + 7))
    rows = bootstrap_rows(world.events(synthetic_events), spec)
    return TrainingData(f"synthetic world ({synthetic_events} events)", rows, catalogue_by_id(world.catalogue(now)))


def read_catalogue_topic(settings: Settings) -> dict[str, CatalogueItem]:
    """The compacted items topic from its start to its end at call time; the newest record per item wins."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "kingfisher-training",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(settings.topic_items, timeout=10).topics[settings.topic_items].partitions
        assignments = [TopicPartition(settings.topic_items, p, 0) for p in partitions]
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
                item = parse_catalogue_item(message.value())
                items[item.item_id] = item
            except InvalidRecord as invalid:
                log.warning("skipping catalogue record at offset %d: %s", message.offset(), invalid)
            if message.offset() + 1 >= ends[message.partition()]:
                pending.discard(message.partition())
        if pending:
            raise TimeoutError(
                f"catalogue topic {settings.topic_items} not read to its end in {CATALOGUE_READ_TIMEOUT_S}s"
            )
        log.info("read %d catalogue items from topic %s", len(items), settings.topic_items)
        return items
    finally:
        consumer.close()
