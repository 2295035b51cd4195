"""One retraining: from scratch (`training.pipeline`) or continuing the live version
(`training.incremental`), then export -> gate's verdict -> report -> publish -> announce."""

import logging
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import tensorflow as tf
from confluent_kafka import Producer

from schemas.bundle import REPORT, ModelUpdate, Registry, seal
from schemas.config import Settings
from training.evaluation import run_summary
from training.incremental import Continuation, continuable, new_rows
from training.pipeline import Offer, TrainingRun
from training.report import write_report
from training.sources import TrainingData

log = logging.getLogger("kingfisher.training")


@dataclass(frozen=True)
class Outcome:
    version: int
    published: bool
    verdict: str
    report: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False
    """Nothing was trained: too few events since the live version's data."""


def train_once(
    settings: Settings,
    data: TrainingData,
    *,
    force: bool = False,
    announce: bool = True,
    progress: bool = True,
    full_report: bool = False,
    incremental: bool = False,
) -> Outcome:
    """Train, evaluate and (if the gate allows, or `force`) publish the next version. `full_report`:
    with every comparison (a from-scratch run); `incremental`: continue the live version when it can
    be continued (`training.incremental.continuable`), else train from scratch."""
    keras.utils.set_random_seed(settings.training.train_seed)
    tf.config.experimental.enable_op_determinism()
    clock = time.perf_counter()
    live = continuable(settings, Registry(settings.stack.models_dir)) if incremental else None
    if isinstance(live, Continuation):
        if (count := new_rows(data.rows, live.manifest)) < settings.training.incremental_min_rows:
            text = (
                f"skipped: {count} sample rows since live v{live.manifest.version}'s data, fewer than "
                f"KF_INCREMENTAL_MIN_ROWS ({settings.training.incremental_min_rows})"
            )
            log.info("%s", text)
            return Outcome(live.manifest.version, False, text, skipped=True)
        run = TrainingRun(settings, data, progress, vocabulary=live.vocabulary_with(data.catalogue))
        with run.bar:
            offer = live.train(run, force)
    else:
        if live is not None:
            log.info("training from scratch: %s", live)
        run = TrainingRun(settings, data, progress, comparisons=full_report)
        with run.bar:
            offer = run.from_scratch(force)
    return _publish(run, offer, clock, announce)


def _publish(run: TrainingRun, offer: Offer, clock: float, announce: bool) -> Outcome:
    settings, registry = run.settings, run.registry
    version = registry.next_version()
    staging = registry.staging(version)
    try:
        with run.timed("export"):
            bundle = run.stage(staging, version, offer)
        verdict = offer.verdict
        summary = run_summary(run, offer.splits, offer.holdout.validation, offer.final, bundle, offer.holdout)
        report = (
            summary
            | offer.extra
            | {
                "timings_s": run.timings | {"total": time.perf_counter() - clock},
                "gate": {"published": verdict.allowed, "verdict": verdict.text},
            }
        )
        log.info("version %d: %s", version, verdict.text)
        if not verdict.allowed:
            return Outcome(version, False, verdict.text, report)
        write_report(staging / REPORT, report)
        seal(staging, run.manifest.model_copy(update={"metrics": verdict.metrics}))
        registry.publish(staging, version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if announce:
        _announce(
            settings,
            ModelUpdate(
                version=version,
                path=str(registry.path(version).resolve()),
                published_at=int(time.time() * 1000),
                metrics=verdict.metrics,
            ),
        )
    if pruned := registry.prune(settings.training.keep_versions):
        log.info("deleted old versions %s", pruned)
    return Outcome(version, True, verdict.text, report)


def _announce(settings: Settings, update: ModelUpdate) -> None:
    """Tell followers (serving) a version is live; they also poll CURRENT, so a failure here only delays them."""
    producer = Producer(
        {"bootstrap.servers": settings.stack.kafka_bootstrap, "acks": "all", "message.timeout.ms": 10_000}
    )
    producer.produce(settings.stack.topic_model_updates, key=update.kafka_key, value=update.to_json())
    if producer.flush(15) > 0:
        log.error(
            "could not announce version %d on %s; serving will find it by polling",
            update.version,
            settings.stack.topic_model_updates,
        )
    else:
        log.info("announced version %d on %s", update.version, settings.stack.topic_model_updates)
