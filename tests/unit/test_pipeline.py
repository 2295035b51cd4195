"""The served pipeline's per-request logic, with a hand-made recommender (the real one is tested in integration)."""

from collections import Counter

import numpy as np
import pytest

from schemas.catalogue import validate_catalogue_item
from schemas.events import EventType
from schemas.features import SequenceEntry
from schemas.runtime.ann import ItemIndex
from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.model_inputs import RANKER_FEATURES, ScoreScale, Vocabulary
from schemas.runtime.pipeline import RankRequest, covisitation_damping, fallback_items, rank_batch

ITEMS = ["a", "b", "c", "d", "e"]
NEW = ["n1", "n2", "n3"]
NEW_VECTORS = np.array([[0.2, 0.8], [0.65, 0.35], [0.4, 0.6]], np.float32)
"""Items added since training, scored 0.2, 0.65 and 0.4 by the user vector [1, 0]."""


class HandMadeRecommender:
    """Item vectors on a line, so the user vector [1, 0] ranks a > b > c > d > e; the ranker favours e."""

    sequence_length = ranker_behaviours = 4

    def __init__(self):
        self.vocabulary = Vocabulary.of(
            validate_catalogue_item({"item_id": i, "title": i, "updated_at": 1_700_000_000_000}) for i in ITEMS
        )
        self.embeddings = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], np.float32)
        self.index = ItemIndex(100).index(self.embeddings, ITEMS)
        self.score_scale = ScoreScale.of(self.embeddings)
        self.covisitation = CoVisitation(self.vocabulary.size, np.zeros(0, np.int64), np.zeros(0, np.float32))
        self.popularity = np.zeros(self.vocabulary.size, np.float32)
        self.added_index: ItemIndex | None = None
        self.scored: list[list[str]] = []
        self.features: list[np.ndarray] = []
        self.pairs: list[np.ndarray] = []

    @property
    def covisitation_damping(self) -> np.ndarray:  # the tests change popularity and covisitation as they go
        return covisitation_damping(self.popularity, self.covisitation.size)

    def user_vectors(self, sequences):
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(sequences.items), 1))

    def score(self, sequences, candidates, features, pairs):
        rows = [[self.vocabulary.item_id(int(index)) if index else "" for index in row] for row in candidates]
        self.scored.extend(rows)
        self.features.append(features)
        self.pairs.append(pairs)
        scores = np.array(
            [[(ITEMS + NEW).index(item) / 10 if item else 9.0 for item in ids] for ids in rows], np.float32
        )
        attention = np.zeros((*candidates.shape, 4), np.float32)
        attention[:, :, 3] = 0.9  # the newest behaviour, as much for every candidate
        attention[:, :, 2] = 0.2 + 0.3 * np.arange(candidates.shape[1])  # the one before: more for each next candidate
        attention[:, :, 1] = -0.4  # negative, as DIN's unnormalised weights mostly are, and as much for every candidate
        attention[:, :, 0] = 5.0  # padding position when the sequence is short: must never be a reason
        return scores, attention[:, :, -self.ranker_behaviours :]


def clicks(*items: str) -> list[SequenceEntry]:
    return [SequenceEntry(f"e{n}", item, EventType.CLICK, 1_000 * n) for n, item in enumerate(items)]


def request(behaviours, trending=(), exclude=(), k=2, candidates=2, explain=0, new_items=0, covisited=0):
    return RankRequest(
        "u", behaviours, None, 10_000, list(trending), set(exclude), k, candidates, explain, new_items, covisited
    )


def with_new_items(recommender: HandMadeRecommender) -> HandMadeRecommender:
    """The new items added as `LoadedBundle.with_items` adds them: everywhere, and in `added_index`."""
    recommender.vocabulary = recommender.vocabulary.extended(NEW)
    recommender.embeddings = np.concatenate([recommender.embeddings, NEW_VECTORS])
    recommender.index = recommender.index.with_items(NEW_VECTORS, NEW)
    recommender.added_index = ItemIndex(100).index(NEW_VECTORS, NEW)
    recommender.popularity = np.zeros(recommender.vocabulary.size, np.float32)
    return recommender


def test_each_request_ranks_its_nearest_new_items_besides_its_neighbours_each_once_excluded_ones_left_out():
    recommender = with_new_items(HandMadeRecommender())
    sequence = clicks("a")
    asked = [request(sequence, candidates=2, new_items=2, exclude={"n2"}), request(sequence, candidates=2),
             request(sequence, candidates=7, new_items=2), request(sequence, candidates=2, new_items=1)]  # fmt: skip

    rank_batch(recommender, asked)

    assert recommender.scored == [
        ["a", "b", "n3", "n1", "", "", ""],  # n2 excluded: the next two new items
        ["a", "b", "", "", "", "", ""],  # new_items 0
        ["a", "b", "c", "d", "n2", "e", "n3"],  # the two nearest new items are neighbours already
        ["a", "b", "n2", "", "", "", ""],
    ]


def with_covisitation(recommender: HandMadeRecommender, counts: dict[tuple[str, str], float]) -> HandMadeRecommender:
    size, index = recommender.vocabulary.size, recommender.vocabulary.item_indices
    keys = Counter({int(index([a])[0]) * size + int(index([b])[0]): count for (a, b), count in counts.items()})
    recommender.covisitation = CoVisitation.of_counts(size, keys)
    return recommender


def test_the_pool_adds_the_items_that_most_often_followed_the_newest_behaviours_weighted_as_documented():
    # a then b (the newest): a's followers count 0.8 times theirs, b's once, each sum divided by
    # (popularity + 1) ** 0.25. d: 0.8 · 5 = 4.0, e: 4.5, c: 0.8 · 10 = 8.0 but excluded.
    recommender = with_covisitation(HandMadeRecommender(), {("a", "d"): 5, ("b", "e"): 4.5, ("a", "c"): 10})
    asked = request(clicks("a", "b"), exclude={"a", "b", "c"}, candidates=1, covisited=1)

    rank_batch(recommender, [asked, request(clicks("a", "b"), exclude={"a", "b", "c"}, candidates=1)])
    recommender.popularity[recommender.vocabulary.item_indices(["e"])] = 15  # e: 4.5 / 16 ** 0.25 = 2.25 < 4.0
    rank_batch(recommender, [asked])

    assert recommender.scored == [["d", "e"], ["d", ""], ["d"]]  # d: the neighbour; e: co-visited, then not


def test_candidates_merge_neighbours_and_trending_without_excluded_items_and_rank_by_score():
    recommender = HandMadeRecommender()

    [ranked] = rank_batch(recommender, [request(clicks("a", "b", "c"), [("e", 3.0), ("b", 2.0), ("a", 1.0)], {"a"})])

    assert recommender.scored == [["b", "c", "e"]]  # two neighbours after excluding a, then trending, deduplicated
    assert [item.item_id for item in ranked.items] == ["e", "c"]
    assert [item.score for item in ranked.items] == pytest.approx([0.4, 0.2]) and ranked.candidates == 3


def test_the_ranker_reads_each_candidates_trending_popularity_and_standardised_retrieval_score():
    recommender = HandMadeRecommender()

    rank_batch(recommender, [request(clicks("a"), [("e", 4.0)], k=3, candidates=2)])

    features = recommender.features[0][0]
    column = {name: n for n, name in enumerate(RANKER_FEATURES)}
    assert features[:, column["in_trending"]].tolist() == [0.0, 0.0, 1.0]  # a, b, then e from trending
    assert features[2, column["trending_score"]] == pytest.approx(2.0)  # log2 of 4
    scores = np.array([1.0, 0.9, 0.6])  # u·v of a, b, e; the catalogue's scores have mean 0.8, variance 0.02
    assert features[:, column["retrieval_score"]] == pytest.approx((scores - 0.8) / np.sqrt(0.02), rel=1e-5)


def test_reasons_are_the_behaviours_an_items_attention_lifts_most_above_the_pools():
    recommender = HandMadeRecommender()
    behaviours = clicks("x", "y", "z")  # positions 1, 2, 3; the pool is d then e

    [ranked] = rank_batch(recommender, [request(behaviours, exclude={"a", "b", "c"}, k=2, explain=2)])
    [unexplained] = rank_batch(recommender, [request(behaviours, exclude={"a", "b", "c"}, k=2, explain=1)])

    # y gets 0.2 from d and 0.5 from e (pool mean 0.35): lifts +0.15 for e, -0.15 for d; x and z are
    # lifted by 0 for both, the newer z first
    assert [(item.item_id, item.reasons) for item in ranked.items] == [("e", ("y", "z", "x")), ("d", ("z", "x", "y"))]
    assert unexplained.items[1].reasons == ()  # only the first `explain` items carry reasons


def test_a_batch_ranks_each_request_as_alone_with_short_pools_padded_and_the_padding_never_ranked():
    wide = request(clicks("a"), [("e", 1.0)], k=3, candidates=4)
    narrow = request(clicks("b"), exclude={"a", "b", "c"}, k=3, candidates=1)
    recommender = HandMadeRecommender()

    batch = rank_batch(recommender, [wide, narrow])

    assert recommender.scored == [["a", "b", "c", "d", "e"], ["d", "", "", "", ""]]  # one call, the narrow one padded
    alone = [rank_batch(HandMadeRecommender(), [one])[0] for one in (wide, narrow)]
    assert [ranked.items for ranked in batch] == [ranked.items for ranked in alone]
    assert [item.item_id for item in batch[1].items] == ["d"] and batch[1].candidates == 1


class NewestTwoRecommender(HandMadeRecommender):
    ranker_behaviours = 2


def test_the_ranker_gets_the_pair_counts_of_its_newest_behaviours_and_its_features_count_further_back():
    recommender = NewestTwoRecommender()
    size, (a, c, e) = recommender.vocabulary.size, recommender.vocabulary.item_indices(["a", "c", "e"])
    recommender.covisitation = CoVisitation.of_counts(size, Counter({a * size + e: 3, c * size + e: 5}))

    rank_batch(recommender, [request(clicks("a", "b", "c"), [("e", 1.0)], exclude={"a", "b", "c"}, candidates=1)])

    # the pool is d (retrieved) then e (trending); the ranker attends over b and c, the newest two
    np.testing.assert_allclose(recommender.pairs[0][0], [[0.0, 0.0], [0.0, np.log(6.0)]], rtol=1e-6)
    column = {name: n for n, name in enumerate(RANKER_FEATURES)}
    assert recommender.features[0][0, 1, column["covisitation_newest_1"]] == pytest.approx(np.log(6.0))  # c: 5
    assert recommender.features[0][0, 1, column["covisitation_newest_5"]] == pytest.approx(np.log(9.0))  # a + c: 8


def test_the_fallback_answers_trending_then_popular_each_item_once_and_nothing_seen():
    assert fallback_items(["t1", "b", "t2"], ["b", "p1", "t1", "p2", "p3"], {"t2", "p1"}, 4) == ["t1", "b", "p2", "p3"]
    assert fallback_items([], ["p1"], set(), 3) == ["p1"]
