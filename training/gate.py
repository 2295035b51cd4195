"""The gate: may a new version go live?

The new models are compared with the live version on the time split's validation queries that
neither had learnt from: the new split's models learnt from nothing at or after the split, the
live version from everything before its `trained_until`. With no live version to compare (none
yet, one that cannot be loaded, or too few such queries because it learnt from most of the
holdout), popularity is the one the new models may not trail.
"""

from collections.abc import Callable
from dataclasses import dataclass

from schemas.bundle import BundleError, Registry
from schemas.config import Settings
from schemas.runtime.loaded_bundle import LoadedBundle
from schemas.runtime.model_inputs import Vocabulary
from training.counts import TrainingCounts
from training.data import Query
from training.evaluate import CUTOFFS, Moments, item_lists, pipeline_metrics, pool_auc, popularity_lists, served

GATE_MIN_QUERIES = 100
GATE_ROUNDING = 1e-9
GATED = {"ndcg@10": "the served pipeline's NDCG@10", "pool_auc": "DIN's AUC within its pools"}


def shortfalls(new: dict[str, float], bar: dict[str, float], margin: float) -> list[str]:
    """The metrics of `bar` on which `new` trails it by more than `margin`; trailing by exactly the
    margin passes (the tolerance absorbs rounding: 0.10 - 0.01 is 0.09000000000000001 in floats)."""
    return [name for name in bar if bar[name] - new[name] > margin + GATE_ROUNDING]


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    text: str
    metrics: dict[str, float]
    """The new models' gated metrics on all validation queries (recorded in the manifest)."""


class Gate:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        vocabulary: Vocabulary,
        moments: Callable[[list[Query]], Moments],
    ):
        self.settings, self.registry, self.vocabulary, self.moments = settings, registry, vocabulary, moments

    def judge(self, recommender, validation: list[Query], counts: TrainingCounts, force: bool) -> Verdict:
        """`recommender` (the new split's models, trained on rows counted in `counts`) against the
        live version, or popularity, on `validation`; `force` publishes a refused one anyway."""
        new_model = self.metrics(recommender, validation)
        current = self.registry.current()
        live, problem = self._live(current)
        fresh = [q for q in validation if q.row.event.ts >= live.manifest.trained_until] if live is not None else []
        margin = self.settings.training.gate_margin
        if len(fresh) >= GATE_MIN_QUERIES:
            new, old = self.metrics(recommender, fresh), self.metrics(live, fresh)
            worse = [
                f"{GATED[name]} {new[name]:.4f} < live v{current}'s {old[name]:.4f} - margin {margin}"
                for name in shortfalls(new, old, margin)
            ]
            comparison = ", ".join(f"{name} {new[name]:.4f} vs {old[name]:.4f}" for name in GATED)
            basis = f"on {len(fresh)} validation queries after live v{current}'s data"
        else:
            popular = popularity_lists(counts.popularity, self.vocabulary, validation, max(CUTOFFS))
            floor = pipeline_metrics(popular, validation)["ndcg@10"]
            below = shortfalls(new_model, {"ndcg@10": floor}, margin)
            worse = (
                [f"NDCG@10 {new_model['ndcg@10']:.4f} < popularity's {floor:.4f} - margin {margin}"] if below else []
            )
            comparison = f"NDCG@10 {new_model['ndcg@10']:.4f} vs popularity's {floor:.4f}"
            basis = f"{_why_not_live(current, problem, fresh)}: compared with popularity on all {len(validation)}"
        if not worse:
            return Verdict(True, f"published: {comparison} ({basis})", new_model)
        if force:
            return Verdict(True, f"published with --force although {'; '.join(worse)} ({basis})", new_model)
        return Verdict(False, f"refused: {'; '.join(worse)} ({basis}; --force publishes anyway)", new_model)

    def metrics(self, recommender, queries: list[Query]) -> dict[str, float]:
        ranked = served(recommender, self.moments(queries), self.settings.pipeline.candidates)
        return {
            "ndcg@10": pipeline_metrics(item_lists(ranked), queries)["ndcg@10"],
            "pool_auc": pool_auc(ranked, queries),
        }

    def _live(self, current: int | None) -> tuple[LoadedBundle | None, str | None]:
        """The live version's bundle, or None and why it cannot be loaded."""
        if current is None:
            return None, None
        try:
            return LoadedBundle(self.registry.path(current), self.settings.pipeline.faiss_exact_max_items), None
        except BundleError as error:
            return None, str(error)


def _why_not_live(current: int | None, problem: str | None, fresh: list[Query]) -> str:
    if current is None:
        return "no live version yet"
    if problem is not None:
        return f"live v{current} cannot be loaded: {problem}"
    return f"only {len(fresh)} validation queries after live v{current}'s data, fewer than {GATE_MIN_QUERIES}"
