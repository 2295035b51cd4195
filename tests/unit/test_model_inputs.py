"""How states and the catalogue become model inputs (shared by training and serving)."""

import math

import numpy as np

from schemas.catalogue import validate_catalogue_item
from schemas.features import UserFeatures
from schemas.model_inputs import (
    EVENT_TYPES,
    FIRST_ITEM,
    PADDING,
    UNKNOWN_ITEM,
    Vocabulary,
    behaviour_kind,
    hour_of_day,
    item_tables,
    sequence_arrays,
    user_feature_vector,
    year_bucket,
)


def item(item_id: str, genres: list[str], year: int | None = None):
    payload = {"item_id": item_id, "title": item_id, "genres": genres, "updated_at": 1_700_000_000_000}
    return validate_catalogue_item(payload | ({"year": year} if year else {}))


CATALOGUE = {i.item_id: i for i in (item("m2", ["Drama"], 1999), item("m1", ["Comedy", "Drama"]), item("m3", []))}
VOCABULARY = Vocabulary.of(CATALOGUE.values())


def test_vocabulary_indexes_items_after_the_reserved_ones_and_round_trips():
    assert VOCABULARY.item_ids == ("m1", "m2", "m3") and VOCABULARY.genres == ("Comedy", "Drama")
    assert VOCABULARY.item_indices(["m1", "m3", "nope"]).tolist() == [FIRST_ITEM, FIRST_ITEM + 2, UNKNOWN_ITEM]
    assert Vocabulary.from_json(VOCABULARY.to_json()) == VOCABULARY
    assert VOCABULARY.item_id(FIRST_ITEM + 1) == "m2"


def test_item_tables_hold_genre_indices_and_year_buckets_per_item_index():
    genres, years = item_tables(VOCABULARY, CATALOGUE)

    assert genres.shape == (VOCABULARY.size, 8)
    assert genres[FIRST_ITEM, :3].tolist() == [1, 2, 0]  # m1: Comedy, Drama
    assert genres[FIRST_ITEM + 1, :2].tolist() == [2, 0]  # m2: Drama
    assert years[FIRST_ITEM + 1] == year_bucket(1999) == (1999 - 1900) // 5 + 1
    assert years[FIRST_ITEM] == 0 and not genres[PADDING].any()


def test_sequences_keep_the_newest_entries_left_padded_with_their_behaviour_kinds():
    sequences = [[("m1", "click", None)], [("m1", "rating", 1.0), ("m2", "rating", 4.5), ("m3", "play", None)]]

    items, kinds = sequence_arrays(VOCABULARY, sequences, length=2)

    assert items.tolist() == [[PADDING, FIRST_ITEM], [FIRST_ITEM + 1, FIRST_ITEM + 2]]
    assert kinds[0].tolist() == [0, 1 + EVENT_TYPES.index("click")]
    assert kinds[1].tolist() == [behaviour_kind("rating", 4.5), 1 + EVENT_TYPES.index("play")]
    assert behaviour_kind("rating", 0.5) == 1 + len(EVENT_TYPES)
    assert behaviour_kind("rating", 5.0) == 1 + len(EVENT_TYPES) + 9


def test_user_features_from_the_stored_user_features():
    stored = UserFeatures(event_counts={"rating": 3, "click": 1}, rating_count=3, rating_sum=10.5)

    assert user_feature_vector(stored) == [math.log1p(4), 10.5 / 3 - 3.0, 1.0]
    assert user_feature_vector(None) == [0.0, 0.0, 0.0]


def test_hour_of_day_is_utc():
    assert hour_of_day([0, 3_600_000 * 25 + 5]).tolist() == [0, 1]
    assert hour_of_day([]).dtype == np.int32
