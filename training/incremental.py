"""Incremental retraining: continue the live version's models on the events since its data.

A from-scratch run (`training.pipeline`) measures its models on held-out splits and publishes them
continued over every row. An incremental run starts from the live version's weights instead: the
sample rows after its `trained_until` are split by time, the newest KF_HOLDOUT_FRACTION of them
held out as validation queries; retrieval continues for KF_INCREMENTAL_EPOCHS at
KF_FINAL_LEARNING_RATE on the new rows' sequences plus KF_INCREMENTAL_REPLAY times as many older
ones sampled from all the rows before (so it does not forget them); DIN continues on the new rows
whose candidates come from the live retrieval model, which never learnt them. The gate judges the
models it publishes against the live version on the held-out queries, which neither learnt; the next
run learns them. Items the catalogue gained are appended to the live vocabulary (their id rows start
fresh, their content is known); a genre the live vocabulary lacks waits for the next from-scratch
run, which KF_FULL_RETRAIN_EVERY_S after the last one replaces the chain.
"""

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.bundle import VOCABULARY, Manifest, Registry
from schemas.catalogue import CatalogueItem
from schemas.config import Settings
from schemas.runtime.model_inputs import Vocabulary, item_tables
from training.counts import TrainingCounts, item_counts
from training.data import Row, Split, Windows, fresh_split
from training.data import windows as next_item_windows
from training.evaluate import FUTURE_ITEMS
from training.evaluation import utc_text
from training.models import DeepInterestNetwork, ItemTables, continue_from
from training.pipeline import RANKER_WEIGHTS, RETRIEVAL_WEIGHTS, Offer, TrainingError, TrainingRun
from training.ranker_data import RankerRows


def new_rows(rows: Sequence[Row], manifest: Manifest) -> int:
    """How many of `rows` came after the version's data."""
    return sum(row.event.ts > manifest.trained_until for row in rows)


def continuable(settings: Settings, registry: Registry, now_ms: int | None = None) -> "Continuation | str":
    """The live version an incremental run continues, or why none can be (then: from scratch)."""
    current = registry.current()
    if current is None:
        return "no live version"
    directory = registry.path(current)
    try:
        manifest = registry.manifest(current)
        vocabulary = Vocabulary.from_json((directory / VOCABULARY).read_bytes())
    except (OSError, ValueError) as error:
        return f"live v{current} cannot be read: {error}"
    if manifest.hyperparameters != settings.training.model:
        return f"live v{current} was trained with other hyperparameters"
    if manifest.feature_spec != settings.pipeline.features:
        return f"live v{current} was trained with another feature spec"
    if missing := [name for name in (RETRIEVAL_WEIGHTS, RANKER_WEIGHTS) if not (directory / name).is_file()]:
        return f"live v{current} has no {', '.join(missing)}"
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    age_s = (now_ms - (manifest.from_scratch_at or manifest.created_at)) / 1000
    if age_s >= settings.training.full_retrain_every_s:
        every_s = settings.training.full_retrain_every_s
        return f"its from-scratch run is {age_s:.0f}s old (KF_FULL_RETRAIN_EVERY_S {every_s:.0f})"
    return Continuation(manifest, directory, vocabulary)


@dataclass(frozen=True)
class Continuation:
    """The live version an incremental run continues."""

    manifest: Manifest
    directory: Path
    vocabulary: Vocabulary

    def vocabulary_with(self, catalogue: Mapping[str, CatalogueItem]) -> Vocabulary:
        """The live vocabulary with the catalogue's new items appended: every known item keeps its index."""
        known = set(self.vocabulary.item_ids)
        added = sorted(item_id for item_id in catalogue if item_id not in known)
        return Vocabulary(self.vocabulary.item_ids + tuple(added), self.vocabulary.genres)

    def train(self, run: TrainingRun, force: bool) -> Offer:
        settings = run.settings.training
        split = fresh_split(
            run.data.rows,
            self.manifest.trained_until,
            settings.holdout_fraction,
            FUTURE_ITEMS,
            settings.eval_max_queries,
            settings.train_seed,
        )
        new = [row for row in split.train if row.event.ts > self.manifest.trained_until]
        if not new or not split.validation:
            raise TrainingError(
                f"too little new data: {len(new)} training rows and {len(split.validation)} validation queries "
                f"after live v{self.manifest.version}'s data"
            )
        with run.timed("incremental: counts"):
            counts = TrainingCounts.of(split.train, run.vocabulary)
        live_retrieval = self._retrieval(run)
        retrieval = run.new_retrieval()
        retrieval.set_weights(live_retrieval.get_weights())
        older = [row for row in split.train if row.event.ts <= self.manifest.trained_until]
        sequences = self._sequences(run, new, older)
        schedule = run.retrieval_schedule(settings.incremental_epochs, run.hyperparameters.final_learning_rate)
        run.train_retrieval(retrieval, sequences.windows, schedule, counts, "incremental: retrieval", split.validation)
        # The pools' co-visitation candidates from the rows the live model learnt from: the new rows'
        # own pairs would hold each row's next item.
        live = run.recommender(live_retrieval, None, counts).with_item_counts(*item_counts(older, run.vocabulary))
        ranker = self._ranker_rows(run, split, live)
        din = run.new_ranker(DeepInterestNetwork, ranker, counts, "din")
        continue_from(din, self._trained_ranker(run, ranker, counts), self.vocabulary.size)
        final = run.recommender(retrieval, din, counts)
        run.fit_ranker(din, ranker, counts, settings.incremental_epochs, "incremental: DIN",
                       run.validated_by(final, run.moments(split.validation)))  # fmt: skip
        verdict = run.gate(final, split, counts, force)
        extra = {
            "incremental": {
                "parent_version": self.manifest.version,
                "from_scratch_at_utc": utc_text(self.manifest.from_scratch_at or self.manifest.created_at),
                "new_rows": len(new),
                "new_windows": sequences.new,
                "replayed_windows": len(sequences.windows) - sequences.new,
                "ranker_rows": len(ranker),
                "added_items": len(run.vocabulary.item_ids) - len(self.vocabulary.item_ids),
                "validation_queries": len(split.validation),
            }
        }
        return Offer(final, verdict, split.train[-1].event.ts, self.manifest, {}, split, extra)

    def _retrieval(self, run: TrainingRun):
        """The live retrieval model, on the run's (grown) vocabulary."""
        trained = run.new_retrieval(self._tables(run))
        trained.load_weights(self.directory / RETRIEVAL_WEIGHTS)
        model = run.new_retrieval()
        continue_from(model, trained, self.vocabulary.size)
        return model

    def _trained_ranker(self, run: TrainingRun, rows: RankerRows, counts: TrainingCounts):
        """The live DIN as trained (its own vocabulary), built on a batch of `rows` with every item
        index blanked (items the live vocabulary lacks would be out of its tables)."""
        spec = run.hyperparameters
        model = DeepInterestNetwork.of(self._tables(run), spec, "din")
        batch = next(rows.batches(counts, 2, run.settings.training.train_seed, spec.ranker_behaviours)(0))
        inputs = {key: batch[key][:2] for key in ("items", "kinds", "ages", "candidates", "features", "pairs")}
        model(inputs | {"items": np.zeros_like(inputs["items"]), "candidates": np.zeros_like(inputs["candidates"])})
        model.load_weights(self.directory / RANKER_WEIGHTS)
        return model

    def _tables(self, run: TrainingRun) -> ItemTables:
        genres, years = item_tables(self.vocabulary, run.data.catalogue)
        return ItemTables(genres, years, len(self.vocabulary.genres))

    def _sequences(self, run: TrainingRun, new: list[Row], older: list[Row]) -> "Sequences":
        """The new rows' training sequences, then KF_INCREMENTAL_REPLAY times as many of the older
        rows' (a uniform sample without replacement)."""
        with run.timed("incremental: sequences"):
            fresh = next_item_windows(new, run.vocabulary, run.length)
            old = next_item_windows(older, run.vocabulary, run.length)
            wanted = min(len(old), round(len(fresh) * run.settings.training.incremental_replay))
            chosen = np.sort(
                np.random.default_rng(run.settings.training.train_seed).choice(len(old), wanted, replace=False)
            )
            joined = Windows(*(np.concatenate([a, b[chosen]]) for a, b in zip(fresh, old, strict=True)))
        return Sequences(joined, len(fresh))

    def _ranker_rows(self, run: TrainingRun, split: Split, live) -> RankerRows:
        """DIN's rows: the new rows' queries, with candidates from the live retrieval model."""
        with run.timed("incremental: ranker rows"):
            queries = [q for q in run.ranker_queries(split.train) if q.row.event.ts > self.manifest.trained_until]
            rows = run.ranker_rows_by(queries, live)
        if not len(rows):
            raise TrainingError("the live retrieval model found no new row's real item among its candidates")
        return rows


@dataclass(frozen=True)
class Sequences:
    windows: Windows
    new: int
    """The first `new` windows are the new rows'; the rest replayed."""
