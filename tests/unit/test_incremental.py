"""Incremental retraining's pieces: weights carried over a grown vocabulary, the vocabulary grown,
and when the live version may be continued."""

import numpy as np
import orjson
import pytest

from schemas.bundle import CURRENT, MANIFEST, VOCABULARY, Manifest, Registry
from schemas.catalogue import validate_catalogue_item
from schemas.config import Settings
from schemas.runtime.model_inputs import MAX_GENRES, Vocabulary
from training import __main__ as trainer
from training.incremental import Continuation, continuable
from training.layers import ItemEmbedding
from training.models import continue_from
from training.pipeline import RANKER_WEIGHTS, RETRIEVAL_WEIGHTS, quick
from training.retraining import Outcome

DAY_MS = 86_400_000


def embedding(items: int, genres: list[list[int]]) -> ItemEmbedding:
    """An item embedding over `items` rows (ids 2-dimensional), built."""
    table = np.zeros((items, MAX_GENRES), np.int32)
    for row, known in enumerate(genres):
        table[row, : len(known)] = known
    layer = ItemEmbedding(table, np.zeros(items, np.int32), genre_count=2, id_dim=2)
    layer.build((None,))
    return layer


def test_continuing_copies_every_weight_grows_item_rows_and_keeps_todays_tables():
    trained = embedding(3, [[1], [2], [1, 2]])
    trained.ids.embeddings.assign([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    trained.genres.embeddings.assign(np.full((3, 8), 7.0))
    grown = embedding(4, [[2], [2], [1, 2], [1]])  # a 4th item; item 0's genre changed in the catalogue
    fresh_row = grown.ids.embeddings.numpy()[3].copy()

    continue_from(grown, trained, trained_items=3)

    assert grown.ids.embeddings.numpy()[:3].tolist() == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert grown.ids.embeddings.numpy()[3].tolist() == fresh_row.tolist()
    assert (grown.genres.embeddings.numpy() == 7.0).all()
    assert grown.genre_lookup.numpy()[:, 0].tolist() == [2, 2, 1, 1]


def test_continuing_refuses_weights_that_do_not_fit():
    with pytest.raises(ValueError, match="does not continue"):
        continue_from(embedding(2, []), embedding(3, []), trained_items=3)


def item(item_id: str):
    return validate_catalogue_item(
        {"item_id": item_id, "title": item_id, "updated_at": 1_700_000_000_000, "genres": ["Drama"]}
    )


def test_the_vocabulary_grows_by_appending_new_items_so_known_ones_keep_their_index():
    live = Continuation(None, None, Vocabulary(("m", "b"), ("Comedy",)))  # type: ignore[arg-type]

    grown = live.vocabulary_with({name: item(name) for name in ("z", "b", "a", "m")})

    assert grown == Vocabulary(("m", "b", "a", "z"), ("Comedy",))
    assert grown.item_indices(["m", "b", "a", "z"]).tolist() == [2, 3, 4, 5]


def live(settings: Settings, created_at: int, files=(RETRIEVAL_WEIGHTS, RANKER_WEIGHTS), **manifest) -> Registry:
    registry = Registry(settings.stack.models_dir)
    directory = registry.path(1)
    directory.mkdir(parents=True)
    fields = {"hyperparameters": settings.training.model, "feature_spec": settings.pipeline.features}
    written = Manifest(version=1, created_at=created_at, trained_until=0, **(fields | manifest))
    (directory / MANIFEST).write_bytes(written.model_dump_json().encode())
    (directory / VOCABULARY).write_bytes(Vocabulary(("a",), ()).to_json())
    for name in files:
        (directory / name).write_bytes(b"weights")
    (registry.root / CURRENT).write_text("v000001\n")
    return registry


def test_the_live_version_is_continued_until_its_from_scratch_run_is_a_day_old(tmp_path):
    settings = Settings(run_dir=tmp_path)
    registry = live(settings, created_at=10 * DAY_MS, from_scratch_at=9 * DAY_MS + 1)

    assert isinstance(continuable(settings, registry, now_ms=10 * DAY_MS), Continuation)
    assert "old (KF_FULL_RETRAIN_EVERY_S 86400)" in continuable(settings, registry, now_ms=10 * DAY_MS + 1)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"hyperparameters": quick(Settings()).training.model}, "other hyperparameters"),
        ({"files": (RETRIEVAL_WEIGHTS,)}, f"has no {RANKER_WEIGHTS}"),
        ({"feature_spec": Settings().pipeline.features.model_copy(update={"sequence_length": 7})}, "feature"),
    ],
)
def test_a_live_version_trained_otherwise_is_not_continued(tmp_path, change, reason):
    settings = Settings(run_dir=tmp_path)
    registry = live(settings, created_at=0, **change)

    assert reason in continuable(settings, registry, now_ms=1)


def test_a_live_version_from_before_the_attention_width_was_recorded_is_not_continued(tmp_path):
    settings = Settings(run_dir=tmp_path)
    registry = live(settings, created_at=0)
    written = orjson.loads((registry.path(1) / MANIFEST).read_bytes())
    del written["hyperparameters"]["ranker_attention_width"]  # such manifests' DIN had 36 hidden units
    (registry.path(1) / MANIFEST).write_bytes(orjson.dumps(written))

    assert settings.training.model.ranker_attention_width != 36
    assert "other hyperparameters" in continuable(settings, registry, now_ms=1)


def test_with_no_live_version_a_run_starts_from_scratch(tmp_path):
    assert continuable(Settings(run_dir=tmp_path), Registry(tmp_path / "none")) == "no live version"


@pytest.mark.parametrize(
    ("outcome", "code"),
    [
        (Outcome(2, True, "published: ..."), 0),
        (Outcome(2, False, "refused: ..."), 2),
        (Outcome(1, False, "skipped: 12 sample rows since live v1's data", skipped=True), 3),
    ],
)
def test_the_trainers_exit_code_tells_published_refused_and_skipped_apart(monkeypatch, capsys, outcome, code):
    asked = []
    monkeypatch.setattr(trainer, "load", lambda settings, source, events: None)
    monkeypatch.setattr(trainer, "train_once", lambda settings, data, **options: asked.append(options) or outcome)

    assert trainer.main(["--incremental", "--no-progress"]) == code
    assert asked[0]["incremental"] and capsys.readouterr().out == outcome.verdict + "\n"
