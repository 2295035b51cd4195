"""The stream's Redis writer without Redis: what it writes, and that it never drops writes."""

import redis

from schemas.redis_format import encode_value
from schemas.runtime.feature_store import SeenAddition, VersionedWrite
from streams.redis_writer import RETRY_BACKOFF_S, RedisWriter


class FakeStore:
    """A feature store whose `write` is the test's function."""

    def __init__(self, write):
        self.write = write

    def close(self) -> None:
        pass


def writer_with(write) -> tuple[RedisWriter, list[float]]:
    slept: list[float] = []
    return RedisWriter(FakeStore(write), "test", sleep=slept.append), slept


def test_a_flush_writes_each_key_once_with_its_newest_state():
    calls = []
    writer, _ = writer_with(lambda encoded, seen: calls.append(encoded) or len(encoded))
    writer.put("k1", 1, {"n": 1}, 100, 0)
    writer.put("k1", 3, {"n": 3}, 300, 0)
    writer.put("k1", 2, {"n": 2}, 200, 0)  # older than what is queued: ignored
    writer.put("k2", 1, {"n": 9}, 900, 5_000)

    writer.flush()
    writer.flush()  # nothing queued: no call

    assert calls == [
        [
            VersionedWrite("k1", 3, encode_value({"n": 3}, 300), 0),
            VersionedWrite("k2", 1, encode_value({"n": 9}, 900), 5_000),
        ]
    ]


def test_an_unreachable_redis_is_retried_with_backoff_until_the_writes_land():
    failures = len(RETRY_BACKOFF_S) + 2
    attempts = []

    def upsert_all(encoded, seen):
        attempts.append(encoded)
        if len(attempts) <= failures:
            raise redis.ConnectionError("connection refused")
        return len(encoded)

    writer, slept = writer_with(upsert_all)
    writer.put("k", 1, {"n": 1}, 100, 0)
    writer.applied([100], [150])

    writer.flush()

    assert len(attempts) == failures + 1 and all(batch == attempts[0] for batch in attempts)
    assert slept == [*RETRY_BACKOFF_S, RETRY_BACKOFF_S[-1], RETRY_BACKOFF_S[-1]]
    assert writer.freshness.writes == 1 and len(writer.freshness.since_event) == 1
    assert writer.pending == {}


def test_seen_items_queued_in_a_batch_are_written_once_per_set_with_each_items_newest_time():
    calls = []
    writer, _ = writer_with(lambda encoded, seen: calls.append(seen) or 0)
    writer.add_seen("s1", "i1", 100, 2000, 9)
    writer.add_seen("s1", "i2", 300, 2000, 9)
    writer.add_seen("s1", "i1", 50, 2000, 9)  # an older interaction with i1: its newest stays
    writer.add_seen("s2", "i1", 70, 2000, 9)

    writer.flush()

    assert calls == [{"s1": SeenAddition({"i1": 100, "i2": 300}, 2000, 9), "s2": SeenAddition({"i1": 70}, 2000, 9)}]
