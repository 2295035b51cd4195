"""EntityStates against a fake MapState that counts the reads which would be JVM round trips."""

import pytest

from streams.entity_states import EntityStates

TTL_MS = 1000


class FakeMapState:
    def __init__(self, entries: dict | None = None):
        self.entries = dict(entries or {})
        self.gets = 0
        self.bulk_reads = 0
        self.bulk_writes = 0

    def get(self, key):
        self.gets += 1
        return self.entries.get(key)

    def put_all(self, entries):
        """As PyFlink's in thread mode: a dict."""
        self.bulk_writes += 1
        self.entries.update(entries.items())

    def items(self):
        self.bulk_reads += 1
        return list(self.entries.items())

    def remove(self, key):
        del self.entries[key]


class ProcessModeMapState(FakeMapState):
    def put_all(self, entries):
        """As PyFlink's in process mode: (key, value) pairs, whatever the argument."""
        self.bulk_writes += 1
        for key, value in entries:
            self.entries[key] = value


class Clock:
    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


def states_on(flink: FakeMapState, capacity: int = 10, clock: Clock | None = None) -> EntityStates:
    return EntityStates(flink, capacity=capacity, ttl_ms=TTL_MS, clock=clock or Clock())


def test_a_bucket_is_read_in_bulk_once_and_unknown_entities_cost_no_round_trip():
    flink = FakeMapState({"u1": (0, 1)})
    states = states_on(flink)

    states.enter("bucket-0")
    assert (states.get("u1", 0), states.get("u2", 0)) == (1, 0)
    states.enter("bucket-0")

    assert (flink.bulk_reads, flink.gets) == (1, 0)


@pytest.mark.parametrize("flink_state", [FakeMapState, ProcessModeMapState])
def test_changes_reach_flink_at_commit_in_one_call_once_per_entity_stamped_with_the_batchs_time(flink_state):
    flink = flink_state()
    states = states_on(flink, clock=Clock(12.5))
    states.enter("bucket-0")

    states.put("u1", 1)
    states.put("u1", 2)
    states.put("u2", 7)
    assert flink.entries == {}
    changed = states.commit()

    assert flink.entries == {"u1": (12_500, 2), "u2": (12_500, 7)} and sorted(changed) == [("u1", 2), ("u2", 7)]
    assert flink.bulk_writes == 1
    assert states.commit() == [] and flink.bulk_writes == 1
    assert states.get("u1", 0) == 2


def test_past_capacity_the_least_recently_used_leave_memory_and_are_read_back_from_flink():
    flink = FakeMapState()
    states = states_on(flink, capacity=2)
    states.enter("bucket-0")
    for entity_id, value in (("a", 1), ("b", 2)):
        states.put(entity_id, value)
    states.commit()
    states.get("a", 0)  # "b" is now the least recently used
    states.put("c", 3)
    states.commit()

    assert set(states.entries) == {"a", "c"}
    states.enter("bucket-0")
    assert (states.get("b", 0), flink.gets, flink.bulk_reads) == (2, 1, 1)


def test_a_new_instance_refills_from_flink_as_after_a_restore():
    flink = FakeMapState()
    before = states_on(flink)
    before.enter("bucket-0")
    before.put("u1", 5)
    before.commit()

    after = states_on(flink)
    after.enter("bucket-0")

    assert after.get("u1", 0) == 5


def test_a_state_expires_ttl_ms_after_its_last_write_and_leaves_flink():
    flink, clock = FakeMapState(), Clock(100.0)
    states = states_on(flink, clock=clock)
    states.enter("bucket-0")
    states.put("u1", 5)
    states.put("u2", 7)
    states.commit()

    clock.seconds = 100.999  # 999 ms after the write: still there
    states.enter("bucket-0")
    assert states.get("u1", 0) == 5
    clock.seconds = 101.0  # 1,000 ms after it: expired
    states.enter("bucket-0")

    assert (states.get("u1", 0), states.get("u2", 0)) == (0, 0)
    assert flink.entries == {}


def test_an_expired_state_restored_from_a_checkpoint_does_not_come_back():
    flink = FakeMapState({"u1": (100_000, 5), "u2": (100_500, 6)})
    restored = states_on(flink, clock=Clock(101.2))

    restored.enter("bucket-0")

    assert (restored.get("u1", 0), restored.get("u2", 0)) == (0, 6)
    assert list(flink.entries) == ["u2"]


def test_a_write_renews_the_ttl():
    flink, clock = FakeMapState(), Clock(0.0)
    states = states_on(flink, clock=clock)
    states.enter("bucket-0")
    states.put("u1", 1)
    states.commit()
    clock.seconds = 0.8
    states.enter("bucket-0")
    states.put("u1", states.get("u1", 0) + 1)
    states.commit()

    clock.seconds = 1.5  # 1,500 ms after the first write, 700 after the second
    states.enter("bucket-0")

    assert states.get("u1", 0) == 2
