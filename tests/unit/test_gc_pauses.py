"""The interpreter's collections as the Redis writer reports them beside freshness, and the
user stage's collection once per batch, which freezes what survives it."""

import gc
import logging
import weakref

import pytest

from schemas.config import Settings
from streams.gc_pauses import GcPauses, collect_and_freeze
from streams.operators import UserFeaturesFunction
from streams.redis_writer import REPORT_EVERY_S, RedisWriter
from tests.conftest import settings_of
from tests.operator_harness import KeyedState, MemoryWriter, batch_of, kafka_records, opened
from tests.unit.test_operators import EVENTS


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


class Node:
    """A container the collector tracks."""


def tracked(value: object) -> bool:
    """Whether a collection would walk `value`: tracked, and in a generation (not frozen)."""
    return any(each is value for each in gc.get_objects())


def with_per_batch(per_batch: bool) -> Settings:
    return settings_of({"KF_PYTHON_GC_PER_BATCH": str(per_batch)})


@pytest.fixture
def unfrozen():
    """The interpreter as other tests expect it: nothing frozen before or after."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_collect_and_freeze_frees_the_cycles_made_since_and_freezes_what_survives(unfrozen):
    kept, dropped = Node(), Node()
    dropped.itself = dropped
    gone = weakref.ref(dropped)
    del dropped

    collect_and_freeze()

    assert gone() is None
    assert not tracked(kept) and gc.get_freeze_count() > 0


@pytest.mark.parametrize("per_batch", [True, False])
def test_the_user_stage_leaves_its_states_frozen_after_a_batch_only_when_told(unfrozen, per_batch):
    settings = with_per_batch(per_batch)
    stage = opened(UserFeaturesFunction, KeyedState(), MemoryWriter(), settings)

    list(stage.process_element(batch_of(kafka_records(EVENTS)), None))

    states = [state for _, state in stage.users.entries.values()]
    assert states and all(tracked(state) is not per_batch for state in states)


def test_the_user_stage_makes_no_reference_cycles_so_its_frozen_states_are_freed_when_replaced(unfrozen):
    settings = with_per_batch(False)
    stage = opened(UserFeaturesFunction, KeyedState(), MemoryWriter(), settings)
    records = kafka_records(EVENTS)
    gc.collect()
    gc.disable()
    try:
        for start in range(0, len(records), 3):
            list(stage.process_element(batch_of(records[start : start + 3]), None))
        assert gc.collect() == 0
    finally:
        gc.enable()
