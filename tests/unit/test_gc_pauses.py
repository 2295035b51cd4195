"""The interpreter's collections as the Redis writer reports them beside freshness."""

import gc
import logging

from streams.gc_pauses import GcPauses
from streams.redis_writer import REPORT_EVERY_S, RedisWriter


def test_each_collection_counts_once_and_the_longest_is_kept_until_taken():
    now = iter([1.000, 1.004, 2.000, 2.150, 3.000, 3.020])
    pauses = GcPauses(clock=lambda: next(now))

    for _ in range(3):
        pauses.observe("start", {"generation": 0})
        pauses.observe("stop", {"generation": 0})

    assert pauses.take() == "python gc: 3 collections, longest 150 ms"
    assert pauses.take() == "python gc: 0 collections, longest 0 ms"


def test_it_observes_the_interpreters_collections_only_while_open():
    pauses = GcPauses()
    pauses.open()
    gc.collect()
    pauses.close()
    gc.collect()

    assert pauses.count == 1 and pauses.observe not in gc.callbacks


class CountingStore:
    def write(self, namespace, writes, seen):
        return len(writes)


def test_the_writers_freshness_line_carries_the_collections(caplog, monkeypatch):
    pauses = GcPauses()
    pauses.count, pauses.longest_ms = 2, 180.4
    writer = RedisWriter(CountingStore(), "users", "ns", gc_pauses=pauses)
    writer.last_report -= REPORT_EVERY_S

    with caplog.at_level(logging.INFO, logger="streams.redis_writer"):
        writer.applied([0], [0])
        writer.put("user_feat", "u1", 1, {}, 0, 0)
        writer.flush()

    assert "; python gc: 2 collections, longest 180 ms" in caplog.text
    assert pauses.count == 0
