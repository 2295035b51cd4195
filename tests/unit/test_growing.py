"""Tables that grow in place: every view handed out keeps its rows."""

import numpy as np

from schemas.runtime.growing import appended


def test_appended_rows_follow_the_table_and_no_earlier_view_changes():
    table = np.array([[1, 1], [2, 2], [3, 3]], np.int64)

    once = appended(table, np.array([[4, 4]]))  # a buffer of 6 rows
    twice = appended(once, np.array([[5, 5], [6, 6]]))  # its spare rows
    branch = appended(once, np.array([[9, 9]]))  # from an older view: must not overwrite twice's rows

    assert table.tolist() == [[1, 1], [2, 2], [3, 3]] and once.tolist() == [[1, 1], [2, 2], [3, 3], [4, 4]]
    assert twice.tolist() == [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6]]
    assert branch.tolist() == [[1, 1], [2, 2], [3, 3], [4, 4], [9, 9]]
    assert np.shares_memory(once, twice) and not np.shares_memory(twice, branch)


def test_a_full_buffer_is_replaced_by_a_longer_one_and_object_tables_grow_too():
    ids = np.array(["a"], dtype=object)
    grown = ids
    for item in "bcdefg":
        grown = appended(grown, np.array([item], dtype=object))

    assert grown.tolist() == list("abcdefg") and ids.tolist() == ["a"]
    assert len(grown.base) >= 7
