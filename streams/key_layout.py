"""Which Flink key each bucket of users or items is keyed under.

Flink hashes a key into one of the job's KEY_GROUPS key groups, and each subtask owns a contiguous
range of them. With a handful of keys that hash decides the balance: at parallelism 2, 8 buckets
keyed by their own numbers split 5 to 3 between the subtasks and 16 split 11 to 5. So above
parallelism 1, bucket b goes under the smallest key whose key group starts the b-th of `buckets`
equal shares of the key groups: the buckets spread evenly over any parallelism that divides their
number, and the keys do not depend on the parallelism, so a checkpoint still rescales between
parallelisms above 1. At parallelism 1 a bucket is its own key, the layout that earlier checkpoints
hold.
"""

from collections.abc import Callable

KEY_GROUPS = 128
"""The job's max parallelism: Flink's default below parallelism 86, set so that it never changes."""

ROW_HASH_OF_ZERO = 62
"""PyFlink's `key_by` keys by a one-field Row holding the key (its `KeyByKeySelector`); the
`hashCode` of such a Row (an insert) holding the Integer k is this + k (`RowUtils.deepHashCodeRow`)."""
_MASK = 0xFFFFFFFF


def key_group(key: int, key_groups: int = KEY_GROUPS) -> int:
    """Flink's key group of the bucket key `key` as `key_by(..., key_type=Types.INT())` hands it to
    Flink (`KeyGroupRangeAssignment.assignToKeyGroup`: `MathUtils.murmurHash` of the Row's hash)."""
    code = _rotate_left(((ROW_HASH_OF_ZERO + key) & _MASK) * 0xCC9E2D51 & _MASK, 15) * 0x1B873593 & _MASK
    code = _bit_mix(((_rotate_left(code, 13) * 5 + 0xE6546B64) & _MASK) ^ 4)
    signed = code - (1 << 32) if code >> 31 else code
    return (abs(signed) if signed != -(1 << 31) else 0) % key_groups


def _rotate_left(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (32 - bits))) & _MASK


def _bit_mix(value: int) -> int:
    value ^= value >> 16
    value = value * 0x85EBCA6B & _MASK
    value ^= value >> 13
    value = value * 0xC2B2AE35 & _MASK
    return value ^ (value >> 16)


def subtask_of(key: int, parallelism: int, key_groups: int = KEY_GROUPS) -> int:
    """The subtask that owns `key` (`KeyGroupRangeAssignment.assignKeyToParallelOperator`)."""
    return key_group(key, key_groups) * parallelism // key_groups


def bucket_keys(buckets: int, parallelism: int, key_groups: int = KEY_GROUPS) -> tuple[int, ...]:
    """Bucket b's key: b at parallelism 1; else the smallest non-negative key whose key group is
    b * key_groups // buckets."""
    if parallelism == 1:
        return tuple(range(buckets))
    if buckets > key_groups:
        raise ValueError(f"{buckets} key buckets for {key_groups} key groups: at most one bucket per key group")
    wanted = {bucket * key_groups // buckets: bucket for bucket in range(buckets)}
    keys: dict[int, int] = {}
    key = 0
    while len(keys) < buckets:
        bucket = wanted.get(key_group(key, key_groups))
        if bucket is not None and bucket not in keys:
            keys[bucket] = key
        key += 1
    return tuple(keys[bucket] for bucket in range(buckets))


def bucket_key_selector(buckets: int, parallelism: int) -> Callable[[tuple], int]:
    """A batch's key (its first field is its bucket): its bucket's key in `bucket_keys`."""
    keys = bucket_keys(buckets, parallelism)
    return lambda batch: keys[batch[0]]


def layout_name(buckets: int, parallelism: int) -> str:
    """A suffix for the keyed operators' uids: a checkpoint of another layout then fails to restore
    (its state would sit under keys no bucket reads) instead of restoring into state nobody finds."""
    return "" if parallelism == 1 else f"-spread{buckets}x{KEY_GROUPS}"
