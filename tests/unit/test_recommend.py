"""The per-request ranking logic, with a hand-made bundle (the real one is tested in integration)."""

from types import SimpleNamespace

import numpy as np
import pytest

from schemas.ann import ItemIndex
from schemas.catalogue import validate_catalogue_item
from schemas.features import FeatureSpec
from schemas.model_inputs import Vocabulary
from serving.recommend import rank_for_user

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
        return np.array([[1.0, 0.0]], np.float32)

    def score(self, sequence, kinds, candidates, user_features, hour):
        ids = [self.vocabulary.item_id(int(index)) for index in candidates[0]]
        self.scored.append(ids)
        scores = np.array([[ITEMS.index(item) / 10 for item in ids]], np.float32)  # later letters score higher
        attention = np.zeros((1, len(ids), 4), np.float32)
        attention[0, :, 3] = 0.9  # newest behaviour
        attention[0, :, 2] = 0.5
        attention[0, :, 0] = 5.0  # padding position when the sequence is short: must never be a reason
        return scores, attention


def test_candidates_merge_neighbours_and_trending_without_excluded_items_and_rank_by_score():
    bundle = HandMadeBundle()
    behaviours = [("a", "click", None), ("b", "click", None), ("c", "click", None)]

    ranked = rank_for_user(bundle, behaviours, None, 0, trending=["e", "b", "a"], exclude={"a"}, k=2, candidates=2)

    assert bundle.scored == [["b", "c", "e"]]  # two neighbours after excluding a, then trending, deduplicated
    assert [item.item_id for item in ranked.items] == ["e", "c"]
    assert [item.score for item in ranked.items] == pytest.approx([0.4, 0.2]) and ranked.candidates == 3


def test_reasons_are_the_most_attended_real_behaviours_newest_position_mapped_to_its_item():
    bundle = HandMadeBundle()
    behaviours = [("a", "click", None), ("b", "click", None), ("c", "click", None)]  # positions 1, 2, 3

    ranked = rank_for_user(bundle, behaviours, None, 0, trending=[], exclude=set(), k=1, candidates=3)

    assert ranked.items[0].reasons == ("c", "b")  # 0.9 at the newest (c), 0.5 before it (b); padding ignored
