"""The training-sample log: what the user stage logs folds back into the rows of the events, exactly,
across batches, days and crashes; gaps show; windows and retention work by day."""

import itertools
import re
import shutil
import time
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import sample_log
from schemas.config import Settings
from schemas.features import FeatureSpec
from schemas.runtime import samples
from schemas.runtime.samples import fold_sample_log, sample_rows
from streams.flink_env import completed_checkpoints
from streams.sample_log import OrphanWatch, SampleLogKeeper
from tests.event_streams import messy_stream
from tests.operator_harness import KeyedState, batch_of, kafka_records, sample_lines, user_stage
from training.data import FeatureSpecsMixed, read_sample_log

DAY_S = 86_400
FIRST_DAY = date(2026, 1, 1)
DAY0_S = (FIRST_DAY - date(1970, 1, 1)).days * DAY_S


def in_order(rows) -> list:
    """Rows as a multiset: a redelivery that straddles a fresh start is applied, and logged, twice."""
    return sorted(rows, key=lambda row: (row.order, repr(row)))


def messy_events(seed: int, count: int = 240) -> list:
    return messy_stream(seed, count, users=6, items=30, block=4)


def run_user_stage(records, cuts: list[int], days: list[int], crash: tuple[int, int] | None):
    """Feed `records` in batches split at `cuts`, batch n on day `days[n]`; with `crash` =
    (checkpoint after batch c, killed after batch k), the lines since the checkpoint are lost and a
    new operator restored from it takes the batches again. Returns the committed lines and the day
    each record was applied on."""
    bounds = [0, *sorted(set(cuts)), len(records)]
    batches = [records[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    state, saved = KeyedState(), (KeyedState(), 0)
    operator, committed, pending, applied_on = user_stage(state), [], [], {}
    n = 0
    while n < len(batches):
        day = days[min(n, len(days) - 1)]
        operator.sample_log.clock = lambda day=day: DAY0_S + day * DAY_S + 3600
        pending += sample_lines(operator.process_element(batch_of(batches[n]), None))
        applied_on.update({record[2] + 1000 * record[1]: day for record in batches[n]})
        if crash is not None and n == crash[0]:
            committed, pending, saved = committed + pending, [], (state.checkpoint(), n + 1)
        if crash is not None and n == crash[1]:
            crash, pending = None, []
            state, n = saved[0].checkpoint(), saved[1]
            operator = user_stage(state)
            continue
        n += 1
    return committed + pending, applied_on


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    cuts=st.lists(st.integers(1, 300), max_size=12),
    day_steps=st.lists(st.integers(0, 1), min_size=1, max_size=14),
    crash=st.none() | st.tuples(st.integers(0, 6), st.integers(0, 6)).map(sorted).map(tuple),
)
def test_the_committed_log_folds_back_to_the_rows_of_the_events_across_batches_days_and_crashes(
    seed, cuts, day_steps, crash
):
    events = messy_events(seed)
    days = [sum(day_steps[: n + 1]) for n in range(len(day_steps))]

    lines, _ = run_user_stage(kafka_records(events), cuts, days, crash)
    rows, report = fold_sample_log(lines)

    assert in_order(rows) == in_order(sample_rows(events, FeatureSpec()))
    assert (report.gaps, report.mismatched_snapshots, report.before_window) == (0, 0, 0)


def test_after_a_fresh_start_the_log_follows_the_state_the_stream_rebuilt_not_the_one_before():
    events = messy_events(11)
    records = kafka_records(events)
    half = len(records) // 2
    first, _ = run_user_stage(records[:half], [40], [0], None)
    second, _ = run_user_stage(records[half:], [40], [0], None)  # `--fresh`: no state, same day

    rows, report = fold_sample_log(first + second)

    expected = [*sample_rows(events[:half], FeatureSpec()), *sample_rows(events[half:], FeatureSpec())]
    assert in_order(rows) == in_order(expected) and report.gaps == 0


def test_a_lost_event_line_shows_as_a_gap():
    lines, _ = run_user_stage(kafka_records(messy_events(3)), [50, 120], [0], None)
    event_lines = [n for n, line in enumerate(lines) if line.startswith(b'["e"')]
    del lines[event_lines[len(event_lines) // 2]]

    _, report = fold_sample_log(lines)

    assert report.gaps > 0


def test_a_window_holds_the_rows_of_events_applied_on_its_days_each_with_the_full_state_before_it():
    events = messy_events(5)
    records = kafka_records(events)
    lines, applied_on = run_user_stage(records, [80, 160], [0, 1, 2], None)
    offsets: dict[str, int] = {}  # of each event's first delivery: a redelivery is dropped, not applied
    for event, (_, partition, offset) in zip(events, records, strict=True):
        offsets.setdefault(event.event_id, offset + 1000 * partition)

    rows, report = fold_sample_log(lines, since=FIRST_DAY + timedelta(days=1))

    expected = [row for row in sample_rows(events, FeatureSpec()) if applied_on[offsets[row.event.event_id]] >= 1]
    assert in_order(rows) == in_order(expected) and 0 < len(expected) < len(list(sample_rows(events, FeatureSpec())))
    assert report.before_window > 0 and report.gaps == 0


def write_day(directory, day: date, name: str, lines: list[bytes]) -> None:
    folder = directory / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\n".join(lines) + b"\n")


def test_reading_a_window_finds_a_snapshot_the_sink_put_in_the_day_before_and_skips_files_in_progress(tmp_path):
    events = messy_events(8, count=60)
    lines, _ = run_user_stage(kafka_records(events), [], [0], None)
    today = sample_log.today()
    first_snapshot = next(n for n, line in enumerate(lines) if line.startswith(b'["s"'))
    snapshot = orjson.loads(lines[first_snapshot])
    snapshot[5] = today.isoformat()  # the operator's clock said today; the sink's, yesterday
    skewed = [*lines[:first_snapshot], orjson.dumps(snapshot)]
    rest = [line.replace(b'"2026-01-01"', f'"{today.isoformat()}"'.encode()) for line in lines[first_snapshot + 1 :]]
    write_day(tmp_path, today - timedelta(days=1), "events-a-0-0.jsonl", skewed)
    write_day(tmp_path, today, "events-a-0-1.jsonl", rest)
    write_day(tmp_path, today, ".events-a-0-2.jsonl.inprogress.x", [b"not even json"])

    rows, report, files = samples.read_window(tmp_path, days=1)

    assert files == 2 and report.gaps == 0
    assert in_order(rows) == in_order(sample_rows(events, FeatureSpec()))


def with_spec(line: bytes, spec: FeatureSpec) -> bytes:
    """A snapshot's line as if the stream ran with `spec`; other lines as they are."""
    record = orjson.loads(line)
    if record[0] == sample_log.SNAPSHOT:
        record[6] = spec.model_dump(mode="json")
    return orjson.dumps(record)


def test_each_user_is_folded_with_the_feature_spec_its_snapshot_records():
    events, short = messy_events(5, count=120), FeatureSpec(sequence_length=3)
    lines, _ = run_user_stage(kafka_records(events), [], [0], None)

    rows, report = fold_sample_log([with_spec(line, short) for line in lines])

    assert report.feature_specs == [short]
    assert in_order(rows) == in_order(sample_rows(events, short)) != in_order(sample_rows(events, FeatureSpec()))


def test_the_user_stage_records_the_feature_spec_it_runs_with_and_the_fold_applies_it():
    events, settings = messy_events(7, count=120), Settings(sequence_length=4, seen_capacity=9)
    operator = user_stage(KeyedState(), settings)
    operator.sample_log.clock = lambda: DAY0_S

    rows, report = fold_sample_log(sample_lines(operator.process_element(batch_of(kafka_records(events)), None)))

    assert report.feature_specs == [settings.pipeline.features] != [FeatureSpec()]
    assert in_order(rows) == in_order(sample_rows(events, settings.pipeline.features))


def test_a_window_written_with_two_feature_specs_is_refused_for_training_by_name(tmp_path):
    lines, _ = run_user_stage(kafka_records(messy_events(6, count=60)), [], [0], None)
    today = sample_log.today().isoformat().encode()
    first = next(n for n, line in enumerate(lines) if line.startswith(b'["s"'))
    lines[first] = with_spec(lines[first], FeatureSpec(seen_capacity=7))
    write_day(
        tmp_path, sample_log.today(), "events-a-0-0.jsonl", [line.replace(b"2026-01-01", today) for line in lines]
    )

    with pytest.raises(FeatureSpecsMixed, match=re.escape("2 feature specs (seen_capacity 7 -> 2000)")):
        read_sample_log(tmp_path, window_days=1, max_rows=1000)
    assert read_sample_log(tmp_path.parent / "absent", 1, 1000) == ([], None)


def test_prune_deletes_only_the_days_beyond_the_retention(tmp_path):
    today = sample_log.today()
    for age in range(5):
        write_day(tmp_path, today - timedelta(days=age), "events-a-0-0.jsonl", [b"[]"])

    dropped = sample_log.prune(tmp_path, keep_days=3)

    assert dropped == [today - timedelta(days=4), today - timedelta(days=3)]
    assert [day for day, _ in sample_log.day_directories(tmp_path)] == [today - timedelta(days=n) for n in (2, 1, 0)]


def complete_checkpoint(checkpoints, number: int, job: str = "job") -> None:
    """As Flink does with one checkpoint retained: the new one's metadata appears, the previous one goes."""
    for previous in checkpoints.glob("*/chk-*"):
        shutil.rmtree(previous)
    (checkpoints / job / f"chk-{number}").mkdir(parents=True)
    (checkpoints / job / f"chk-{number}" / "_metadata").touch()


def test_a_file_unchanged_while_three_checkpoints_complete_is_an_orphan_and_one_being_written_is_not():
    watch, dead, live = OrphanWatch(), Path("dead"), Path("live")
    polls = [  # (the live file's signature, the checkpoints then) -> completions since the dead file was seen
        ((1, 10), {"j/chk-1"}),  # first sight: 0
        ((2, 20), {"j/chk-1"}),  # no new checkpoint: 0
        ((3, 30), {"j/chk-2"}),  # 1
        ((4, 40), {"j/chk-3"}),  # 2
    ]
    for signature, checkpoints in polls:
        assert watch.observe({dead: (5, 50), live: signature}, checkpoints) == []

    assert watch.observe({dead: (5, 50), live: (5, 55)}, {"j/chk-4"}) == [dead]  # 3


def test_a_change_restarts_the_count_and_a_restored_job_s_checkpoints_count_as_completions():
    watch, file = OrphanWatch(), Path("part")
    assert watch.observe({file: (1, 1)}, set()) == []
    assert watch.observe({file: (1, 1)}, {"a/chk-1"}) == []  # 1
    assert watch.observe({file: (2, 2)}, {"a/chk-2"}) == []  # changed: counts from 2
    assert watch.observe({file: (2, 2)}, {"b/chk-3"}) == []  # a new job restored from chk-2: 1
    assert watch.observe({file: (2, 2)}, {"b/chk-3", "b/chk-4"}) == []  # Flink is slow to delete chk-3: 2
    assert watch.observe({file: (2, 2)}, {"b/chk-5"}) == [file]  # 3


def test_a_file_seen_late_counts_from_its_own_sighting_and_a_committed_one_is_forgotten():
    watch, early, late = OrphanWatch(), Path("early"), Path("late")
    watch.observe({early: (1, 1)}, {"j/chk-1"})
    watch.observe({early: (1, 1)}, {"j/chk-2"})
    watch.observe({early: (1, 1), late: (1, 1)}, {"j/chk-3"})
    assert watch.observe({late: (1, 1)}, {"j/chk-4"}) == []  # early was committed: 3 for it, 1 for late
    assert watch.observe({early: (1, 1), late: (1, 1)}, {"j/chk-5"}) == []  # a new file of the same name: 0

    assert watch.observe({early: (1, 1), late: (1, 1)}, {"j/chk-6"}) == [late]


def test_only_checkpoints_whose_metadata_is_written_are_completed(tmp_path):
    complete_checkpoint(tmp_path, 4, job="a")
    (tmp_path / "a" / "chk-5").mkdir()  # being written
    (tmp_path / "a" / "shared").mkdir()
    complete_checkpoint(tmp_path / "old", 9, job="b")

    assert completed_checkpoints(tmp_path.as_uri()).keys() == {f"{tmp_path}/a/chk-4"}  # not old/b/chk-9: too deep
    assert completed_checkpoints((tmp_path / "missing").as_uri()) == {}


def test_the_keeper_deletes_what_a_dead_task_left_in_progress_and_keeps_what_is_being_written(tmp_path):
    log_dir, checkpoints, today = tmp_path / "log", tmp_path / "checkpoints", sample_log.today()
    day = log_dir / f"dt={today.isoformat()}"
    write_day(log_dir, today, ".events-a-0-3.jsonl.inprogress.x", [b"lost"])
    write_day(log_dir, today, ".events-b-0-0.jsonl.inprogress.y", [b"being written"])
    complete_checkpoint(checkpoints, 1)
    keeper = SampleLogKeeper(log_dir, checkpoints.as_uri(), retention_days=30, poll_s=0.02)
    keeper.start()
    try:
        # chk-1 or chk-2 is the keeper's first sight, depending on when its thread starts: 3 arrivals by chk-5.
        for number in range(2, 6):
            complete_checkpoint(checkpoints, number)
            with (day / ".events-b-0-0.jsonl.inprogress.y").open("ab") as live:
                live.write(b"x")
            time.sleep(0.3)
            if number == 3:
                after_two = sample_log.in_progress_files(log_dir)
    finally:
        keeper.stop()
        keeper.join()

    assert len(after_two) == 2
    assert sample_log.in_progress_files(log_dir) == [day / ".events-b-0-0.jsonl.inprogress.y"]


def test_the_keeper_keeps_the_retention_and_after_a_finished_job_deletes_whatever_is_in_progress(tmp_path):
    log_dir, today = tmp_path / "log", sample_log.today()
    write_day(log_dir, today - timedelta(days=40), "events-a-0-0.jsonl", [b"[]"])
    write_day(log_dir, today, ".events-old-0-3.jsonl.inprogress.x", [b"left over"])
    keeper = SampleLogKeeper(log_dir, (tmp_path / "checkpoints").as_uri(), retention_days=30, poll_s=0.02)
    keeper.start()
    deadline = time.monotonic() + 10
    while len(sample_log.day_directories(log_dir)) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    keeper.stop()
    keeper.join()
    kept_in_progress = sample_log.in_progress_files(log_dir)

    keeper.delete_leftovers()

    assert [day for day, _ in sample_log.day_directories(log_dir)] == [today]
    assert len(kept_in_progress) == 1 and sample_log.in_progress_files(log_dir) == []


@pytest.mark.parametrize("before_version", [0, 3])
def test_a_user_without_state_is_snapshotted_even_when_seen_today(before_version):
    from schemas.features import UserState
    from schemas.sample_log import SampleLogLines
    from tests.unit.test_streaming import event

    lines = SampleLogLines(FeatureSpec(), clock=lambda: DAY0_S)
    lines.start_batch()
    lines.add(UserState(version=2), event("a", DAY0_S * 1000), 0, 1, 3)
    lines.add(UserState(version=before_version), event("b", DAY0_S * 1000), 0, 2, before_version + 1)

    kinds = [line[2] for line in lines.take().split("\n")]
    assert kinds == (["s", "e", "s", "e"] if before_version == 0 else ["s", "e", "e"])
