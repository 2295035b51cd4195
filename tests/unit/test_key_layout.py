"""Which key each bucket goes under (`streams.key_layout`). `key_group` itself is checked against
Flink's own `KeyGroupRangeAssignment` in tests/integration/test_feature_job.py."""

import pytest

from streams.key_layout import KEY_GROUPS, bucket_key_selector, bucket_keys, key_group, layout_name, subtask_of


def test_at_parallelism_1_a_bucket_is_its_own_key_as_earlier_checkpoints_hold_it():
    assert bucket_keys(4, 1) == (0, 1, 2, 3)
    assert layout_name(4, 1) == ""


def test_buckets_as_their_own_keys_would_split_unevenly_over_two_subtasks():
    # Why the layout exists; the owners as Flink's KeyGroupRangeAssignment gave them for these keys.
    assert [subtask_of(bucket, 2) for bucket in range(8)] == [0, 0, 1, 1, 0, 0, 1, 0]


@pytest.mark.parametrize(("buckets", "parallelism"), [(4, 2), (4, 4), (8, 2), (8, 4), (16, 2), (16, 8)])
def test_above_parallelism_1_every_subtask_owns_the_same_number_of_buckets(buckets, parallelism):
    keys = bucket_keys(buckets, parallelism)
    owners = [subtask_of(key, parallelism) for key in keys]

    assert len(set(keys)) == buckets
    assert [owners.count(subtask) for subtask in range(parallelism)] == [buckets // parallelism] * parallelism


def test_the_keys_do_not_depend_on_the_parallelism_so_a_checkpoint_rescales():
    assert bucket_keys(8, 2) == bucket_keys(8, 4) == bucket_keys(8, 8)
    assert layout_name(8, 2) == layout_name(8, 4) != layout_name(4, 2)


def test_bucket_b_takes_the_smallest_key_of_its_share_of_the_key_groups():
    keys = bucket_keys(4, 2)
    for bucket, key in enumerate(keys):
        wanted = bucket * KEY_GROUPS // 4
        assert key_group(key) == wanted
        assert all(key_group(smaller) != wanted for smaller in range(key))


def test_more_buckets_than_key_groups_is_refused():
    with pytest.raises(ValueError, match="at most one bucket per key group"):
        bucket_keys(KEY_GROUPS + 1, 2)


def test_a_batch_is_keyed_by_its_buckets_key():
    batch = (3, ["payload"])

    assert bucket_key_selector(4, 1)(batch) == 3
    assert bucket_key_selector(4, 2)(batch) == bucket_keys(4, 2)[3] != 3
