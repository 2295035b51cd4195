"""Model bundles and the registry that holds them: the contract between training and serving.

A bundle is a directory `v000042/` holding the exported models (the sequential user tower and the
DIN ranker), the item vectors and their Faiss index, the vocabulary, the item tables the ranker's
features read (interaction counts, co-visitation), the evaluation report and `manifest.json`,
which records the SHA-256 of every other file. A reader verifies every checksum (and that no file
was added) before it loads anything; nothing in a bundle is a pickle. The registry directory holds
the versions and a `CURRENT` file naming the live one, replaced atomically. Publishing announces a
`ModelUpdate` on the `model-updates` topic; serving follows that and polls `CURRENT` as a backstop.
"""

import copy
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.catalogue import CatalogueItem
from schemas.experiments import Experiment
from schemas.hyperparameters import Hyperparameters
from schemas.logic.features import FeatureSpec
from schemas.logic.model_inputs import FIRST_ITEM, SequenceArrays
from schemas.validation import ContractRecord

BUNDLE_FORMAT = 5
"""5: the served models carry their item embeddings' genre and year tables, from which the service
embeds items published after training (4: the served models are arrays (`SERVED_MODELS`) that
NumPy runs, not TensorFlow SavedModels; 3: the ranker attends over the newest
`Hyperparameters.ranker_behaviours` behaviours; 2 attended over the whole sequence and brought the
sequential user tower over items, kinds and ages and the ranker's candidate features and
co-visitation pairs; 1 had a mean-pooled user tower)."""
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
EXPERIMENT = "EXPERIMENT.json"
SERVED_MODELS = "served_models.npz"
"""The user tower's and the ranker's arrays (`training.export`), run by `schemas.logic.served_models`,
each stored as `<model>/<array name>`."""
USER_TOWER, RANKER = "user_tower", "ranker"
"""The served models' names in `SERVED_MODELS`."""
ITEM_EMBEDDINGS, ITEM_INDEX, INDEX_IDS, VOCABULARY = (
    "item_embeddings.npy",
    "items.faiss",
    "index_ids.json",
    "vocabulary.json",
)
POPULAR = "popular.json"
"""Most popular items of the training data, most popular first: the cold-start and no-Redis answer."""
POPULARITY = "popularity.npy"
"""[vocabulary size] float32: each item index's interactions in the training data (a ranker feature)."""
REPORT = "report"
"""Directory of the evaluation report (JSON, Markdown, PNG)."""


class BundleError(Exception):
    """A bundle that must not be loaded: missing, altered or added files, or an unknown format."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle_format: Literal[5] = BUNDLE_FORMAT
    version: int = Field(ge=1)
    parent_version: int | None = None
    created_at: int = Field(description="Epoch milliseconds.")
    feature_spec: FeatureSpec
    hyperparameters: Hyperparameters | None = Field(
        None, description="How the models were trained (absent from bundles made before it was recorded)."
    )
    trained_until: int = Field(description="Event time (ms) of the newest training event.")
    from_scratch_at: int | None = Field(
        None,
        description="Creation time (ms) of the from-scratch version this one continues (through `parent_version`); "
        "None: trained from scratch.",
    )
    metrics: dict[str, float] = Field(default_factory=dict, description="Headline holdout metrics.")
    files: dict[str, str] = Field(default_factory=dict, description="Relative path -> SHA-256 hex digest.")


class ModelUpdate(ContractRecord):
    """Announcement on the `model-updates` topic that a version is live."""

    kafka_key_field = "kind"

    kind: Literal["bundle"] = "bundle"
    version: int
    path: str
    published_at: int
    metrics: dict[str, float] = Field(default_factory=dict)


def version_name(version: int) -> str:
    return f"v{version:06d}"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*") if path.is_file())


def seal(directory: Path, manifest: Manifest) -> Manifest:
    """Write the manifest with the checksum of every file now in `directory`."""
    files = {name: sha256(directory / name) for name in _files(directory) if name != MANIFEST}
    sealed = manifest.model_copy(update={"files": files})
    (directory / MANIFEST).write_bytes(orjson.dumps(sealed.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    return sealed


def verify(directory: Path) -> Manifest:
    """The bundle's manifest, once every file matches it; otherwise BundleError naming what is wrong."""
    try:
        raw = (directory / MANIFEST).read_bytes()
        found = orjson.loads(raw).get("bundle_format")
        if isinstance(found, int) and found != BUNDLE_FORMAT:
            raise BundleError(f"{directory}: bundle format {found}; this version reads {BUNDLE_FORMAT}: retrain")
        manifest = Manifest.model_validate_json(raw)
    except FileNotFoundError as missing:
        raise BundleError(f"{directory}: no {MANIFEST}") from missing
    except (ValueError, AttributeError) as invalid:
        raise BundleError(f"{directory / MANIFEST}: not a bundle manifest: {invalid}") from invalid
    present = set(_files(directory)) - {MANIFEST}
    if missing := sorted(set(manifest.files) - present):
        raise BundleError(f"{directory}: files missing: {', '.join(missing)}")
    if added := sorted(present - set(manifest.files)):
        raise BundleError(f"{directory}: files not in the manifest: {', '.join(added)}")
    for name, expected in manifest.files.items():
        if sha256(directory / name) != expected:
            raise BundleError(f"{directory / name}: checksum mismatch (expected sha256 {expected})")
    return manifest


class Registry:
    """The versions under one directory and the pointer to the live one."""

    def __init__(self, root: Path):
        self.root = root

    def versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(path.name[1:]) for path in self.root.glob("v[0-9]*") if path.name[1:].isdigit())

    def path(self, version: int) -> Path:
        return self.root / version_name(version)

    def current(self) -> int | None:
        try:
            return int((self.root / CURRENT).read_text().strip()[1:])
        except FileNotFoundError:
            return None

    def manifest(self, version: int) -> Manifest:
        """The version's manifest as written (files unchecked: `verify` checks them); OSError or
        ValueError when it is missing or not a manifest."""
        return Manifest.model_validate_json((self.path(version) / MANIFEST).read_bytes())

    def servable(self) -> bool:
        """Whether there is a live version this code can read (not one of an older bundle format)."""
        current = self.current()
        if current is None:
            return False
        try:
            self.manifest(current)
        except (OSError, ValueError):
            return False
        return True

    def next_version(self) -> int:
        return max([0, *self.versions()]) + 1

    def staging(self, version: int) -> Path:
        """An empty directory to build a bundle in, on the registry's file system (for the atomic rename)."""
        path = self.root / f".staging-{version_name(version)}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, version: int) -> Manifest:
        """Verify the staged bundle, move it into place and make it current; both steps are atomic renames."""
        manifest = verify(staging)
        if manifest.version != version:
            raise BundleError(f"{staging}: manifest says version {manifest.version}, expected {version}")
        staging.rename(self.path(version))
        self.make_current(version)
        return manifest

    def make_current(self, version: int) -> None:
        """Point CURRENT at a published version, in one atomic rename."""
        if version not in self.versions():
            raise BundleError(f"{self.root}: no version {version}")
        _replace_atomically(self.root / CURRENT, (version_name(version) + "\n").encode())

    def experiment(self, default: Experiment | None) -> Experiment | None:
        """The experiment an operator set (`set_experiment`), or `default` (KF_EXPERIMENT) while none was."""
        try:
            stored = orjson.loads((self.root / EXPERIMENT).read_bytes())
        except FileNotFoundError:
            return default
        return None if stored["experiment"] is None else Experiment.model_validate(stored["experiment"])

    def set_experiment(self, experiment: Experiment | None) -> None:
        """Run `experiment` (None: none, whatever KF_EXPERIMENT says) in every service following this registry."""
        self.root.mkdir(parents=True, exist_ok=True)
        stored = {"experiment": experiment.model_dump() if experiment else None}
        _replace_atomically(self.root / EXPERIMENT, orjson.dumps(stored, option=orjson.OPT_INDENT_2))

    def prune(self, keep: int) -> list[int]:
        """Delete all but the newest `keep` versions (never the current one); returns the deleted ones."""
        current = self.current()
        doomed = [version for version in self.versions()[:-keep] if version != current]
        for version in doomed:
            shutil.rmtree(self.path(version))
        return doomed


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _replace_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    try:
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


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


class LoadedBundle:
    """A verified bundle in memory: the vocabulary, the Faiss index, the ranker's tables and the
    served models (`schemas.logic.served_models`, NumPy); the `schemas.logic.pipeline.Recommender`
    that training's gate evaluates and the service runs."""

    def __init__(self, directory: Path, exact_max_items: int):
        from schemas.logic.ann import ItemIndex
        from schemas.logic.covisitation import CoVisitation
        from schemas.logic.model_inputs import ScoreScale, Vocabulary
        from schemas.logic.served_models import DinRanker, UserTower

        self.directory = directory
        self.manifest = verify(directory)
        hyperparameters = self.manifest.hyperparameters
        if hyperparameters is None:
            raise BundleError(f"{directory}: the manifest records no hyperparameters")
        self.sequence_length = self.manifest.feature_spec.sequence_length
        self.ranker_behaviours = min(hyperparameters.ranker_behaviours, self.sequence_length)
        self.vocabulary = Vocabulary.from_json((directory / VOCABULARY).read_bytes())
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

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def added_items(self) -> int:
        return len(self.added_index) if self.added_index else 0

    def with_items(self, catalogue: Iterable[CatalogueItem], withdrawn: Iterable[str] = ()) -> "LoadedBundle":
        """This bundle with the catalogue's items it does not know yet, embedded from their content
        (`schemas.logic.served_models`) and added to the index: retrievable, rankable (no
        interactions, no co-visitation) and with similar items; with the items it knows whose
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
        if not newest and not changed and still_withdrawn == self.withdrawn:
            return self
        grown = copy.copy(self)
        grown.withdrawn = frozenset(still_withdrawn)
        grown._withdrawn_rows = self.vocabulary.item_indices(grown.withdrawn) - FIRST_ITEM  # known items only
        if changed:
            grown._change_content(changed)
        if newest:
            grown._add(newest)
        return grown

    def _changed(self, known: list[CatalogueItem]) -> list[CatalogueItem]:
        """The items of `known` whose rows were built from other content than theirs now."""
        from schemas.logic.model_inputs import item_content

        if not known:
            return []
        genres, years = item_content(self.vocabulary, known)
        differs = self._user_tower.content_differs(
            self.vocabulary.item_indices(i.item_id for i in known), genres, years
        )
        return [item for item, changed in zip(known, differs, strict=True) if changed]

    def _change_content(self, changed: list[CatalogueItem]) -> None:
        """Give the items of `changed` their new content (only on a fresh copy: this writes it)."""
        from schemas.logic.model_inputs import FIRST_ITEM, item_content

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
        from schemas.logic.ann import ItemIndex
        from schemas.logic.growing import appended
        from schemas.logic.model_inputs import item_content

        ids = [item.item_id for item in newest]
        genres, years = item_content(self.vocabulary, newest)
        self._user_tower, vectors = self._user_tower.with_items(genres, years)
        self._ranker = self._ranker.with_items(genres, years)
        self.vocabulary = self.vocabulary.extended(ids)
        self.index = self.index.with_items(vectors, ids)
        self.added_index = (
            self.added_index.with_items(vectors, ids)
            if self.added_index
            else ItemIndex(self.index.exact_max_items).index(vectors, ids)
        )
        self.embeddings = appended(self.embeddings, vectors)
        self._unit_vectors = appended(self._unit_vectors, _unit(vectors))
        self.popularity = appended(self.popularity, np.zeros(len(newest), self.popularity.dtype))

    def user_vectors(self, sequences: SequenceArrays) -> np.ndarray:
        """-> [B, d] float32."""
        return self._user_tower(sequences.items, sequences.kinds, sequences.ages)

    def score(self, sequences: SequenceArrays, candidates, features, pairs):
        """candidates [B, M] int32, features [B, M, F], pairs [B, M, N] float32 ->
        (scores [B, M], attention [B, M, N] over the newest N = ranker_behaviours behaviours)."""
        return self._ranker(sequences.items, sequences.kinds, sequences.ages, candidates, features, pairs)

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None:
        """The k items whose retrieval vectors point most nearly the way `item_id`'s does (cosine),
        best first, withdrawn items left out; None for an unknown or withdrawn item. Cosine rather
        than the inner product retrieval uses: the vectors' lengths carry popularity, which would
        put the most popular items next to every item."""
        row = int(self.vocabulary.item_indices([item_id])[0]) - FIRST_ITEM
        if row < 0 or item_id in self.withdrawn:
            return None
        similarity = self._unit_vectors @ self._unit_vectors[row]
        similarity[row] = -np.inf
        similarity[self._withdrawn_rows] = -np.inf
        best = np.argpartition(-similarity, min(k, len(similarity) - 1))[:k]
        best = best[np.argsort(-similarity[best], kind="stable")]
        return [(self.vocabulary.item_ids[n], float(similarity[n])) for n in best if np.isfinite(similarity[n])]
