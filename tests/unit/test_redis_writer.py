"""The stream's Redis writer without Redis: what it writes, and that it never drops writes."""

import logging

import redis

from schemas.redis_format import KeyKind
from schemas.runtime.feature_store import EntityWrite, SeenAddition
from streams.redis_writer import REPORT_EVERY_S, RETRY_BACKOFF_S, RedisWriter


class FakeStore:
    """A feature store whose `write` is the test's function (of the writes and seen additions),
    which must be in the writer's namespace."""

    def __init__(self, write):
        self.written = write

    def write(self, namespace, writes, seen):
        assert namespace == "ns"
        return self.written(writes, seen)

    def close(self) -> None:
        pass


def writer_with(write) -> tuple[RedisWriter, list[float]]:
    slept: list[float] = []
    return RedisWriter(FakeStore(write), "test", "ns", sleep=slept.append), slept


def test_a_flush_writes_each_key_once_with_its_newest_state():
    calls = []
    writer, _ = writer_with(lambda encoded, seen: calls.append(encoded) or len(encoded))
    writer.put(KeyKind.USER_FEATURES, "u1", 1, {"n": 1}, 100, 0)
    writer.put(KeyKind.USER_FEATURES, "u1", 3, {"n": 3}, 300, 0)
    writer.put(KeyKind.USER_FEATURES, "u1", 2, {"n": 2}, 200, 0)  # older than what is queued: ignored
    writer.put(KeyKind.USER_SEQUENCE, "u1", 1, {"n": 9}, 900, 5_000)

    writer.flush()
    writer.flush()  # nothing queued: no call

    assert calls == [
        [
            EntityWrite(KeyKind.USER_FEATURES, "u1", 3, {"n": 3}, 300, 0),
            EntityWrite(KeyKind.USER_SEQUENCE, "u1", 1, {"n": 9}, 900, 5_000),
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
    writer.put(KeyKind.ITEM_FEATURES, "i", 1, {"n": 1}, 100, 0)
    writer.applied([100], [150])

    writer.flush()

    assert len(attempts) == failures + 1 and all(batch == attempts[0] for batch in attempts)
    assert slept == [*RETRY_BACKOFF_S, RETRY_BACKOFF_S[-1], RETRY_BACKOFF_S[-1]]
    assert writer.freshness.writes == 1 and len(writer.freshness.since_event) == 1
    assert writer.pending == {}


def test_seen_items_queued_in_a_batch_are_written_once_per_set_with_each_items_newest_time():
    calls = []
    writer, _ = writer_with(lambda encoded, seen: calls.append(seen) or 0)
    writer.add_seen("u1", "i1", 100, 2000, 9)
    writer.add_seen("u1", "i2", 300, 2000, 9)
    writer.add_seen("u1", "i1", 50, 2000, 9)  # an older interaction with i1: its newest stays
    writer.add_seen("u2", "i1", 70, 2000, 9)

    writer.flush()

    assert calls == [{"u1": SeenAddition({"i1": 100, "i2": 300}, 2000, 9), "u2": SeenAddition({"i1": 70}, 2000, 9)}]


def test_the_report_names_the_batches_the_largest_and_the_longest_gap_between_two(caplog):
    now = [0.0]
    writer = RedisWriter(FakeStore(lambda encoded, seen: len(encoded)), "users", "ns", clock=lambda: now[0])
    for at_s, events in ((0.0, 2), (0.5, 5), (0.6, 1)):  # gaps of 500 and 100 ms
        now[0] = at_s
        writer.applied([0] * events, [0] * events)
    now[0] = REPORT_EVERY_S

    with caplog.at_level(logging.INFO, logger="streams.redis_writer"):
        writer.put(KeyKind.USER_FEATURES, "u1", 1, {}, 0, 0)
        writer.flush()

    assert "; 3 batches, largest 5 events, longest gap 500 ms" in caplog.text
