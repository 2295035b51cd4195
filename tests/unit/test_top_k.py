import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from schemas.runtime.top_k import top_k


def test_hand_computed_order_with_ties_and_minus_infinity():
    scores = np.array([0.5, 2.0, -np.inf, 2.0, 1.0, 0.5, 3.0], np.float32)
    assert top_k(scores, 3).tolist() == [6, 1, 3]
    assert top_k(scores, 5).tolist() == [6, 1, 3, 4, 0]  # 0.5 twice at the fifth place: row 0, not 5
    assert top_k(scores, 7).tolist() == [6, 1, 3, 4, 0, 5, 2]
    assert top_k(scores, 10).tolist() == [6, 1, 3, 4, 0, 5, 2]
    assert top_k(scores, 0).tolist() == []


def test_the_block_bound_keeps_a_tied_kth_place_in_row_order():
    # 4k < N, so the block maxima bound the candidates: the 20 ones tie at the k-th place
    scores = np.zeros(400, np.float32)
    scores[[17, 3, 391, 251]] = [5, 4, 3, 2]
    scores[np.arange(100, 400, 15)] = 1
    expected = [17, 3, 391, 251, *range(100, 400, 15)][:8]
    assert top_k(scores, 8).tolist() == expected


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float32, st.integers(1, 3000), elements=st.sampled_from([-np.inf, -1.0, 0.0, 0.25, 0.5, 2.0, 7.0])),
    st.integers(0, 200),
)
def test_equals_a_full_sort_by_score_then_row(scores, k):
    expected = np.lexsort((np.arange(len(scores)), -scores))[:k]
    assert top_k(scores, k).tolist() == expected.tolist()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_equals_a_full_sort_on_catalogue_sized_scores(k, seed):
    scores = np.random.default_rng(seed).standard_normal(9742).astype(np.float32)
    assert top_k(scores, k).tolist() == np.lexsort((np.arange(len(scores)), -scores))[:k].tolist()
