"""Where training data comes from: the stream's sample log with the catalogue topic (the normal
path), or a dataset passed through the same feature functions (the bootstrap path)."""

import logging
import time
from dataclasses import dataclass
from enum import StrEnum

from schemas import sample_log
from schemas.catalogue import CatalogueItem
from schemas.config import Settings
from schemas.features import FeatureSpec
from schemas.runtime.catalogue_topic import read_catalogue_topic
from schemas.runtime.sources.movielens import LoadReport, catalogue_items, locate_dataset, rating_events
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec
from training.data import Row, bootstrap_rows, catalogue_by_id, read_sample_log

log = logging.getLogger("kingfisher.training")


class Source(StrEnum):
    SAMPLES = "samples"
    MOVIELENS = "movielens"
    SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class TrainingData:
    source: str
    rows: list[Row]
    catalogue: dict[str, CatalogueItem]
    spec: FeatureSpec
    """The feature spec the rows were built with: the stream's for its sample log."""
    world: SyntheticWorld | None = None
    """The synthetic world the rows came from, whose click probabilities are known (else None)."""


def load(settings: Settings, source: Source, synthetic_events: int = 20_000) -> TrainingData:
    spec, now = settings.pipeline.features, int(time.time() * 1000)
    if source is Source.SAMPLES:
        directory = sample_log.log_directory(settings.stack.samples_dir, settings.stack.namespace)
        rows, logged = read_sample_log(
            directory, settings.training.training_window_days, settings.training.training_max_rows
        )
        if logged is not None and logged != spec:
            log.warning("the stream runs with another feature spec than these settings (%s): training with the "
                        "stream's, which built the rows", logged.differences(spec))  # fmt: skip
        return TrainingData(f"sample log {directory}", rows, read_catalogue_topic(settings), logged or spec)
    if source is Source.MOVIELENS:
        directory = locate_dataset(settings.stack.movielens_path)
        report = LoadReport()
        rows = bootstrap_rows(rating_events(directory, report), spec)
        catalogue = catalogue_by_id(catalogue_items(directory, report, now))
        return TrainingData(f"MovieLens {directory}", rows, catalogue, spec)
    world = SyntheticWorld(WorldSpec(seed=settings.training.train_seed + 7))
    rows = bootstrap_rows(world.events(synthetic_events), spec)
    return TrainingData(
        f"synthetic world ({synthetic_events} events)", rows, catalogue_by_id(world.catalogue(now)), spec, world
    )
