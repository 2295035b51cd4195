"""The feature job's operators wired as the job wires them, without Flink: fake keyed state
that pickles (as Flink's does), a writer in memory. Their Redis writes must equal what
`fold_stream` computes, through batches, duplicates, bad records and a restore from a checkpoint."""

from collections import Counter

import orjson

from schemas.config import Settings
from schemas.events import Event, EventType
from schemas.experiments import ArmTally, ExperimentTallies
from schemas.features import ItemEvent
from schemas.redis_format import TRENDING_ENTITY, KeyKind, redis_key
from schemas.runtime.streaming import fold_stream, seen_sets, trending_list
from streams.operators import (
    ARM_EVENTS,
    DEAD_LETTERS,
    SAMPLES,
    ExperimentTalliesFunction,
    ItemFeaturesFunction,
    TrendingFunction,
    UserFeaturesFunction,
)
from tests.operator_harness import KeyedState, MemoryWriter, ProcessingTime, batch_of, kafka_records, opened

SETTINGS = Settings()
SPEC = SETTINGS.pipeline.features
START = 1_735_700_000_000


def event(n: int, user: str, item: str, kind: EventType = EventType.CLICK, **fields) -> Event:
    return Event(event_id=f"e{n}", user_id=user, item_id=item, type=kind, ts=START + n * 1_000, **fields)


EVENTS = [
    event(1, "u1", "i1"),
    event(2, "u2", "i1", EventType.IMPRESSION),
    event(3, "u1", "i2", EventType.RATING, value=4.5),
    event(4, "u3", "i3", EventType.PLAY),
    event(5, "u2", "i2"),
    event(6, "u1", "i3"),
    event(7, "u3", "i1"),
    # Answers of an experiment's arms: impressions and clicks count for the arm their request_id names.
    event(8, "u4", "i1", EventType.IMPRESSION, context={"request_id": "ab:champion:r1"}),
    event(9, "u4", "i2", EventType.IMPRESSION, context={"request_id": "ab:champion:r1"}),
    event(10, "u4", "i2", context={"request_id": "ab:champion:r1"}),
    event(11, "u5", "i3", EventType.IMPRESSION, context={"request_id": "ab:challenger:r2"}),
    event(12, "u5", "i3", EventType.RATING, value=3.0, context={"request_id": "ab:challenger:r2"}),
    event(13, "u5", "i1", context={"request_id": "not-an-experiment"}),
    # A shadow arm ranked this request and would have shown i2 (crc32 0x3d319391) and i3 (0x4a36a307).
    event(14, "u4", "i2", context={"request_id": "ab:champion:r3:shadow=3d3193914a36a307"}),
]
# Counted by hand from the events above: a rating and a request id naming no arm count for nothing.
AB_TALLIES = ExperimentTallies(
    {"champion": ArmTally(2, 2), "challenger": ArmTally(1, 0), "shadow": ArmTally(0, 1, would_have_shown=1)},
    version=5,
    at_ts=START + 14_000,
)


class Job:
    """The stages over one keyed state each (the experiments stage: one per experiment, its key),
    writing to one memory writer (one Redis)."""

    def __init__(self, states: tuple[KeyedState, KeyedState, KeyedState, dict[str, KeyedState]] | None = None):
        self.states = states or (KeyedState(), KeyedState(), KeyedState(), {})
        self.writer = MemoryWriter()
        kinds = (UserFeaturesFunction, ItemFeaturesFunction, TrendingFunction)
        self.users, self.items, self.trending = (
            opened(kind, state, self.writer, SETTINGS) for kind, state in zip(kinds, self.states[:3], strict=True)
        )
        self.experiments: dict[str, ExperimentTalliesFunction] = {}
        self.dead_letters: list[dict] = []
        self.items_time, self.trending_time = ProcessingTime(self.states[1]), ProcessingTime(self.states[2])

    def run(self, records: list[tuple[bytes, int, int]]) -> None:
        """One batch of raw records through the stages, as the job's keyed streams pass them on, and
        the batch window's end."""
        for output in list(self.users.process_element(batch_of(records), None)):
            if output[0] is DEAD_LETTERS:
                self.dead_letters.append(orjson.loads(output[1]))
            elif output[0] is ARM_EVENTS:
                list(self._experiment(output[1][0]).process_element(output[1], None))
            elif output[0] is not SAMPLES:
                self.items_time.key = output[0]  # the item bucket
                for updates in list(self.items.process_element(output, self.items_time)):
                    list(self.trending.process_element(updates, self.trending_time))
        self.items_time.advance(self.items, SETTINGS.stream.stream_batch_ms)
        self.trending_time.advance(self.trending, SETTINGS.stream.stream_batch_ms)

    def _experiment(self, name: str) -> ExperimentTalliesFunction:
        if name not in self.experiments:
            state = self.states[3].setdefault(name, KeyedState())
            self.experiments[name] = opened(ExperimentTalliesFunction, state, self.writer, SETTINGS)
        return self.experiments[name]

    def checkpoint(self) -> tuple[KeyedState, KeyedState, KeyedState, dict[str, KeyedState]]:
        users, items, trending, experiments = self.states
        return (users.checkpoint(), items.checkpoint(), trending.checkpoint(),
                {name: state.checkpoint() for name, state in experiments.items()})  # fmt: skip


def reference(events: list[Event]) -> dict[str, object]:
    """Every key the stream writes for `events`, with the value `fold_stream` gives it."""
    users, items, trending = fold_stream(events, SPEC)
    expected: dict[str, object] = {redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "test"): trending_list(trending, SPEC)}
    for user_id, state in users.items():
        expected[redis_key(KeyKind.USER_SEQUENCE, user_id, "test")] = state.sequence
        expected[redis_key(KeyKind.USER_FEATURES, user_id, "test")] = state.features
    for item_id, state in items.items():
        expected[redis_key(KeyKind.ITEM_FEATURES, item_id, "test")] = state.features
    expected[redis_key(KeyKind.EXPERIMENT, "ab", "test")] = AB_TALLIES
    return expected


def stored(writer: MemoryWriter) -> dict[str, object]:
    return {key: value for key, (_, value) in writer.stored.items()}


def test_the_three_operators_over_several_batches_write_what_fold_stream_computes():
    job = Job()
    records = kafka_records(EVENTS)

    for start in range(0, len(records), 3):
        job.run(records[start : start + 3])

    assert stored(job.writer) == reference(EVENTS)
    expected_seen = {redis_key(KeyKind.USER_SEEN, user, "test"): seen for user, seen in seen_sets(EVENTS, SPEC).items()}
    assert job.writer.seen == expected_seen
    assert job.writer.stored[redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "test")][0] == len(EVENTS)


def test_a_redelivered_event_counts_once_and_a_bad_record_becomes_a_dead_letter_with_its_reason():
    job = Job()
    records = kafka_records(EVENTS)
    bad = (b'{"event_id": "x", "user_id": "u1"}', 0, 99)

    job.run(records[:4])
    job.run([*records[2:], bad])  # two records delivered again, and one that is not an event

    assert stored(job.writer) == reference(EVENTS)
    assert len(job.dead_letters) == 1 and job.dead_letters[0]["source"]["offset"] == 99
    assert "item_id" in job.dead_letters[0]["reason"]


def test_a_job_restored_from_a_checkpoint_reapplies_what_came_after_it_and_counts_nothing_twice():
    first = Job()
    records = kafka_records(EVENTS)
    first.run(records[:3])
    saved = first.checkpoint()
    first.run(records[3:5])  # applied and written, then the job dies before the next checkpoint

    restored = Job(saved)
    restored.writer.stored = dict(first.writer.stored)  # Redis outlives the job
    restored.run(records[3:])

    assert stored(restored.writer) == reference(EVENTS)
    assert restored.writer.stored[redis_key(KeyKind.USER_FEATURES, "u1", "test")][0] == 3  # u1's three events


# Three item-bucket messages of one batch window: (item, rank key, time) updates, event and append times.
TRENDING_MESSAGES = [([(item, rank, START + n)], [START + n], [START + n]) for n, (item, rank) in
                     enumerate([("i1", 1.0), ("i2", 3.0), ("i3", 2.0)])]  # fmt: skip
TRENDING_KEY = redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "test")


class CountingWriter(MemoryWriter):
    """Counts each key's writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: Counter[str] = Counter()

    def flush(self) -> None:
        self.writes.update(self.pending.keys())
        super().flush()


def test_trending_is_written_once_per_batch_window_however_many_messages_arrive_in_it():
    state, writer = KeyedState(), CountingWriter()
    trending = opened(TrendingFunction, state, writer, SETTINGS)
    clock = ProcessingTime(state, now_ms=1_000_000)

    for message in TRENDING_MESSAGES:
        list(trending.process_element(message, clock))
    written_before_the_window_closed = writer.writes[TRENDING_KEY]
    clock.advance(trending, SETTINGS.stream.stream_batch_ms)

    assert written_before_the_window_closed == 0
    assert writer.writes[TRENDING_KEY] == 1
    version, listed = writer.stored[TRENDING_KEY]
    assert version == 3 and [item for item, _ in listed.items] == ["i2", "i3", "i1"]  # by rank key: 3, 2, 1


def test_a_trending_write_still_waiting_at_a_checkpoint_is_made_by_the_job_restored_from_it():
    state = KeyedState()
    first = opened(TrendingFunction, state, MemoryWriter(), SETTINGS)
    for message in TRENDING_MESSAGES:
        list(first.process_element(message, ProcessingTime(state, now_ms=1_000_000)))
    saved = state.checkpoint()  # the job dies before its timer fires: nothing of the window is in Redis

    writer = MemoryWriter()
    restored = opened(TrendingFunction, saved, writer, SETTINGS)
    ProcessingTime(saved, now_ms=1_000_000).advance(restored, SETTINGS.stream.stream_batch_ms)

    version, listed = writer.stored[TRENDING_KEY]
    assert version == 3 and [item for item, _ in listed.items] == ["i2", "i3", "i1"]


def test_a_bounded_job_writes_trending_at_every_message_since_flink_drops_its_timers_at_the_end():
    writer = CountingWriter()
    trending = opened(TrendingFunction, KeyedState(), writer, SETTINGS, bounded=True)

    for message in TRENDING_MESSAGES:
        list(trending.process_element(message, None))

    assert writer.writes[TRENDING_KEY] == 3
    assert writer.stored[TRENDING_KEY][0] == 3


# Two user buckets' messages to item bucket 7 in one batch window: i1 is in both.
ITEM_EVENTS = [event(1, "u1", "i1"), event(2, "u1", "i2"), event(3, "u2", "i1", EventType.IMPRESSION)]
ITEM_MESSAGES = [(7, [(ItemEvent.row_of(item_event), START) for item_event in ITEM_EVENTS[:2]]),
                 (7, [(ItemEvent.row_of(ITEM_EVENTS[2]), START)])]  # fmt: skip
ITEM_KEYS = {item: redis_key(KeyKind.ITEM_FEATURES, item, "test") for item in ("i1", "i2")}


def expected_items() -> dict[str, tuple[int, object]]:
    """(version, features) of i1 and i2 after the three events: i1 has two, i2 one."""
    _, items, _ = fold_stream(ITEM_EVENTS, SPEC)
    return {ITEM_KEYS["i1"]: (2, items["i1"].features), ITEM_KEYS["i2"]: (1, items["i2"].features)}


def test_an_item_changed_by_several_messages_of_a_batch_window_is_written_once_at_its_end():
    state, writer = KeyedState(), CountingWriter()
    items = opened(ItemFeaturesFunction, state, writer, SETTINGS)
    clock = ProcessingTime(state, now_ms=1_000_000, key=7)

    for message in ITEM_MESSAGES:
        list(items.process_element(message, clock))
    written_before_the_window_closed = sum(writer.writes.values())
    clock.advance(items, SETTINGS.stream.stream_batch_ms)

    assert written_before_the_window_closed == 0
    assert writer.writes == {ITEM_KEYS["i1"]: 1, ITEM_KEYS["i2"]: 1}
    assert writer.stored == expected_items()


def test_item_writes_still_waiting_at_a_checkpoint_are_made_by_the_job_restored_from_it():
    state = KeyedState()
    first = opened(ItemFeaturesFunction, state, MemoryWriter(), SETTINGS)
    for message in ITEM_MESSAGES:
        list(first.process_element(message, ProcessingTime(state, now_ms=1_000_000, key=7)))
    saved = state.checkpoint()  # the job dies before its timer fires: nothing of the window is in Redis

    writer = MemoryWriter()
    restored = opened(ItemFeaturesFunction, saved, writer, SETTINGS)
    ProcessingTime(saved, now_ms=1_000_000).advance(restored, SETTINGS.stream.stream_batch_ms)

    assert writer.stored == expected_items()


def test_an_item_written_at_its_windows_end_expires_in_redis_when_its_flink_state_does():
    state, writer = KeyedState(), MemoryWriter()
    items = opened(ItemFeaturesFunction, state, writer, SETTINGS)
    wall_clock_s = [1_000.0]
    items.items.clock = lambda: wall_clock_s[0]  # what EntityStates stamps each entity's state with
    list(items.process_element(ITEM_MESSAGES[0], ProcessingTime(state, key=7)))
    wall_clock_s[0] += 0.125  # the window's timer fires 125 ms after the batch
    ProcessingTime(state, key=7).advance(items, SETTINGS.stream.stream_batch_ms)

    entity_ttl_ms = round(SETTINGS.stream.entity_ttl_h * 3_600_000)
    assert writer.ttls == {ITEM_KEYS["i1"]: entity_ttl_ms - 125, ITEM_KEYS["i2"]: entity_ttl_ms - 125}


def test_a_bounded_job_writes_items_at_every_message_since_flink_drops_its_timers_at_the_end():
    writer = CountingWriter()
    items = opened(ItemFeaturesFunction, KeyedState(), writer, SETTINGS, bounded=True)

    for message in ITEM_MESSAGES:
        list(items.process_element(message, None))

    assert writer.writes == {ITEM_KEYS["i1"]: 2, ITEM_KEYS["i2"]: 1}
    assert writer.stored == expected_items()
