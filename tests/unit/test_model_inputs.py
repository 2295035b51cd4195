"""How states and the catalogue become model inputs (shared by training and serving)."""

import math

import numpy as np
import pytest

from schemas.catalogue import validate_catalogue_item
from schemas.events import EventType
from schemas.features import SequenceEntry, UserFeatures
from schemas.runtime.model_inputs import (
    EVENT_TYPES,
    FIRST_ITEM,
    PADDING,
    UNKNOWN_ITEM,
    ScoreScale,
    Vocabulary,
    behaviour_kind,
    hour_of_day,
    item_content,
    item_tables,
    ranker_features,
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


def test_an_extended_vocabulary_keeps_every_index_and_puts_new_items_after_them():
    VOCABULARY.item_indices(["m1"])  # its lookup built, which the extended one starts from
    grown = VOCABULARY.extended(["n1", "n2"])

    assert grown.item_indices(["m1", "m3", "n1", "n2", "nope"]).tolist() == [2, 4, 5, 6, UNKNOWN_ITEM]
    assert grown.size == VOCABULARY.size + 2 and grown.item_id(6) == "n2" and grown.genres == VOCABULARY.genres
    assert "n1" in grown and "n1" not in VOCABULARY and VOCABULARY.item_indices(["n1"]).tolist() == [UNKNOWN_ITEM]


def test_new_items_content_rows_equal_the_item_tables_rows_and_leave_out_unknown_genres():
    genres, years = item_content(VOCABULARY, [CATALOGUE["m1"], item("n1", ["Western", "Drama"], 1999), None])
    table_genres, table_years = item_tables(VOCABULARY, CATALOGUE)

    assert genres[0].tolist() == table_genres[FIRST_ITEM].tolist() and years[0] == table_years[FIRST_ITEM]
    assert genres[1, :2].tolist() == [2, 0] and years[1] == year_bucket(1999)  # Western: not in the vocabulary
    assert not genres[2].any() and years[2] == 0


def entry(item: str, kind: str, ts: int, value: float | None = None) -> SequenceEntry:
    return SequenceEntry(f"{item}-{ts}", item, EventType(kind), ts, value)


def test_sequences_keep_the_newest_entries_left_padded_with_their_behaviour_kinds_and_ages():
    sequences = [[entry("m1", "click", 1_000)], [entry("m1", "rating", 0, 1.0), entry("m2", "rating", 2_000, 4.5),
                                                 entry("m3", "play", 9_500)]]  # fmt: skip

    items, kinds, ages = sequence_arrays(VOCABULARY, sequences, [61_000, 10_000], length=2)

    assert items.tolist() == [[PADDING, FIRST_ITEM], [FIRST_ITEM + 1, FIRST_ITEM + 2]]
    assert ages.tolist() == [[0.0, 60.0], [8.0, 0.5]]  # seconds before each sequence's moment
    assert kinds[0].tolist() == [0, 1 + EVENT_TYPES.index("click")]
    assert kinds[1].tolist() == [behaviour_kind("rating", 4.5), 1 + EVENT_TYPES.index("play")]
    assert behaviour_kind("rating", 0.5) == 1 + len(EVENT_TYPES)
    assert behaviour_kind("click", None) == behaviour_kind(EventType.CLICK, None) == 1 + EVENT_TYPES.index("click")
    assert behaviour_kind("rating", 5.0) == 1 + len(EVENT_TYPES) + 9


def test_user_features_from_the_stored_user_features():
    stored = UserFeatures(event_counts={"rating": 3, "click": 1}, rating_count=3, rating_sum=10.5)

    assert user_feature_vector(stored) == [math.log1p(4), 10.5 / 3 - 3.0, 1.0]
    assert user_feature_vector(None) == [0.0, 0.0, 0.0]


def test_hour_of_day_is_utc():
    assert hour_of_day([0, 3_600_000 * 25 + 5]).tolist() == [0, 1]
    assert hour_of_day([]).dtype == np.int32


def test_score_scale_standardises_a_users_scores_over_the_whole_catalogue():
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]])
    user = np.array([[2.0, 1.0]])

    standardised = ScoreScale.of(vectors).standardised(np.array([[5.0, 1.0]]), user)

    catalogue = vectors @ user[0]  # 2, 1, 3, 5
    assert standardised[0] == pytest.approx((np.array([5.0, 1.0]) - catalogue.mean()) / catalogue.std(), rel=1e-5)


def test_ranker_features_sum_co_visitation_over_the_newest_behaviours_and_mark_trending_items():
    pairs = np.zeros((1, 2, 25), np.float32)
    pairs[0, 0, -1], pairs[0, 0, -3], pairs[0, 0, 0] = 2.0, 1.0, 7.0  # the newest, the third newest, the oldest

    features = ranker_features(np.array([[0.5, -1.0]]), pairs, np.array([[9.0, 0.0]]), np.array([[8.0, 0.0]]),
                               np.array([[1.0, 0.2, 1.0]]))[0]  # fmt: skip

    assert features[0].tolist() == pytest.approx([0.5, np.log(3), np.log(4), np.log(4), np.log(10), 3.0, 1.0,
                                                  1.0, 0.2, 1.0])  # fmt: skip
    assert features[1, 1:7].tolist() == [0.0] * 6  # no co-visitation, no interactions, not trending
