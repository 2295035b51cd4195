"""What a training run's report measures.

On each split: the served pipeline (retrieval + DIN) on the validation and test queries; with
`comparisons` (the full report, as `make bench-train` runs it) also the baselines (popularity,
item co-occurrence, EASE), retrieval alone, the Embedding+MLP ranker, the previous design and the
served pipeline with each query's newest behaviour dropped. Then the run's summary: data, index
recall, the exported models' sizes and agreement, the training histories.
"""

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.progress import Progress

from schemas.bundle import RANKER, USER_TOWER
from schemas.config import Settings
from schemas.runtime.loaded_bundle import LoadedBundle, read_served_models
from schemas.runtime.model_inputs import Vocabulary
from schemas.runtime.pipeline import candidates_of, pool_of, retrieve
from schemas.runtime.sources.synthetic import SyntheticWorld
from training.counts import TrainingCounts
from training.data import Query, Split
from training.evaluate import (
    CUTOFFS,
    EASE_REGULARISATION,
    FUTURE_ITEMS,
    CoOccurrence,
    Ease,
    Moments,
    ann_recall,
    candidate_curve,
    click_probability_share,
    fallback_lists,
    identical_reasons_share,
    intervals,
    item_lists,
    like_weight_curve,
    pipeline_metrics,
    pool_auc,
    popularity_lists,
    retrieved,
    served,
)
from training.models import ItemTables, LikeReweighted
from training.previous import PreviousDesign
from training.recommender import InMemoryRecommender

if TYPE_CHECKING:
    from training.pipeline import TrainingRun

SERVED = "served: sequential retrieval + DIN"
PREVIOUS = "previous design: mean two-tower + like-DIN"
FALLBACK = "the service's fallback: trending, then popularity"
TUNED_COOCCURRENCE = "item co-occurrence, recency-weighted and popularity-normalised"
ANN_CHECK_QUERIES, ANN_CHECK_K = 500, 50
EXPORT_CHECK_CANDIDATES = 60
"""Candidates per query on which the exported ranker is compared with the trained one."""


class Baselines:
    """What the full report compares the served pipeline with, from a split's training rows: popularity,
    item co-occurrence plain and recency-weighted (its weighting chosen on the validation queries), EASE
    (its regularisation chosen likewise) and the service's fallback."""

    def __init__(self, split: Split, counts: TrainingCounts, vocabulary: Vocabulary):
        self.split, self.counts, self.vocabulary = split, counts, vocabulary
        validation, count = split.validation, max(CUTOFFS)

        def validation_ndcg(model: CoOccurrence | Ease) -> float:
            return pipeline_metrics(model.lists(validation, count), validation)["ndcg@10"]

        self.plain_cooccurrence = CoOccurrence(split.train, vocabulary, counts.popularity)
        self.cooccurrence = CoOccurrence(split.train, vocabulary, counts.popularity).tune(validation_ndcg)
        self.ease = Ease(split.train, vocabulary, counts.popularity).tune(EASE_REGULARISATION, validation_ndcg)

    def lists(self, moments: Moments, count: int) -> dict[str, list[list[str]]]:
        popularity, queries = self.counts.popularity, moments.queries
        return {
            "popularity": popularity_lists(popularity, self.vocabulary, queries, count),
            FALLBACK: fallback_lists(popularity, self.vocabulary, moments, count),
            "item co-occurrence": self.plain_cooccurrence.lists(queries, count),
            TUNED_COOCCURRENCE: self.cooccurrence.lists(queries, count),
            "EASE": self.ease.lists(queries, count),
        }


def train_previous_design(
    split: Split, vocabulary: Vocabulary, tables: ItemTables, length: int, settings: Settings, bar: Progress
) -> PreviousDesign:
    return PreviousDesign.train(
        split.train,
        [query.row for query in split.validation],
        vocabulary,
        tables,
        length,
        settings.pipeline.label_threshold,
        settings.training.train_seed,
        settings.pipeline.faiss_exact_max_items,
        bar,
    )


class Evaluation:
    """A split's part of the report."""

    def __init__(self, settings: Settings, vocabulary: Vocabulary, world, comparisons: bool):
        """`world`: the synthetic world the data came from, whose click probabilities are known; or None."""
        self.settings, self.vocabulary, self.world, self.comparisons = settings, vocabulary, world, comparisons

    def split_report(
        self,
        split: Split,
        counts: TrainingCounts,
        plain: InMemoryRecommender,
        rankers: dict,
        previous: PreviousDesign | None,
        validation: Moments,
        test: Moments,
        rows: int,
    ) -> dict[str, Any]:
        """`plain`: the split's retrieval model alone; `rankers` by name, "DIN" the served one."""
        baselines = Baselines(split, counts, self.vocabulary) if self.comparisons else None
        report: dict[str, Any] = {"train_rows": len(split.train), "ranker_rows": rows}
        if baselines is not None:
            report["ease_lambda"] = baselines.ease.regularisation
            cooccurrence = baselines.cooccurrence
            report["cooccurrence_weighting"] = {"decay": cooccurrence.decay, "power": cooccurrence.power}
            report["ease_validation_ndcg@10"] = {f"{lam:g}": ndcg for lam, ndcg in baselines.ease.scores.items()}
        for part, moments in (("validation", validation), ("test", test)):
            report[part] = self._part(plain, rankers, baselines, moments, previous if part == "test" else None)
        return report

    def _part(self, plain, rankers, baselines: Baselines | None, moments: Moments, previous) -> dict[str, Any]:
        queries, count, candidates = moments.queries, max(CUTOFFS), self.settings.pipeline.candidates
        answers = {name: served(plain.with_ranker(model), moments, candidates) for name, model in rankers.items()}
        lists = {SERVED: item_lists(answers["DIN"])}
        if baselines is not None:
            lists |= {
                "sequential retrieval + Embedding+MLP": item_lists(answers["Embedding+MLP"]),
                "sequential retrieval alone": retrieved(plain, moments, count),
            } | baselines.lists(moments, count)
        pipelines = {name: pipeline_metrics(items, queries) for name, items in lists.items()}
        if previous is not None:  # what only the full report reads, on the test queries only
            pipelines[PREVIOUS] = previous.metrics(moments, candidates, count)
            dropped = served(plain.with_ranker(rankers["DIN"]), moments, candidates, drop_newest=True)
            pipelines[f"{SERVED}, newest behaviour dropped"] = pipeline_metrics(item_lists(dropped), queries)
        part: dict[str, Any] = {
            "queries": len(queries),
            "pipelines": pipelines,
            "intervals": intervals(lists, queries, SERVED),
            "rankers": {name: {"pool_auc": pool_auc(ranked, queries)} for name, ranked in answers.items()},
            "identical_reasons_top10": identical_reasons_share(answers["DIN"]),
        }
        if baselines is not None:
            din, trending = plain.with_ranker(rankers["DIN"]), self.settings.pipeline.trending_candidates
            part["candidate_curve"] = candidate_curve(din, moments, candidates, trending, answers["DIN"])
            part["like_weight_curve"] = like_weight_curve(
                lambda weight: plain.with_ranker(LikeReweighted(rankers["DIN"], weight)), moments, candidates,
                answers["DIN"], self.settings.training.model.like_weight,
            )  # fmt: skip
        if isinstance(self.world, SyntheticWorld):
            part["true_click_share_top10"] = {
                name: click_probability_share(self.world, queries, items) for name, items in lists.items()
            }
        return part


def run_summary(
    run: "TrainingRun",
    splits: dict[str, Any],
    sample: list[Query],
    final: InMemoryRecommender,
    bundle: LoadedBundle,
    holdout: Split,
) -> dict[str, Any]:
    """The report's whole: data, each split's part, the index's recall on `sample`'s users, the
    exported models' sizes and agreement with the trained ones, and every model's training history;
    `holdout`: the split whose validation queries the run held out from training (and the gate judged)."""
    requests = Moments(sample[:ANN_CHECK_QUERIES], run.trending).requests(1, EXPORT_CHECK_CANDIDATES)
    sequences, vectors, retrieved = retrieve(final, requests)
    pools = [pool_of(final, request, items) for request, items in zip(requests, retrieved, strict=True)]
    batch = candidates_of(final, requests, sequences, vectors, pools)
    scores = [model.score(sequences, batch.indices, batch.features, batch.pairs)[0] for model in (final, bundle)]
    served = {
        model: sum(array.nbytes for array in arrays.values())
        for model, arrays in read_served_models(bundle.directory).items()
    }
    return {
        "version": bundle.version,
        "data": _data_summary(run, holdout),
        "splits": splits,
        "index": {
            "kind": final.index.kind,
            "items": len(final.index),
            "k": ANN_CHECK_K,
            "recall": ann_recall(final.index, final.embeddings, list(run.vocabulary.item_ids), vectors, ANN_CHECK_K),
            "exported_user_tower_max_difference": float(np.abs(bundle.user_vectors(sequences) - vectors).max()),
            "exported_ranker_max_difference": float(np.abs(scores[1] - scores[0]).max()),
        },
        "model_sizes": {
            "sequential retrieval": {"parameters": final.retrieval.count_params(), "bytes": served[USER_TOWER]},
            "DIN": {"parameters": final.ranker.count_params(), "bytes": served[RANKER]},
        },
        "training": {name: asdict(history) for name, history in run.histories.items()},
    }


def _data_summary(run: "TrainingRun", holdout: Split) -> dict[str, Any]:
    settings = run.settings
    return {
        "source": run.data.source,
        "rows": len(run.data.rows),
        "items": len(run.data.catalogue),
        f"{holdout.name}_split_from_utc": utc_text(holdout.validation[0].row.event.ts) if holdout.validation else None,
        "label_threshold": settings.pipeline.label_threshold,
        "like_weight": settings.training.model.like_weight,
        "relevant": f"the next {FUTURE_ITEMS} items each query's user takes, none seen before",
    }


def utc_text(ms: int) -> str:
    """Epoch milliseconds as ISO 8601 in UTC, to the second."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")
