"""One training run: data -> models -> staged bundle -> evaluation -> gate -> publish -> announce."""

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import keras
import numpy as np
import orjson
import tensorflow as tf
from confluent_kafka import Producer

from schemas.bundle import (
    INDEX_IDS,
    ITEM_EMBEDDINGS,
    ITEM_INDEX,
    POPULAR,
    RANKER,
    REPORT,
    USER_TOWER,
    VOCABULARY,
    LoadedBundle,
    Manifest,
    ModelUpdate,
    Registry,
    seal,
)
from schemas.config import Settings
from schemas.model_inputs import MAX_GENRES, Vocabulary, item_tables
from training.data import TimeSplit, encode, evaluation_queries, labels, positive_popularity, ranking_rows
from training.evaluate import (
    CUTOFFS,
    KerasRanker,
    KerasRetrieval,
    QueryInputs,
    ann_recall,
    baseline_pipelines,
    evaluate_bundle,
    pipeline_metrics,
    ranker_metrics,
    retrieve,
)
from training.export import export_ranker, export_user_tower
from training.fit import History, Schedule, build, fit_ranker, fit_retrieval, progress_bar, warm_start
from training.models import DeepInterestNetwork, EmbeddingMLP, ItemTables, TwoTower
from training.report import write_report
from training.sources import TrainingData

log = logging.getLogger("kingfisher.training")
RETRIEVAL_WEIGHTS, RANKER_WEIGHTS = "retrieval.weights.h5", "ranker.weights.h5"
"""Keras weights (HDF5, not pickle) kept in the bundle so the next run can warm-start."""
FUTURE_POSITIVES = 10
POPULAR_ITEMS = 1000
ANN_CHECK_QUERIES, ANN_CHECK_K = 500, 50
MIN_TRAIN_ROWS = 100
GATED_METRICS = {"gauc": ("rankers", "DIN", "gauc"), "recall@50": ("pipelines", "two-tower + DIN", "recall@50")}


class TrainingError(Exception):
    """A run that cannot produce a bundle (e.g. too little data); nothing was published."""


@dataclass(frozen=True)
class Outcome:
    version: int
    published: bool
    verdict: str
    report: dict[str, Any]


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


class Models:
    """The three models of a run, built on one vocabulary's item tables."""

    def __init__(self, settings: Settings, vocabulary: Vocabulary, tables: tuple[np.ndarray, np.ndarray]):
        item_tables_ = ItemTables(*tables, len(vocabulary.genres), settings.embedding_dim)
        self.vocabulary = vocabulary
        self.retrieval = TwoTower(item_tables_, settings.embedding_dim, name="two_tower")
        self.din = DeepInterestNetwork(item_tables_, name="din")
        self.mlp = EmbeddingMLP(item_tables_, name="embedding_mlp")

    @classmethod
    def shaped_like(cls, settings: Settings, vocabulary: Vocabulary) -> "Models":
        """Empty models with the shapes of a bundle trained on `vocabulary`, to load its weights into."""
        tables = np.zeros((vocabulary.size, MAX_GENRES), np.int32), np.zeros(vocabulary.size, np.int32)
        return cls(settings, vocabulary, tables)

    def build(self, examples) -> "Models":
        for model in (self.retrieval, self.din, self.mlp):
            build(model, examples)
        return self


def _warm_start(models: Models, bundle: LoadedBundle | None, settings: Settings, examples) -> int | None:
    if bundle is None:
        return None
    current, directory = bundle.version, bundle.directory
    try:
        previous = Models.shaped_like(settings, bundle.vocabulary).build(examples)
        previous.retrieval.load_weights(directory / RETRIEVAL_WEIGHTS)
        previous.din.load_weights(directory / RANKER_WEIGHTS)
    except Exception as error:  # a bundle of another architecture cannot seed this one; train from scratch
        log.warning("cannot warm-start from %s (%s); training from scratch", directory, error)
        return None
    copied = warm_start(models.retrieval, previous.retrieval, models.vocabulary, bundle.vocabulary)
    copied += warm_start(models.din, previous.din, models.vocabulary, bundle.vocabulary)
    log.info("warm start from version %d: %d variables copied", current, copied)
    return current


def _log_q(examples, vocabulary: Vocabulary) -> np.ndarray:
    counts = np.bincount(examples.item, minlength=vocabulary.size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum()).astype(np.float32)


def _directory_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


class TrainingRun:
    """The state of one run, step by step: prepare, train, stage, evaluate, then publish or refuse."""

    def __init__(self, settings: Settings, data: TrainingData):
        self.settings, self.data, self.length = settings, data, settings.sequence_length
        self.registry = Registry(settings.models_dir)
        self.timings: dict[str, float] = {}
        self.histories: dict[str, History] = {}

    def prepare(self) -> None:
        settings, rows = self.settings, self.data.rows
        if len(rows) < MIN_TRAIN_ROWS:
            raise TrainingError(f"too little data: {len(rows)} sample rows from {self.data.source}")
        row_labels = labels(rows, settings.label_threshold)
        self.split = TimeSplit.of(rows, settings.holdout_fraction)
        train, validate, test = self.split.parts(rows)
        if len(train) < MIN_TRAIN_ROWS or not test:
            raise TrainingError(f"too little data: {len(train)} training rows and {len(test)} test rows")
        cuts = np.cumsum([len(train), len(validate)])
        self.parts = {
            "train": (train, row_labels[: cuts[0]]),
            "validate": (validate, row_labels[cuts[0] : cuts[1]]),
            "test": (test, row_labels[cuts[1] :]),
        }
        self.vocabulary = Vocabulary.of(self.data.catalogue.values())
        rng = np.random.default_rng(settings.train_seed)
        self.popularity = positive_popularity(*self.parts["train"])
        positives = [row for row, label in zip(*self.parts["train"], strict=True) if label > 0]
        self.retrieval_examples = encode(positives, np.ones(len(positives)), self.vocabulary, self.length)
        catalogue_ids = list(self.vocabulary.item_ids)
        self.ranking = {
            name: ranking_rows(*part, catalogue_ids, self.popularity, rng) for name, part in self.parts.items()
        }
        self.examples = {name: encode(*part, self.vocabulary, self.length) for name, part in self.ranking.items()}
        self.queries = evaluation_queries(*self.parts["test"], FUTURE_POSITIVES, settings.eval_max_queries, rng)
        self.validation_queries = evaluation_queries(
            *self.parts["validate"], FUTURE_POSITIVES, settings.eval_max_queries, rng
        )

    def train(self, warm: bool, progress: bool) -> None:
        settings, train, validate = self.settings, self.examples["train"], self.examples["validate"]
        self.models = Models(settings, self.vocabulary, item_tables(self.vocabulary, self.data.catalogue)).build(train)
        self.parent = _warm_start(self.models, self.live, settings, train) if warm else None
        schedule = Schedule(settings.train_batch_size, settings.train_epochs, settings.train_seed)
        log_q = _log_q(self.retrieval_examples, self.vocabulary)
        models, vocabulary = self.models, self.vocabulary

        def retrieval_recall() -> float:
            retrieval = KerasRetrieval(models.retrieval, vocabulary, settings.faiss_exact_max_items)
            inputs = QueryInputs(self.validation_queries, vocabulary, self.length)
            return pipeline_metrics(retrieve(retrieval, inputs, max(CUTOFFS)), self.validation_queries)["recall@50"]

        def gauc_of(model) -> Callable[[], float]:
            return lambda: ranker_metrics(KerasRanker(model, vocabulary), validate)["gauc"]

        steps = {
            "two-tower": lambda bar: fit_retrieval(
                models.retrieval,
                self.retrieval_examples,
                log_q,
                settings.logq_correction,
                schedule,
                retrieval_recall,
                bar,
            ),
            "DIN": lambda bar: fit_ranker(models.din, train, schedule, gauc_of(models.din), "ranker (DIN)", bar),
            "Embedding+MLP": lambda bar: fit_ranker(
                models.mlp, train, schedule, gauc_of(models.mlp), "baseline (Embedding+MLP)", bar
            ),
        }
        with progress_bar(progress) as bar:
            for name, fit_model in steps.items():
                with self.timed(f"train {name}"):
                    self.histories[name] = fit_model(bar)

    @cached_property
    def live(self) -> LoadedBundle | None:
        """The version live when the run started (verified), or None."""
        current = self.registry.current()
        return (
            None if current is None else LoadedBundle(self.registry.path(current), self.settings.faiss_exact_max_items)
        )

    def stage(self, staging: Path, version: int) -> LoadedBundle:
        """Export everything into `staging`, seal it and load it back as serving will."""
        models, vocabulary = self.models, self.vocabulary
        retrieval = KerasRetrieval(models.retrieval, vocabulary, self.settings.faiss_exact_max_items)
        self.embeddings, self.index = retrieval.embeddings, retrieval.index
        export_user_tower(models.retrieval, staging / USER_TOWER, self.length)
        export_ranker(models.din, staging / RANKER, self.length)
        np.save(staging / ITEM_EMBEDDINGS, self.embeddings, allow_pickle=False)
        self.index.save(staging / ITEM_INDEX, staging / INDEX_IDS)
        (staging / VOCABULARY).write_bytes(vocabulary.to_json())
        (staging / POPULAR).write_bytes(orjson.dumps([item for item, _ in self.popularity.most_common(POPULAR_ITEMS)]))
        models.retrieval.save_weights(staging / RETRIEVAL_WEIGHTS)
        models.din.save_weights(staging / RANKER_WEIGHTS)
        self.manifest = Manifest(
            version=version,
            parent_version=self.parent,
            created_at=int(time.time() * 1000),
            feature_spec=self.settings.feature_spec(),
            trained_until=self.split.validate_from,
        )
        seal(staging, self.manifest)
        return LoadedBundle(staging, self.settings.faiss_exact_max_items)

    def evaluate(self, bundle: LoadedBundle) -> dict[str, Any]:
        settings, models, test = self.settings, self.models, self.examples["test"]
        mlp = KerasRanker(models.mlp, self.vocabulary)
        pipelines = baseline_pipelines(
            *self.parts["train"], self.popularity, self.queries, self.vocabulary, self.length
        )
        pipelines |= evaluate_bundle(bundle, self.queries, self.length, settings.candidates, {"Embedding+MLP": mlp})
        rankers = {
            "DIN": ranker_metrics(bundle, test),
            "Embedding+MLP": ranker_metrics(mlp, test),
            "DIN (validation)": ranker_metrics(bundle, self.examples["validate"]),
        }
        sample = slice(0, ANN_CHECK_QUERIES)
        user_vectors = bundle.user_vectors(test.sequence[sample], test.kinds[sample], test.user_features[sample])
        ids = list(self.vocabulary.item_ids)
        return {
            "version": bundle.version,
            "parent_version": self.parent,
            "data": self._data_summary(),
            "rankers": rankers,
            "pipelines": pipelines,
            "index": {
                "kind": self.index.kind,
                "items": len(self.index),
                "k": ANN_CHECK_K,
                "recall": ann_recall(self.index, self.embeddings, ids, user_vectors, ANN_CHECK_K),
            },
            "model_sizes": {
                "two-tower": {
                    "parameters": models.retrieval.count_params(),
                    "bytes": _directory_bytes(bundle.directory / USER_TOWER),
                },
                "DIN": {"parameters": models.din.count_params(), "bytes": _directory_bytes(bundle.directory / RANKER)},
                "Embedding+MLP": {"parameters": models.mlp.count_params(), "bytes": "not exported"},
            },
            "training": {name: asdict(history) for name, history in self.histories.items()},
        }

    def _data_summary(self) -> dict[str, Any]:
        return {
            "source": self.data.source,
            "rows": len(self.data.rows),
            "items": len(self.data.catalogue),
            "train_rows": len(self.parts["train"][0]),
            "validate_rows": len(self.parts["validate"][0]),
            "test_rows": len(self.parts["test"][0]),
            "queries": len(self.queries),
            "validate_from_utc": _utc(self.split.validate_from),
            "test_from_utc": _utc(self.split.test_from),
            "label_threshold": self.settings.label_threshold,
        }

    def gate(self, new: dict[str, float], force: bool) -> tuple[bool, str]:
        """Compare the new models with the live version on the same holdout."""
        live_bundle = self.live
        if live_bundle is None:
            return True, "published: no live version to compare with"
        current = live_bundle.version
        length = live_bundle.manifest.feature_spec.sequence_length
        live_test = encode(*self.ranking["test"], live_bundle.vocabulary, length)
        pipelines = evaluate_bundle(live_bundle, self.queries, length, self.settings.candidates)
        live = {
            "gauc": ranker_metrics(live_bundle, live_test)["gauc"],
            "recall@50": pipelines["two-tower + DIN"]["recall@50"],
        }
        margin = self.settings.gate_margin
        worse = [
            f"{name} {new[name]:.4f} < live v{current}'s {live[name]:.4f} - margin {margin}"
            for name in GATED_METRICS
            if new[name] < live[name] - margin
        ]
        comparison = ", ".join(f"{name} {new[name]:.4f} vs {live[name]:.4f}" for name in GATED_METRICS)
        if not worse:
            return True, f"published: not worse than live version {current} ({comparison})"
        if force:
            return True, f"published with --force although {'; '.join(worse)}"
        return False, f"refused: {'; '.join(worse)} (--force publishes anyway)"

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        clock = time.perf_counter()
        yield
        self.timings[stage] = time.perf_counter() - clock


def train_once(
    settings: Settings,
    data: TrainingData,
    *,
    force: bool = False,
    warm: bool = True,
    announce: bool = True,
    progress: bool = True,
) -> Outcome:
    """Train, evaluate and (if the gate allows, or `force`) publish the next version."""
    keras.utils.set_random_seed(settings.train_seed)
    tf.config.experimental.enable_op_determinism()
    run = TrainingRun(settings, data)
    with run.timed("data"):
        run.prepare()
    run.train(warm, progress)
    version = run.registry.next_version()
    staging = run.registry.staging(version)
    try:
        with run.timed("export"):
            bundle = run.stage(staging, version)
        with run.timed("evaluate"):
            report = run.evaluate(bundle)
        metrics = {name: float(_lookup(report, path)) for name, path in GATED_METRICS.items()}
        with run.timed("gate"):
            allowed, verdict = run.gate(metrics, force)
        report |= {
            "timings_s": run.timings | {"total": sum(run.timings.values())},
            "gate": {"published": allowed, "verdict": verdict},
        }
        log.info("version %d: %s", version, verdict)
        if not allowed:
            return Outcome(version, False, verdict, report)
        write_report(staging / REPORT, report)
        seal(staging, run.manifest.model_copy(update={"metrics": metrics}))
        run.registry.publish(staging, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if announce:
        _announce(
            settings,
            ModelUpdate(
                version=version,
                path=str(run.registry.path(version).resolve()),
                published_at=int(time.time() * 1000),
                metrics=metrics,
            ),
        )
    if pruned := run.registry.prune(settings.keep_versions):
        log.info("deleted old versions %s", pruned)
    return Outcome(version, True, verdict, report)


def _lookup(report: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        report = report[key]
    return report


def _announce(settings: Settings, update: ModelUpdate) -> None:
    """Tell followers (serving) a version is live; they also poll CURRENT, so a failure here only delays them."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "message.timeout.ms": 10_000})
    producer.produce(settings.topic_model_updates, key=update.kafka_key, value=update.to_json())
    if producer.flush(15) > 0:
        log.error(
            "could not announce version %d on %s; serving will find it by polling",
            update.version,
            settings.topic_model_updates,
        )
    else:
        log.info("announced version %d on %s", update.version, settings.topic_model_updates)
