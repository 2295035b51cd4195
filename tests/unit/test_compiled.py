"""Padding of the service's compiled model calls."""

import pytest

from serving.compiled import compiled_shape


@pytest.mark.parametrize(
    ("rows", "candidates", "shape"),
    [(1, 1, (1, 64)), (3, 243, (3, 256)), (4, 64, (4, 64)), (5, 65, (8, 128)), (9, 200, (16, 256))],
)
def test_compiled_calls_keep_up_to_four_rows_and_pad_candidates_to_multiples_of_64(rows, candidates, shape):
    assert compiled_shape(rows, candidates) == shape
