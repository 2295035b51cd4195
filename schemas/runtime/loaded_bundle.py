"""A verified model bundle loaded into memory: what training's gate evaluates and the service runs.

The bundle's files and manifest are the contract of `schemas.bundle`; this reads them into the
served models (NumPy), the Faiss index and the ranker's tables.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import orjson

from schemas.bundle import (
    INDEX_IDS,
    ITEM_EMBEDDINGS,
    ITEM_INDEX,
    POPULAR,
    POPULARITY,
    RANKER,
    SERVED_MODELS,
    USER_TOWER,
    VOCABULARY,
    BundleError,
    verify,
)
from schemas.catalogue import CatalogueItem
from schemas.runtime.ann import ItemIndex
from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.growing import appended
from schemas.runtime.model_inputs import FIRST_ITEM, ScoreScale, SequenceArrays, Vocabulary, item_content
from schemas.runtime.pipeline import covisitation_damping
from schemas.runtime.seen_filter import SeenFilterIndex
from schemas.runtime.served_models import DinRanker, UserTower
from schemas.runtime.title_match import TitleIndex
from schemas.runtime.top_k import top_k


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def write_served_models(directory: Path, models: dict[str, dict[str, np.ndarray]]) -> None:
    """Save {model: {name: array}} (models: USER_TOWER, RANKER) as the bundle's `SERVED_MODELS`."""
    flat = {f"{model}/{name}": array for model, arrays in models.items() for name, array in arrays.items()}
    np.savez(directory / SERVED_MODELS, **flat)


def read_served_models(directory: Path) -> dict[str, dict[str, np.ndarray]]:
    """The bundle's `SERVED_MODELS` as `write_served_models` took them: {model: {name: array}}."""
    models: dict[str, dict[str, np.ndarray]] = {}
    with np.load(directory / SERVED_MODELS, allow_pickle=False) as stored:
        for name in stored.files:
            model, _, array = name.partition("/")
            models.setdefault(model, {})[array] = stored[name]
    return models


@dataclass(frozen=True)
class SimilarityWeights:
    """What `similar` adds to the retrieval vectors' cosine: co-watching (each item's count divided
    by (its popularity + 1) ** `co_watched_power`) scaled to at most 1, times `co_watched`, and the
    titles' match (`schemas.runtime.title_match`) where it reaches
    `title_floor`, times `title`. The served ones found the most series on half of MovieLens's film
    series while the popular films' similar items kept their genres and few strangers
    (`make bench-similar`; README, Similar items)."""

    co_watched: float = 0.5
    title: float = 0.5
    title_floor: float = 0.5
    co_watched_power: float = 1.0


SERVED_SIMILARITY = SimilarityWeights()


def similarity_to(
    unit_vectors: np.ndarray,
    row: int,
    co_watched: np.ndarray,
    popularity: np.ndarray,
    title_match: np.ndarray,
    weights: SimilarityWeights,
) -> np.ndarray:
    """unit_vectors [N, d] (retrieval vectors of unit length), co_watched [N] (how often each item was
    watched next to row's), popularity [N] (each item's interactions), title_match [N] (row's
    title's cosine with each item's) -> [N] float32: the cosine with row's vector, plus
    `weights.co_watched` times co_watched / (popularity + 1) ** `weights.co_watched_power` scaled to
    at most 1, plus `weights.title` times each title match of at least
    `weights.title_floor`. Cosine rather than the inner product retrieval uses: the vectors' lengths
    carry popularity, which would put the most popular items next to every item. Co-watching and
    titles find what the vectors miss: a film's sequel, watched by few. The floor keeps a single
    shared word of a longer title ("Man on Fire", "Man, The") from counting."""
    damped = co_watched / (popularity + np.float32(1.0)) ** np.float32(weights.co_watched_power)
    strongest = damped.max(initial=0.0)
    scaled = damped / strongest if strongest > 0 else damped
    titles = np.where(title_match >= weights.title_floor, title_match, np.float32(0.0))
    similarity = unit_vectors @ unit_vectors[row] + np.float32(weights.co_watched) * scaled
    return (similarity + np.float32(weights.title) * titles).astype(np.float32)


class LoadedBundle:
    """A verified bundle in memory: the vocabulary, the Faiss index, the ranker's tables and the
    served models (`schemas.runtime.served_models`, NumPy); the `schemas.runtime.pipeline.Recommender`
    that training's gate evaluates and the service runs."""

    def __init__(self, directory: Path, exact_max_items: int):

        self.directory = directory
        self.manifest = verify(directory)
        hyperparameters = self.manifest.hyperparameters
        if hyperparameters is None:
            raise BundleError(f"{directory}: the manifest records no hyperparameters")
        self.sequence_length = self.manifest.feature_spec.sequence_length
        self.ranker_behaviours = min(hyperparameters.ranker_behaviours, self.sequence_length)
        self.vocabulary = Vocabulary.from_json((directory / VOCABULARY).read_bytes())
        self._seen_filter_index = SeenFilterIndex(self.vocabulary.item_ids)
        """Every vocabulary item's bits in a seen filter (`seen_before`)."""
        self.index = ItemIndex.load(directory / ITEM_INDEX, directory / INDEX_IDS, exact_max_items)
        self.popular: list[str] = orjson.loads((directory / POPULAR).read_bytes())
        self.popularity = np.load(directory / POPULARITY, allow_pickle=False)
        self.covisitation = CoVisitation.load(directory, self.vocabulary.size)
        self.embeddings = np.load(directory / ITEM_EMBEDDINGS, allow_pickle=False)
        """[items, d]: row i is item vocabulary.item_ids[i]."""
        self.score_scale = ScoreScale.of(self.embeddings)
        self._unit_vectors = _unit(self.embeddings)
        models = read_served_models(directory)
        self._user_tower = UserTower(models[USER_TOWER], hyperparameters.retrieval_heads)
        self._ranker = DinRanker(models[RANKER], self.ranker_behaviours, hyperparameters.like_weight)
        self.added_index: ItemIndex | None = None
        """The items of the catalogue added since training (`with_items`); None: none."""
        self.withdrawn: frozenset[str] = frozenset()
        """Items withdrawn from the catalogue (`with_items`): no answer holds them."""
        self._withdrawn_rows = np.empty(0, np.int64)
        """Their rows of `embeddings`, for `similar`."""
        self._titles: dict[str, str] = {}
        """item_id -> title, of the catalogue items `with_items` was given."""
        self._title_index = TitleIndex.empty(len(self.vocabulary.item_ids))

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def added_items(self) -> int:
        return len(self.added_index) if self.added_index else 0

    def with_items(self, catalogue: Iterable[CatalogueItem], withdrawn: Iterable[str] = ()) -> "LoadedBundle":
        """This bundle with the catalogue's items it does not know yet, embedded from their content
        (`schemas.runtime.served_models`) and added to the index: retrievable, rankable (no
        interactions, no co-visitation) and with similar items; with every item's title matched by
        similar items (`schemas.runtime.title_match`); with the items it knows whose
        content differs from the one their rows were built from given the new content beside their
        id embeddings; and with the `withdrawn` items it knows added to `self.withdrawn` (left out of
        every answer), less those `catalogue` publishes again. Returns self when nothing changes;
        otherwise a copy: requests in flight keep this one."""
        published = {item.item_id: item for item in catalogue}
        newest = [item for item_id, item in published.items() if item_id not in self.vocabulary]
        changed = self._changed([item for item_id, item in published.items() if item_id in self.vocabulary])
        still_withdrawn = (self.withdrawn - published.keys()) | {
            item_id for item_id in withdrawn if item_id in self.vocabulary
        }
        retitled = {
            item_id: item.title for item_id, item in published.items() if self._titles.get(item_id) != item.title
        }
        if not newest and not changed and not retitled and still_withdrawn == self.withdrawn:
            return self
        grown = copy.copy(self)
        grown.withdrawn = frozenset(still_withdrawn)
        grown._withdrawn_rows = self.vocabulary.item_indices(grown.withdrawn) - FIRST_ITEM  # known items only
        if changed:
            grown._change_content(changed)
        if newest:
            grown._add(newest)
        if retitled:
            grown._retitle(retitled)
        return grown

    def _changed(self, known: list[CatalogueItem]) -> list[CatalogueItem]:
        """The items of `known` whose rows were built from other content than theirs now."""

        if not known:
            return []
        genres, years = item_content(self.vocabulary, known)
        differs = self._user_tower.content_differs(
            self.vocabulary.item_indices(i.item_id for i in known), genres, years
        )
        return [item for item, changed in zip(known, differs, strict=True) if changed]

    def _change_content(self, changed: list[CatalogueItem]) -> None:
        """Give the items of `changed` their new content (only on a fresh copy: this writes it)."""

        ids = [item.item_id for item in changed]
        genres, years = item_content(self.vocabulary, changed)
        indices = self.vocabulary.item_indices(ids)
        self._user_tower, vectors = self._user_tower.with_content(indices, genres, years)
        self._ranker = self._ranker.with_content(indices, genres, years)
        self.index = self.index.with_vectors(vectors, ids)
        if self.added_index is not None and (
            added := [n for n, item_id in enumerate(ids) if item_id in self.added_index]
        ):
            self.added_index = self.added_index.with_vectors(vectors[added], [ids[n] for n in added])
        rows = indices - FIRST_ITEM
        self.embeddings, self._unit_vectors = self.embeddings.copy(), self._unit_vectors.copy()
        self.embeddings[rows], self._unit_vectors[rows] = vectors, _unit(vectors)

    def _add(self, newest: list[CatalogueItem]) -> None:
        """Add the items of `newest` (only on a fresh copy: this writes it)."""

        ids = [item.item_id for item in newest]
        genres, years = item_content(self.vocabulary, newest)
        self._user_tower, vectors = self._user_tower.with_items(genres, years)
        self._ranker = self._ranker.with_items(genres, years)
        self.vocabulary = self.vocabulary.extended(ids)
        self._seen_filter_index = self._seen_filter_index.with_items(ids)
        self.index = self.index.with_items(vectors, ids)
        self.added_index = (
            self.added_index.with_items(vectors, ids)
            if self.added_index
            else ItemIndex(self.index.exact_max_items).index(vectors, ids)
        )
        self.embeddings = appended(self.embeddings, vectors)
        self._unit_vectors = appended(self._unit_vectors, _unit(vectors))
        self.popularity = appended(self.popularity, np.zeros(len(newest), self.popularity.dtype))

    def _retitle(self, retitled: dict[str, str]) -> None:
        """Give items the titles of `retitled` (item_id -> title) (only on a fresh copy: this writes it)."""
        self._titles = self._titles | retitled
        rows = self.vocabulary.item_indices(retitled) - FIRST_ITEM
        self._title_index = self._title_index.with_titles(
            len(self.vocabulary.item_ids), dict(zip(rows.tolist(), retitled.values(), strict=True))
        )

    @cached_property
    def covisitation_damping(self) -> np.ndarray:
        """Items added since training lie past the counts' size, so a copy `with_items` made keeps it."""
        return covisitation_damping(self.popularity, self.covisitation.size)

    def seen_before(self, seen_filter: bytes | None) -> set[str]:
        """The items of this bundle's vocabulary that a user's seen filter holds (none without one)."""
        return set(self._seen_filter_index.held(seen_filter)) if seen_filter else set()

    def _by_row(self, by_index: np.ndarray) -> np.ndarray:
        """by_index [vocabulary indices up to training's] -> [rows of the retrieval vectors] float32:
        each row's value; 0 for items added since training, which no count knows."""
        rows = np.zeros(len(self._unit_vectors), np.float32)
        known = by_index[FIRST_ITEM : FIRST_ITEM + len(rows)]
        rows[: len(known)] = known
        return rows

    def _co_watched(self, index: int) -> np.ndarray:
        """[rows of the retrieval vectors]: how often each item was watched next to item `index`
        (co-visitation both ways); 0 for items added since training, which were watched with none."""
        if index >= self.covisitation.size:
            return np.zeros(len(self._unit_vectors), np.float32)
        return self._by_row(self.covisitation.co_watched(index))

    def user_vectors(self, sequences: SequenceArrays) -> np.ndarray:
        """-> [B, d] float32."""
        return self._user_tower(sequences.items, sequences.kinds, sequences.ages)

    def score(self, sequences: SequenceArrays, candidates, features, pairs):
        """candidates [B, M] int32, features [B, M, F], pairs [B, M, N] float32 ->
        (scores [B, M], attention [B, M, N] over the newest N = ranker_behaviours behaviours)."""
        return self._ranker(sequences.items, sequences.kinds, sequences.ages, candidates, features, pairs)

    def similar(
        self, item_id: str, k: int, weights: SimilarityWeights = SERVED_SIMILARITY
    ) -> list[tuple[str, float]] | None:
        """The k most similar items to `item_id` by `similarity_to` (blended by `weights`), best first,
        withdrawn items left out; None for an unknown or withdrawn item."""
        index = int(self.vocabulary.item_indices([item_id])[0])
        row = index - FIRST_ITEM
        if row < 0 or item_id in self.withdrawn:
            return None
        title_match = self._title_index.match(row)
        co_watched, popularity = self._co_watched(index), self._by_row(self.popularity)
        similarity = similarity_to(self._unit_vectors, row, co_watched, popularity, title_match, weights)
        similarity[row] = -np.inf
        similarity[self._withdrawn_rows] = -np.inf
        best = top_k(similarity, k)
        return [(self.vocabulary.item_ids[n], float(similarity[n])) for n in best if np.isfinite(similarity[n])]
