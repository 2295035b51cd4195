"""Model bundles and the registry that holds them: the contract between training and serving.

A bundle is a directory `v000042/` holding the exported models (the sequential user tower and the
DIN ranker), the item vectors and their Faiss index, the vocabulary, the item tables the ranker's
features read (interaction counts, co-visitation), the evaluation report and `manifest.json`,
which records the SHA-256 of every other file. A reader verifies every checksum (and that no file
was added) before it loads anything; nothing in a bundle is a pickle. The registry directory holds
the versions and a `CURRENT` file naming the live one, replaced atomically. Publishing announces a
`ModelUpdate` on the `model-updates` topic; serving follows that and polls `CURRENT` as a backstop.
"""

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.experiments import Experiment
from schemas.features import FeatureSpec
from schemas.hyperparameters import Hyperparameters
from schemas.validation import ContractRecord

BUNDLE_FORMAT = 6
"""6: the manifest's feature spec is the stream's, with the settings' fields (no version of its
own); 5: the served models carry their item embeddings' genre and year tables, from which the
service embeds items published after training (4: the served models are arrays (`SERVED_MODELS`) that
NumPy runs, not TensorFlow SavedModels; 3: the ranker attends over the newest
`Hyperparameters.ranker_behaviours` behaviours; 2 attended over the whole sequence and brought the
sequential user tower over items, kinds and ages and the ranker's candidate features and
co-visitation pairs; 1 had a mean-pooled user tower)."""
ATTENTION_WIDTH_BEFORE_IT_WAS_RECORDED = 36
"""DIN's activation unit had 36 hidden units in every bundle whose manifest lacks `ranker_attention_width`."""
MANIFEST = "manifest.json"
CURRENT = "CURRENT"
EXPERIMENT = "EXPERIMENT.json"
SERVED_MODELS = "served_models.npz"
"""The user tower's and the ranker's arrays (`training.export`), run by `schemas.runtime.served_models`,
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

    bundle_format: Literal[6] = BUNDLE_FORMAT
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

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _attention_width_before_it_was_recorded(cls, recorded: Any) -> Any:
        # Read with today's default, such a manifest would claim a width its DIN does not have, and an
        # incremental run would try to continue it.
        if isinstance(recorded, dict) and "ranker_attention_width" not in recorded:
            return recorded | {"ranker_attention_width": ATTENTION_WIDTH_BEFORE_IT_WAS_RECORDED}
        return recorded


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


def _replace_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(content)
    try:
        temporary.replace(path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
