"""Warm starts copy what still fits from the previous version's models."""

import numpy as np

from schemas.catalogue import validate_catalogue_item
from schemas.model_inputs import FIRST_ITEM, Vocabulary
from training.fit import warm_start
from training.models import ItemTables, TwoTower


def vocabulary(*item_ids: str) -> Vocabulary:
    return Vocabulary.of(
        validate_catalogue_item({"item_id": i, "title": i, "updated_at": 1_700_000_000_000}) for i in item_ids
    )


def two_tower(vocab: Vocabulary) -> TwoTower:
    tables = ItemTables(np.zeros((vocab.size, 8), np.int32), np.zeros(vocab.size, np.int32), 1, 4)
    model = TwoTower(tables, dim=4, name="two_tower")
    length = 3
    model({"sequence": np.zeros((1, length), np.int32), "kinds": np.zeros((1, length), np.int32),
           "user_features": np.zeros((1, 3), np.float32), "item": np.array([FIRST_ITEM], np.int32)})  # fmt: skip
    return model


def test_item_rows_follow_their_ids_and_same_shaped_weights_are_copied():
    old_vocabulary, new_vocabulary = vocabulary("a", "b", "c"), vocabulary("b", "c", "d", "e")
    old, new = two_tower(old_vocabulary), two_tower(new_vocabulary)
    old_ids = old.items.ids.embeddings.numpy()
    fresh_rows = new.items.ids.embeddings.numpy()

    copied = warm_start(new, old, new_vocabulary, old_vocabulary)

    rows = new.items.ids.embeddings.numpy()
    index = {item: n for n, item in enumerate(new_vocabulary.item_ids, start=FIRST_ITEM)}
    old_index = {item: n for n, item in enumerate(old_vocabulary.item_ids, start=FIRST_ITEM)}
    np.testing.assert_array_equal(rows[index["b"]], old_ids[old_index["b"]])
    np.testing.assert_array_equal(rows[index["c"]], old_ids[old_index["c"]])
    np.testing.assert_array_equal(rows[index["d"]], fresh_rows[index["d"]])  # new item: its own initial row
    np.testing.assert_array_equal(new.user_mlp.get_weights()[0], old.user_mlp.get_weights()[0])
    assert copied >= 5
