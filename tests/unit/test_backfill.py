"""The backfill's fold driven without Kafka or Redis: records from a collection, a writer in memory.
Whatever the number of workers and however the records are batched, the keys it writes equal what
`fold_stream` computes, as the live job's operators' do (`test_operators.py`)."""

import math
import random
from collections import Counter
from dataclasses import replace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Event
from schemas.experiments import ArmTally, ExperimentTallies
from schemas.features import HOUR_MS, FeatureSpec, ItemFeatures
from schemas.redis_format import TRENDING_ENTITY, KeyKind, redis_key
from schemas.runtime.streaming import fold_stream, merge_item_states, seen_sets, trending_list, trending_of
from schemas.sample_log import SampleLogLines, committed_files, today
from streams.backfill import BackfillFold, SampleFiles, Share, UserInTwoShares, partition_shares, write_shared
from streams.replay import ReplayPlan
from tests.operator_harness import KeyedState, MemoryWriter, batch_of, kafka_records, sample_lines, user_stage
from tests.unit.test_operators import EVENTS, SETTINGS, SPEC, reference

ENTITY_TTL_MS = 3_600_000
T0 = 1_700_000_000_000


def backfilled(records: list[tuple], workers: int, batch: int) -> tuple[MemoryWriter, list[bytes], Share]:
    """The records folded as `kingfisher replay` folds them: their partitions shared among `workers`
    workers, each reading its partitions' records in batches of `batch` (partitions interleaved, as
    Kafka hands them over) and writing its users after every batch; then the merged shares written."""
    counts = Counter(partition for _, partition, _ in records)
    plan = ReplayPlan("events", "test", "group", dict.fromkeys(counts, 0), dict(counts))
    writer, dead_letters, merged = MemoryWriter(), [], Share()
    for partitions in partition_shares(plan, workers):
        fold = BackfillFold(SPEC, writer, ENTITY_TTL_MS, SETTINGS.stream.dedupe_capacity)
        mine = [(*record, 0) for record in records if record[1] in partitions]
        for start in range(0, len(mine), batch):
            fold.take(mine[start : start + batch], dead_letters.append)
            fold.flush_users()
        merged = merged.merged(fold.finish(), SPEC)
    write_shared(writer, merged, SPEC, ENTITY_TTL_MS)
    return writer, dead_letters, merged


def rounded(values: dict[str, object]) -> dict[str, object]:
    """Items' popularity to 12 significant digits: merged shares add the same decayed terms in
    another order, and the live job's stages do too."""
    return {key: replace(value, popularity=float(f"{value.popularity:.12g}")) if isinstance(value, ItemFeatures)
            else value for key, value in values.items()}  # fmt: skip


def stored(writer: MemoryWriter) -> dict[str, object]:
    return rounded({key: value for key, (_, value) in writer.stored.items()})


@pytest.mark.parametrize(("workers", "batch"), [(1, 100), (2, 3), (3, 1)])
def test_any_number_of_workers_writes_what_fold_stream_computes(workers, batch):
    writer, dead_letters, share = backfilled(kafka_records(EVENTS), workers, batch)

    assert stored(writer) == rounded(reference(EVENTS))
    expected_seen = seen_sets(EVENTS, SPEC)
    assert writer.seen == {redis_key(KeyKind.USER_SEEN, user, "test"): seen for user, seen in expected_seen.items()}
    assert dead_letters == [] and share.applied == len(EVENTS)
    # Versions count each key's events: trending every event, u1 three, i1 five (events 1, 2, 7, 8, 13).
    assert writer.stored[redis_key(KeyKind.USER_FEATURES, "u1", "test")][0] == 3
    assert writer.stored[redis_key(KeyKind.ITEM_FEATURES, "i1", "test")][0] == 5
    assert writer.stored[redis_key(KeyKind.TRENDING, TRENDING_ENTITY, "test")][0] == len(EVENTS)


def test_redeliveries_count_once_and_each_bad_record_becomes_one_dead_letter_with_its_reason():
    records = kafka_records(EVENTS)
    bad = [(b'{"event_id": "x", "user_id": "u1"}', 0, 99), (b"not json", 1, 98), (b"[1, 2]", 2, 97)]

    writer, dead_letters, share = backfilled([*records[:5], *records[2:], *bad], workers=2, batch=4)

    assert stored(writer) == rounded(reference(EVENTS))
    assert (share.duplicates, share.invalid) == (3, 3)
    letters = sorted((orjson.loads(letter) for letter in dead_letters), key=lambda letter: letter["source"]["offset"])
    assert [letter["source"]["offset"] for letter in letters] == [97, 98, 99]
    assert "item_id" in letters[2]["reason"] and "JSON" in letters[1]["reason"]


def test_workers_share_the_partitions_balanced_by_their_records_and_never_more_workers_than_partitions():
    plan = ReplayPlan("events", "test", "group", {0: 0, 1: 10, 2: 0, 3: 5}, {0: 100, 1: 40, 2: 60, 3: 5})

    # Records 100, 30, 60, 0: the largest first, each to the lightest share; the empty one to none.
    assert partition_shares(plan, 2) == [[0], [2, 1]]
    assert partition_shares(plan, 3) == [[0], [2], [1]]
    assert partition_shares(plan, 8) == [[0], [2], [1]]


def test_a_user_whose_events_sit_in_two_partitions_fails_the_backfill_naming_the_user():
    records = kafka_records(EVENTS, partitions=3)
    # u1's third event (e6) published into the next partition, against the events contract.
    split = [(payload, (partition + 1) % 3 if b'"e6"' in payload else partition, offset)
             for payload, partition, offset in records]  # fmt: skip

    backfilled(records, workers=3, batch=5)
    with pytest.raises(UserInTwoShares, match=r"'u1'.*--flink"):
        backfilled(split, workers=3, batch=5)


def random_events(seed: int, count: int) -> list[Event]:
    """Clicks, impressions and plays on 12 items at distinct times over 30 hours, so no two items'
    rank keys tie."""
    rng = random.Random(seed)
    times = rng.sample(range(30 * HOUR_MS), count)
    values = {"click": None, "impression": None, "play": 60.0, "rating": 3.5}
    events = []
    for n, ts in enumerate(times):
        kind = rng.choice(list(values))
        user, item = f"u{n % 5}", f"i{rng.randrange(12)}"
        events.append(Event(event_id=f"e{n}", user_id=user, item_id=item, type=kind, ts=T0 + ts, value=values[kind]))
    return events


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 60), st.integers(1, 6))
def test_an_items_state_merged_from_two_parts_of_its_events_equals_its_state_after_all_of_them(seed, count, k):
    spec = FeatureSpec(popularity_half_life_ms=HOUR_MS, recent_window_ms=2 * HOUR_MS, trending_size=k)
    events = random_events(seed, count)
    mask = random.Random(seed + 1).choices([True, False], k=len(events))

    _, everything, trending = fold_stream(events, spec)
    _, first, _ = fold_stream([e for e, m in zip(events, mask, strict=True) if m], spec)
    _, second, _ = fold_stream([e for e, m in zip(events, mask, strict=True) if not m], spec)
    merged = {
        item: merge_item_states(first[item], second[item], spec) if item in first and item in second
        else first.get(item) or second[item]
        for item in everything
    }  # fmt: skip

    for item_id, state in everything.items():
        got, want = merged[item_id], state
        assert got.version == want.version
        assert got.features.popularity == pytest.approx(want.features.popularity, rel=1e-12)
        assert got.features.rating_sum == pytest.approx(want.features.rating_sum, rel=1e-12)
        assert (got.features.event_counts, got.features.rating_count, got.features.last_ts) == (
            want.features.event_counts, want.features.rating_count, want.features.last_ts)  # fmt: skip
        assert (got.features.popularity_ts, got.features.recent) == (want.features.popularity_ts, want.features.recent)
    derived = trending_of(merged, spec)
    assert (derived.version, derived.at_ts) == (trending.version, trending.at_ts)
    assert [item for item, _ in trending_list(derived, spec).items] == [
        item for item, _ in trending_list(trending, spec).items
    ]


def test_trending_of_no_items_is_empty_and_items_without_interactions_never_enter():
    spec = FeatureSpec(popularity_half_life_ms=HOUR_MS)
    _, items, trending = fold_stream([Event(event_id="e1", user_id="u1", item_id="i1", type="impression", ts=T0)], spec)

    assert trending_of({}, spec).candidates == {} and trending_of({}, spec).floor == -math.inf
    assert trending_of(items, spec).candidates == trending.candidates == {}
    assert trending_of(items, spec).version == trending.version == 1


def test_experiment_tallies_merge_by_adding_each_arms_counts():
    ours = ExperimentTallies({"a": ArmTally(3, 1), "s": ArmTally(0, 1, 1)}, version=5, at_ts=T0 + 9)
    theirs = ExperimentTallies({"a": ArmTally(2, 2), "b": ArmTally(4, 0)}, version=6, at_ts=T0 + 4)

    merged = ours.merged(theirs)

    assert merged == ExperimentTallies(
        {"a": ArmTally(5, 3), "s": ArmTally(0, 1, 1), "b": ArmTally(4, 0)}, version=11, at_ts=T0 + 9
    )


def test_the_backfill_logs_the_lines_the_jobs_user_stage_logs_and_shows_them_only_once_committed(tmp_path):
    records = sorted(kafka_records(EVENTS), key=lambda record: (record[1], record[2]))  # Kafka order, as the job's
    expected = sample_lines(user_stage(KeyedState()).process_element(batch_of(records), None))
    fold = BackfillFold(SPEC, MemoryWriter(), ENTITY_TTL_MS, SETTINGS.stream.dedupe_capacity, SampleLogLines(SPEC))
    files = SampleFiles(tmp_path, "backfill-0")

    files.write(fold.take([(*record, 0) for record in records], [].append))
    before_commit = committed_files(tmp_path, today())
    files.commit()

    assert before_commit == []
    [committed] = committed_files(tmp_path, today())
    assert committed.read_bytes().splitlines() == expected
    assert committed.parent.name == f"dt={today().isoformat()}"
