"""One training run: data -> measured models per split -> the published models -> staged bundle ->
gate -> publish -> announce.

The splits are for measuring and choosing: on each (the time split; each user's newest N), the
retrieval model, two retrieval models on half the users each (whose candidates the ranker learns
from, see `training.ranker_data`) and DIN train from scratch, stop early on the validation queries,
and are evaluated on the test queries. A full report (`comparisons`, as `make bench-train` runs)
also trains the Embedding+MLP ranker and the previous design and evaluates the baselines beside
them; a scheduled retraining trains only what it serves. The published models then learn from the
newest events too: they continue the time split's models over every row, the retrieval model for
KF_FINAL_RETRIEVAL_EPOCHS, DIN for one epoch over rows whose candidates come from models that did
not learn those rows.
"""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from schemas.bundle import (
    INDEX_IDS,
    ITEM_EMBEDDINGS,
    ITEM_INDEX,
    POPULAR,
    POPULARITY,
    VOCABULARY,
    Manifest,
    Registry,
    seal,
)
from schemas.config import Settings
from schemas.runtime.loaded_bundle import LoadedBundle, write_served_models
from schemas.runtime.model_inputs import FIRST_ITEM, Vocabulary, item_tables
from training.counts import TrainingCounts, item_counts
from training.data import (
    Histories,
    Query,
    Split,
    Windows,
    fold_of,
    is_interaction,
    last_n_split,
    time_split,
    trending_before,
)
from training.data import windows as next_item_windows
from training.evaluate import (
    CUTOFFS,
    FUTURE_ITEMS,
    Moments,
    item_lists,
    pipeline_metrics,
    retrieved,
    served,
)
from training.evaluation import Evaluation, train_previous_design
from training.export import served_models
from training.fit import History, Schedule, fit, progress_bar
from training.gate import Gate, Verdict
from training.models import DeepInterestNetwork, EmbeddingMLP, ItemTables, Ranker, SequentialRetrieval, ranking_loss
from training.ranker_data import PoolShape, RankerRows, ranker_rows
from training.recommender import InMemoryRecommender
from training.sources import TrainingData

log = logging.getLogger("kingfisher.training")
RETRIEVAL_WEIGHTS, RANKER_WEIGHTS = "retrieval.weights.h5", "ranker.weights.h5"
"""Keras weights (HDF5, not pickle) kept in the bundle beside the SavedModels."""
FOLDS = 2
STANDARDISE_SAMPLE = 4096
EPOCH_QUERIES = 1000
"""Early stopping judges each epoch on at most this many validation queries (the report and the gate, on all)."""
POPULAR_ITEMS = 1000
MIN_TRAIN_ROWS = 100
QUICK_EPOCHS = {"train_epochs": 3, "ranker_epochs": 1, "final_retrieval_epochs": 1}
"""The most epochs of each model in a quick first training (`--quick`)."""


def quick(settings: Settings) -> Settings:
    """`settings` with each model's epochs capped at QUICK_EPOCHS: a first model in a fraction of the
    time, which the scheduler replaces at once (its hyperparameters differ from the configured ones)."""
    model = settings.training.model
    capped = model.model_copy(update={name: min(getattr(model, name), most) for name, most in QUICK_EPOCHS.items()})
    return settings.model_copy(update={"training": settings.training.model_copy(update={"model": capped})})


class TrainingError(Exception):
    """A run that cannot produce a bundle (e.g. too little data); nothing was published."""


@dataclass(frozen=True)
class Offer:
    """What a run offers to publish: the models, the gate's verdict on them (or on the split's models
    they continue), the newest event time they learnt from, the live version's manifest they
    continue (None: from scratch), and the report's parts."""

    final: InMemoryRecommender
    verdict: Verdict
    trained_until: int
    parent: Manifest | None
    splits: dict[str, Any]
    holdout: Split
    """The split whose validation queries the gate judged on."""
    extra: dict[str, Any]


@dataclass
class SplitModels:
    """What one split trained, and its part of the report."""

    split: Split
    counts: TrainingCounts
    retrieval: SequentialRetrieval
    folds: list[InMemoryRecommender]
    din: DeepInterestNetwork
    recommender: InMemoryRecommender
    """The retrieval model with DIN: the served pipeline of this split."""
    ranker_rows: RankerRows
    report: dict[str, Any]


class TrainingRun:
    """One run: `prepare`, then `measure` each split, then `fit_final`, `stage`, `gate`."""

    def __init__(
        self,
        settings: Settings,
        data: TrainingData,
        progress: bool = True,
        comparisons: bool = False,
        vocabulary: Vocabulary | None = None,
    ):
        """`comparisons`: also train and evaluate what the report compares the served pipeline with
        (Embedding+MLP, the previous design, EASE, co-occurrence, popularity, the newest-behaviour
        ablation); a scheduled retraining trains only what it serves. `vocabulary`: the models'
        (default: the catalogue's)."""
        self.settings, self.data, self.length = settings, data, data.spec.sequence_length
        self.comparisons = comparisons
        self.spec = data.spec
        self.hyperparameters = settings.training.model
        self.registry = Registry(settings.stack.models_dir)
        self.timings: dict[str, float] = {}
        self.histories: dict[str, History] = {}
        self.bar = progress_bar(progress)
        rows = data.rows
        if len(rows) < MIN_TRAIN_ROWS:
            raise TrainingError(f"too little data: {len(rows)} sample rows from {data.source}")
        self.vocabulary = vocabulary or Vocabulary.of(data.catalogue.values())
        self.evaluation = Evaluation(settings, self.vocabulary, data.world, comparisons)
        genres, years = item_tables(self.vocabulary, data.catalogue)
        self.tables = ItemTables(genres, years, len(self.vocabulary.genres))
        with self.timed("trending at every moment"):
            moments = [row for row in rows if is_interaction(row)]
            self.trending = trending_before(rows, moments, self.spec, settings.pipeline.trending_candidates)

    @cached_property
    def splits(self) -> list[Split]:
        """What a from-scratch run measures its models on: the time split, and last-N if configured."""
        settings, rows = self.settings, self.data.rows
        splits = [
            time_split(
                rows,
                settings.training.holdout_fraction,
                FUTURE_ITEMS,
                settings.training.eval_max_queries,
                settings.training.train_seed,
            )
        ]
        if settings.training.eval_last_n:
            splits.append(last_n_split(rows, settings.training.eval_last_n))
        for split in splits:
            if len(split.train) < MIN_TRAIN_ROWS or not split.test or not split.validation:
                raise TrainingError(
                    f"too little data for the {split.name} split: {len(split.train)} training rows, "
                    f"{len(split.validation)} validation and {len(split.test)} test queries"
                )
        return splits

    def retrieval_schedule(self, epochs: int, learning_rate: float) -> Schedule:
        spec = self.hyperparameters
        return Schedule(
            spec.train_batch_size, epochs, learning_rate, spec.retrieval_patience, self.settings.training.train_seed
        )

    def moments(self, queries: list[Query]) -> Moments:
        return Moments(queries, self.trending, self.settings.pipeline.covisitation_candidates)

    # -- retrieval -----------------------------------------------------------------------------------------

    def new_retrieval(self, tables: ItemTables | None = None) -> SequentialRetrieval:
        """A built retrieval model of the configured design on `tables` (default: the run's)."""
        spec = self.hyperparameters
        model = SequentialRetrieval(
            tables or self.tables,
            spec.embedding_dim,
            self.length,
            spec.retrieval_blocks,
            spec.retrieval_heads,
            spec.retrieval_dropout,
            name="retrieval",
        )
        empty = np.zeros((1, self.length), np.int32)
        model({"items": empty, "kinds": empty, "ages": np.zeros((1, self.length), np.float32)})
        return model

    def fit_retrieval(
        self, rows, counts: TrainingCounts, name: str, validation: list[Query] | None = None, epochs: int | None = None
    ) -> SequentialRetrieval:
        """Train a retrieval model on `rows`: with `validation`, up to KF_TRAIN_EPOCHS keeping the best
        epoch; without, for exactly `epochs`."""
        model = self.new_retrieval()
        arrays = next_item_windows(rows, self.vocabulary, self.length)
        schedule = self.retrieval_schedule(
            epochs or self.hyperparameters.train_epochs, self.hyperparameters.retrieval_learning_rate
        )
        return self.train_retrieval(model, arrays, schedule, counts, name, validation)

    def train_retrieval(
        self,
        model: SequentialRetrieval,
        sequences: Windows,
        schedule: Schedule,
        counts: TrainingCounts,
        name: str,
        validation: list[Query] | None,
    ) -> SequentialRetrieval:
        """Train `model` on `sequences` by `schedule`, keeping the epoch with the best retrieval
        NDCG@10 on `validation` (without: the last)."""

        def validate() -> float:
            if validation is None:
                return 0.0
            recommender = self.recommender(model, None, counts)  # the item vectors as trained so far
            chosen = epoch_queries(validation)
            return pipeline_metrics(retrieved(recommender, self.moments(chosen), max(CUTOFFS)), chosen)["ndcg@10"]

        def loss(batch):
            return model.next_item_loss(batch["items"], batch["kinds"], batch["ages"], batch["targets"])

        with self.timed(f"train {name}"):
            self.histories[name] = fit(model, loss, sequences._asdict(), schedule, validate, name, self.bar)
        return model

    def recommender(self, retrieval, ranker, counts) -> InMemoryRecommender:
        return InMemoryRecommender(
            retrieval, ranker, self.vocabulary, counts, self.settings.pipeline.faiss_exact_max_items
        )

    # -- rankers -------------------------------------------------------------------------------------------

    def new_ranker(self, kind: type[Ranker], rows: RankerRows, counts: TrainingCounts, name: str) -> Ranker:
        """A ranker whose features are standardised as a sample of the rows' batches finds them."""
        spec = self.hyperparameters
        model = kind.of(self.tables, spec, name)
        sample = next(
            rows.batches(counts, min(len(rows), STANDARDISE_SAMPLE), self.settings.training.train_seed,
                         spec.ranker_behaviours)(0)
        )  # fmt: skip
        model.standardise.fit(sample["features"])
        model({key: sample[key][:2] for key in ("items", "kinds", "ages", "candidates", "features", "pairs")})
        return model

    def fit_ranker(
        self, model: Ranker, rows: RankerRows, counts: TrainingCounts, epochs: int, name: str, validate=lambda: 0.0
    ) -> Ranker:
        def loss(batch):
            return ranking_loss(model, batch, batch["liked"], batch["rated"])

        spec, seed = self.hyperparameters, self.settings.training.train_seed
        batches = (
            rows.batches(counts, spec.ranker_batch_size, seed, spec.ranker_behaviours),
            rows.steps(spec.ranker_batch_size),
        )
        schedule = Schedule(spec.ranker_batch_size, epochs, spec.ranker_learning_rate, spec.ranker_patience, seed)
        with self.timed(f"train {name}"):
            self.histories[name] = fit(model, loss, batches, schedule, validate, name, self.bar)
        return model

    def validated_by(self, recommender: InMemoryRecommender, validation: Moments):
        """The served pipeline's NDCG@10 on `validation` with the recommender's ranker as it is then."""

        chosen = self.moments(epoch_queries(validation.queries))

        def validate() -> float:
            ranked = served(recommender, chosen, self.settings.pipeline.candidates)
            return pipeline_metrics(item_lists(ranked), chosen.queries)["ndcg@10"]

        return validate

    def ranker_queries(self, rows) -> list[Query]:
        """Each interaction with an item the user had not seen, the newest KF_RANKER_QUERIES (about half
        of them keep their real item among the candidates)."""
        histories = Histories(rows)
        queries = [
            query
            for user_id in histories.rows
            for query in histories.queries(user_id, FUTURE_ITEMS)
            if query.row.event.item_id in query.relevant
        ]
        return sorted(queries, key=lambda query: query.row.order)[-self.hyperparameters.ranker_queries :]

    def ranker_rows_by(self, queries: list[Query], retrieval: InMemoryRecommender) -> RankerRows:
        """Ranker rows of `queries`, each with candidates from `retrieval`."""
        return ranker_rows(queries, lambda _: retrieval, self.trending, self.pool_shape)

    @property
    def pool_shape(self) -> PoolShape:
        pipeline = self.settings.pipeline
        return PoolShape(self.hyperparameters.ranker_pool_candidates, pipeline.covisitation_candidates,
                         pipeline.label_threshold)  # fmt: skip

    # -- one split -----------------------------------------------------------------------------------------

    def measure(self, split: Split) -> SplitModels:
        """Train this split's models from scratch and evaluate them and the baselines on its test queries."""
        settings, vocabulary = self.settings, self.vocabulary
        with self.timed(f"{split.name}: counts"):
            counts = TrainingCounts.of(split.train, vocabulary)
        retrieval = self.fit_retrieval(split.train, counts, f"{split.name}: retrieval", split.validation)
        # Each fold's model trains as the split's did, for its number of epochs: the ranker learns
        # from candidates as good as those it will rank.
        epochs = self.histories[f"{split.name}: retrieval"].best_epoch
        folds = []
        for fold in range(FOLDS):
            rows = [row for row in split.train if fold_of(row.event.user_id, FOLDS) == fold]
            model = self.fit_retrieval(rows, counts, f"{split.name}: retrieval of fold {fold}", epochs=epochs)
            # Its pools' co-visitation candidates too come from its own users only: counted over every
            # user's rows, the pairs would hold the row's own next item.
            folds.append(self.recommender(model, None, counts).with_item_counts(*item_counts(rows, vocabulary)))
        with self.timed(f"{split.name}: ranker rows"):
            rows = ranker_rows(self.ranker_queries(split.train), other_fold(folds), self.trending, self.pool_shape)
        if not len(rows):
            raise TrainingError(f"{split.name} split: retrieval found no training row's real item among its candidates")
        plain = self.recommender(retrieval, None, counts)
        validation, test = self.moments(split.validation), self.moments(split.test)
        kinds = {"DIN": DeepInterestNetwork} | ({"Embedding+MLP": EmbeddingMLP} if self.comparisons else {})
        rankers = {}
        for name, kind in kinds.items():
            model = self.new_ranker(kind, rows, counts, name.lower().replace("+", "_"))
            rankers[name] = self.fit_ranker(
                model,
                rows,
                counts,
                self.hyperparameters.ranker_epochs,
                f"{split.name}: {name}",
                self.validated_by(plain.with_ranker(model), validation),
            )
        previous = None
        if self.comparisons:
            with self.timed(f"train {split.name}: previous design"):
                previous = train_previous_design(split, vocabulary, self.tables, self.length, settings, self.bar)
        with self.timed(f"{split.name}: evaluate"):
            report = self.evaluation.split_report(split, counts, plain, rankers, previous, validation, test, len(rows))
        din = rankers["DIN"]
        return SplitModels(split, counts, retrieval, folds, din, plain.with_ranker(din), rows, report)

    # -- the published models ------------------------------------------------------------------------------

    def fit_final(self, measured: SplitModels) -> InMemoryRecommender:
        """The time split's models, continued over every row: retrieval for KF_FINAL_RETRIEVAL_EPOCHS at
        KF_FINAL_LEARNING_RATE, DIN for one epoch over the split's ranker rows and those of the newer rows
        (whose candidates come from the split's retrieval model, which never learnt them). The counts
        of a row's moment are the same in the split's counts and in those of all rows."""
        rows, split = self.data.rows, measured.split
        with self.timed("final: counts"):
            counts = TrainingCounts.of(rows, self.vocabulary)
        retrieval = self.new_retrieval()
        retrieval.set_weights(measured.retrieval.get_weights())
        schedule = self.retrieval_schedule(
            self.hyperparameters.final_retrieval_epochs, self.hyperparameters.final_learning_rate
        )
        arrays = next_item_windows(rows, self.vocabulary, self.length)
        self.train_retrieval(retrieval, arrays, schedule, counts, "final: retrieval", None)
        newest, split_retrieval = split.train[-1].order, measured.recommender.with_ranker(None)
        with self.timed("final: ranker rows"):
            newer = [query for query in self.ranker_queries(rows) if query.row.order > newest]
            added = self.ranker_rows_by(newer, split_retrieval)
            ranker = RankerRows.concatenate([part for part in (measured.ranker_rows, added) if len(part)])
        din = self.new_ranker(DeepInterestNetwork, ranker, counts, "din")
        din.set_weights(measured.din.get_weights())  # the split's standardisation too: its weights were fitted to it
        self.fit_ranker(din, ranker, counts, 1, "final: DIN")
        return self.recommender(retrieval, din, counts)

    def stage(self, staging: Path, version: int, offer: "Offer") -> LoadedBundle:
        """Export the offered models into `staging`, seal it and load it back as serving will."""
        final = offer.final
        write_served_models(staging, served_models(final.retrieval, final.ranker))
        np.save(staging / ITEM_EMBEDDINGS, final.embeddings, allow_pickle=False)
        final.index.save(staging / ITEM_INDEX, staging / INDEX_IDS)
        (staging / VOCABULARY).write_bytes(self.vocabulary.to_json())
        popularity = final.popularity
        order = np.argsort(-popularity[FIRST_ITEM:], kind="stable")[:POPULAR_ITEMS]
        popular = [self.vocabulary.item_ids[n] for n in order if popularity[n + FIRST_ITEM] > 0]
        (staging / POPULAR).write_bytes(orjson.dumps(popular))
        np.save(staging / POPULARITY, popularity, allow_pickle=False)
        final.covisitation.save(staging)
        final.retrieval.save_weights(staging / RETRIEVAL_WEIGHTS)
        final.ranker.save_weights(staging / RANKER_WEIGHTS)
        self.manifest = Manifest(
            version=version,
            parent_version=offer.parent.version if offer.parent else None,
            created_at=int(time.time() * 1000),
            feature_spec=self.spec,
            hyperparameters=self.hyperparameters,
            trained_until=offer.trained_until,
            from_scratch_at=(offer.parent.from_scratch_at or offer.parent.created_at) if offer.parent else None,
        )
        seal(staging, self.manifest)
        return LoadedBundle(staging, self.settings.pipeline.faiss_exact_max_items)

    def gate(self, recommender: InMemoryRecommender, split: Split, counts: TrainingCounts, force: bool) -> Verdict:
        """`recommender`, trained on `split`'s rows (counted in `counts`), against the live version on
        its validation queries (`training.gate`)."""
        gate = Gate(self.settings, self.registry, self.vocabulary, self.moments)
        with self.timed("gate"):
            return gate.judge(recommender, split.validation, counts, force)

    def from_scratch(self, force: bool) -> "Offer":
        """Measure each split's models, gate the time split's, and offer them continued over every row."""
        measured = [self.measure(split) for split in self.splits]
        final = self.fit_final(measured[0])
        verdict = self.gate(measured[0].recommender, measured[0].split, measured[0].counts, force)
        splits = {models.split.name: models.report for models in measured}
        return Offer(final, verdict, self.data.rows[-1].event.ts, None, splits, measured[0].split, {})

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        clock = time.perf_counter()
        yield
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - clock


def epoch_queries(queries: list[Query]) -> list[Query]:
    """The validation queries an epoch is judged on: at most EPOCH_QUERIES of them, evenly spread."""
    return queries[:: -(-len(queries) // EPOCH_QUERIES)] if len(queries) > EPOCH_QUERIES else queries


def other_fold(folds: list[InMemoryRecommender]):
    """Query -> the retrieval model of the fold its user is not in."""
    return lambda query: folds[(fold_of(query.user_id, FOLDS) + 1) % FOLDS]
