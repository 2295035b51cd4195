"""The per-request ranking logic, with a hand-made bundle (the real one is tested in integration)."""

from types import SimpleNamespace

import numpy as np
import pytest

from schemas.ann import ItemIndex
from schemas.catalogue import validate_catalogue_item
from schemas.features import FeatureSpec
from schemas.model_inputs import Vocabulary
from serving.recommend import RankRequest, rank_batch

ITEMS = ["a", "b", "c", "d", "e"]


class HandMadeBundle:
    """Item vectors on a line, so the user vector [1, 0] ranks a > b > c > d > e; DIN scores favour e."""

    def __init__(self):
        self.vocabulary = Vocabulary.of(
            validate_catalogue_item({"item_id": i, "title": i, "updated_at": 1_700_000_000_000}) for i in ITEMS
        )
        vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]], np.float32)
        self.index = ItemIndex(100).index(vectors, ITEMS)
        self.manifest = SimpleNamespace(feature_spec=FeatureSpec(sequence_length=4))
        self.scored: list[list[str]] = []

    def user_vectors(self, sequence, kinds, user_features):
        return np.tile(np.array([[1.0, 0.0]], np.float32), (len(sequence), 1))

    def score(self, sequence, kinds, candidates, user_features, hour):
        rows = [[self.vocabulary.item_id(int(index)) if index else "" for index in row] for row in candidates]
        self.scored.extend(rows)
        scores = np.array([[ITEMS.index(item) / 10 if item else 9.0 for item in ids] for ids in rows], np.float32)
        attention = np.zeros((*candidates.shape, 4), np.float32)
        attention[:, :, 3] = 0.9  # newest behaviour
        attention[:, :, 2] = 0.5
        attention[:, :, 0] = 5.0  # padding position when the sequence is short: must never be a reason
        return scores, attention


def test_candidates_merge_neighbours_and_trending_without_excluded_items_and_rank_by_score():
    bundle = HandMadeBundle()
    behaviours = [("a", "click", None), ("b", "click", None), ("c", "click", None)]

    [ranked] = rank_batch(bundle, [RankRequest(behaviours, None, 0, ["e", "b", "a"], {"a"}, k=2, candidates=2)])

    assert bundle.scored == [["b", "c", "e"]]  # two neighbours after excluding a, then trending, deduplicated
    assert [item.item_id for item in ranked.items] == ["e", "c"]
    assert [item.score for item in ranked.items] == pytest.approx([0.4, 0.2]) and ranked.candidates == 3


def test_reasons_are_the_most_attended_real_behaviours_newest_position_mapped_to_its_item():
    bundle = HandMadeBundle()
    behaviours = [("a", "click", None), ("b", "click", None), ("c", "click", None)]  # positions 1, 2, 3

    [ranked] = rank_batch(bundle, [RankRequest(behaviours, None, 0, [], set(), k=1, candidates=3)])

    assert ranked.items[0].reasons == ("c", "b")  # 0.9 at the newest (c), 0.5 before it (b); padding ignored


def test_a_batch_ranks_each_request_as_alone_with_short_pools_padded_and_the_padding_never_ranked():
    bundle = HandMadeBundle()
    wide = RankRequest([("a", "click", None)], None, 0, ["e"], set(), k=3, candidates=4)
    narrow = RankRequest([("b", "click", None)], None, 0, [], {"a", "b", "c"}, k=3, candidates=1)

    batch = rank_batch(bundle, [wide, narrow])

    assert bundle.scored == [["a", "b", "c", "d", "e"], ["d", "", "", "", ""]]  # one call, the narrow row padded
    alone = [rank_batch(HandMadeBundle(), [request])[0] for request in (wide, narrow)]
    assert [ranked.items for ranked in batch] == [ranked.items for ranked in alone]
    assert [item.item_id for item in batch[1].items] == ["d"] and batch[1].candidates == 1
