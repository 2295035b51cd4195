"""EntityStates against a fake MapState that counts the reads which would be JVM round trips."""

from streams.entity_states import EntityStates


class FakeMapState:
    def __init__(self, entries: dict | None = None):
        self.entries = dict(entries or {})
        self.gets = 0
        self.bulk_reads = 0

    def get(self, key):
        self.gets += 1
        return self.entries.get(key)

    def put(self, key, value):
        self.entries[key] = value

    def items(self):
        self.bulk_reads += 1
        return list(self.entries.items())


def test_a_bucket_is_read_in_bulk_once_and_unknown_entities_cost_no_round_trip():
    flink = FakeMapState({"u1": 1})
    states = EntityStates(flink, capacity=10)

    states.enter("bucket-0")
    assert (states.get("u1", 0), states.get("u2", 0)) == (1, 0)
    states.enter("bucket-0")

    assert (flink.bulk_reads, flink.gets) == (1, 0)


def test_changes_reach_flink_at_commit_once_per_entity():
    flink = FakeMapState()
    states = EntityStates(flink, capacity=10)
    states.enter("bucket-0")

    states.put("u1", 1)
    states.put("u1", 2)
    assert flink.entries == {}
    changed = states.commit()

    assert flink.entries == {"u1": 2} and changed == [("u1", 2)]
    assert states.commit() == []
    assert states.get("u1", 0) == 2


def test_past_capacity_the_least_recently_used_leave_memory_and_are_read_back_from_flink():
    flink = FakeMapState()
    states = EntityStates(flink, capacity=2)
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
    before = EntityStates(flink, capacity=10)
    before.enter("bucket-0")
    before.put("u1", 5)
    before.commit()

    after = EntityStates(flink, capacity=10)
    after.enter("bucket-0")

    assert after.get("u1", 0) == 5
