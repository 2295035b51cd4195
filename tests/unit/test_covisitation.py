"""Co-visitation lookups against a plain dictionary of the same counts."""

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.runtime.covisitation import CoVisitation
from schemas.runtime.model_inputs import PADDING

SIZE = 12
ADDED = 3
"""Item indices SIZE .. SIZE + ADDED - 1: items added after the counts (new in the catalogue)."""


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(0, SIZE - 1)), max_size=60),
    behaviours=st.lists(st.lists(st.integers(0, SIZE + ADDED - 1), min_size=5, max_size=5), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_pair_counts_are_each_candidates_count_after_each_behaviour_zero_for_padding_and_added_items(
    pairs, behaviours, seed
):
    counted = Counter(first * SIZE + second for first, second in pairs)
    covisitation = CoVisitation.of_counts(SIZE, counted)
    behaviours = np.array(behaviours, np.int32)
    candidates = np.random.default_rng(seed).integers(0, SIZE + ADDED, (len(behaviours), 7)).astype(np.int32)

    found = covisitation.pair_counts(behaviours, candidates)

    expected = [
        [[0 if b == PADDING or max(b, c) >= SIZE else counted[b * SIZE + c] for b in row] for c in pool]
        for row, pool in zip(behaviours.tolist(), candidates.tolist(), strict=True)
    ]
    assert found.tolist() == expected


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(0, SIZE - 1)), max_size=60),
    items=st.lists(st.integers(0, SIZE - 1), max_size=6),
    data=st.data(),
)
def test_following_sums_each_items_followers_counts_times_its_weight(pairs, items, data):
    counted = Counter(first * SIZE + second for first, second in pairs)
    weights = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=len(items), max_size=len(items)))

    found = CoVisitation.of_counts(SIZE, counted).following(items, weights)

    expected = [sum(counted[a * SIZE + b] * w for a, w in zip(items, weights, strict=True)) for b in range(SIZE)]
    assert found.tolist() == expected


def test_co_watched_adds_the_counts_after_and_before_an_item():
    # 1 -> 2 three times, 2 -> 1 once, 3 -> 2 twice, 2 -> 3 once, 1 -> 4 once
    covisitation = CoVisitation.of([[1, 2, 1, 2], [1, 2], [3, 2, 3, 2], [1, 4]], SIZE, window=1, neighbours=None)

    watched = covisitation.co_watched(2)

    assert watched[1] == 3 + 1 and watched[3] == 2 + 1 and watched[4] == 0 and watched[2] == 0
    assert covisitation.co_watched(1)[[2, 4]].tolist() == [3 + 1, 1]
