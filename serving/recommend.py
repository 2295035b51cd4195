"""Per-request model work: live sequence -> user vector -> Faiss top-M (+ trending) -> DIN scores -> top-k.

Runs in the service's thread pool, never on the event loop: one call per request does all model
and Faiss work, so a request crosses threads once.
"""

import time
from dataclasses import dataclass, field

import numpy as np

from schemas.bundle import LoadedBundle
from schemas.model_inputs import Behaviour, hour_of_day, sequence_arrays, user_feature_matrix

REASONS = 3


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    reasons: tuple[str, ...] = ()
    """Sequence items with the highest DIN attention for this item, highest first."""


@dataclass
class Ranked:
    items: list[Scored]
    candidates: int
    timings_s: dict[str, float] = field(default_factory=dict)


def rank_for_user(
    bundle: LoadedBundle,
    behaviours: list[Behaviour],
    feature_values: dict | None,
    now_ms: int,
    trending: list[str],
    exclude: set[str],
    k: int,
    candidates: int,
    explain: bool = True,
) -> Ranked:
    """The top `k` of the user's Faiss neighbours (`candidates` of them) merged with `trending`,
    `exclude` left out, by DIN score; with `explain`, each with the behaviours DIN attended to most."""
    length = bundle.manifest.feature_spec.sequence_length
    sequence, kinds = sequence_arrays(bundle.vocabulary, [behaviours], length)
    user = user_feature_matrix([feature_values])
    clock = time.perf_counter()
    _, neighbours = bundle.index.search(bundle.user_vectors(sequence, kinds, user), candidates + len(exclude))
    retrieved = [item for item in neighbours[0] if item is not None and item not in exclude][:candidates]
    pool = list(dict.fromkeys(retrieved + [item for item in trending if item not in exclude]))
    retrieval_s = time.perf_counter() - clock
    if not pool:
        return Ranked([], 0, {"retrieval": retrieval_s})
    clock = time.perf_counter()
    indices = bundle.vocabulary.item_indices(pool)[None, :]
    scores, attention = bundle.score(sequence, kinds, indices, user, hour_of_day([now_ms]))
    order = np.argsort(-scores[0], kind="stable")[:k]
    newest = behaviours[-length:]
    first = length - len(newest)  # sequence position of newest[0] (left padding before it)
    ranked = [
        Scored(pool[n], float(scores[0, n]), _reasons(attention[0, n], newest, first) if explain else ()) for n in order
    ]
    return Ranked(ranked, len(pool), {"retrieval": retrieval_s, "ranking": time.perf_counter() - clock})


def _reasons(weights: np.ndarray, newest: list[Behaviour], first: int) -> tuple[str, ...]:
    positions = [p for p in np.argsort(-weights, kind="stable") if p >= first and weights[p] > 0][:REASONS]
    return tuple(dict.fromkeys(newest[p - first][0] for p in positions))
