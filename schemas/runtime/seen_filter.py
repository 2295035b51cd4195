"""Testing a whole vocabulary against a user's seen filter at once (REDIS_FORMAT.md, `user_seen_filter`):
the service leaves out the items a heavy user interacted with before the newest `seen_capacity`."""

from collections.abc import Sequence

import numpy as np

from schemas.redis_format import SEEN_FILTER_BITS, SEEN_FILTER_HASHES, seen_filter_positions


class SeenFilterIndex:
    """The filter bits of items `item_ids` [V]: positions [V, SEEN_FILTER_HASHES], computed once per vocabulary."""

    def __init__(self, item_ids: Sequence[str]):
        self.item_ids = np.array(item_ids, dtype=object)
        self.positions = np.array([seen_filter_positions(item_id) for item_id in item_ids], np.int64).reshape(
            len(item_ids), SEEN_FILTER_HASHES
        )

    def with_items(self, item_ids: Sequence[str]) -> "SeenFilterIndex":
        """This index and `item_ids` after its items; this one is unchanged."""
        grown = SeenFilterIndex(item_ids)
        grown.item_ids = np.concatenate([self.item_ids, grown.item_ids])
        grown.positions = np.concatenate([self.positions, grown.positions])
        return grown

    def held(self, seen_filter: bytes) -> list[str]:
        """The items `seen_filter` holds: those the user interacted with, and the filter's false positives."""
        raw = np.frombuffer(seen_filter[: SEEN_FILTER_BITS // 8], np.uint8)
        bits = np.zeros(SEEN_FILTER_BITS, bool)
        bits[: 8 * len(raw)] = np.unpackbits(raw)  # SETBIT's offset n: byte n // 8, most significant bit first
        return self.item_ids[bits[self.positions].all(axis=1)].tolist()
