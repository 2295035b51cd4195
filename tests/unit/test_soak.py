"""The soak's verdicts, with hand-computed numbers: memory growth after the warm-up, events lost
or counted twice, and the targets it reports as missed."""

import time
from collections import Counter

import pytest

from infra.benches.soak import Load, Retraining, Sample, Soak, Tally, misses, rss_growth, tally
from schemas.config import Settings


def sample(at_s: float, service_mb: float) -> Sample:
    return Sample(at_s, {"service": service_mb}, 1.0, 0, 1, 10, 0, 0, 10, 5.0)


def test_memory_growth_compares_the_window_after_warm_up_with_the_last_window():
    # warm-up 60 s, windows of 60 s; the 500 MB spike during warm-up does not count.
    samples = [sample(30, 500), sample(60, 100), sample(90, 110), sample(120, 115), sample(150, 125), sample(180, 135)]

    # first window: 60, 90 -> mean 105; last window (after 120): 150, 180 -> mean 130; 130 / 105 - 1.
    assert rss_growth(samples, "service", warm_up_s=60, window_s=60) == pytest.approx(25 / 105)


def test_memory_growth_is_unknown_without_samples_after_warm_up():
    assert rss_growth([sample(30, 100)], "service", warm_up_s=60, window_s=60) is None
    assert rss_growth([sample(90, 100)], "feature-job", warm_up_s=60, window_s=60) is None


def test_events_lost_and_counted_twice_are_told_apart_from_unsure_ones():
    acknowledged = Counter({"a": 10, "b": 5, "c": 3})
    unsure = Counter({"b": 2})  # b's last batch got no answer: 5 to 7 events may be in Kafka
    counted = {"a": 9, "b": 7, "c": 4}

    # a: 1 lost; b: within acknowledged + unsure; c: 1 more than acknowledged and unsure allow.
    assert tally(acknowledged, unsure, counted) == Tally(acknowledged=18, unsure=2, lost=1, extra=1)


def test_a_user_the_stream_never_saw_loses_all_their_acknowledged_events():
    assert tally(Counter({"a": 4}), Counter(), {}) == Tally(acknowledged=4, unsure=0, lost=4, extra=0)


def test_every_missed_target_is_named():
    published = Retraining(started_s=60, finished_s=200, exit_code=0, version=2)
    clean = Tally(acknowledged=100, unsure=0, lost=0, extra=0)

    assert misses({"service": 0.099, "feature-job": -0.2}, 0, clean, published, Counter({1: 5, 2: 1})) == []
    assert misses({}, 0, clean, published, Counter({1: 6})) == [
        "no answer came from the new v2 under the load (it was published too late)"
    ]
    found = misses({"service": 0.10, "feature-job": None}, 3, Tally(100, 0, 2, 0), Retraining(exit_code=1), Counter())
    assert found == [
        "service: resident memory grew 10.0% (target < 10%)",
        "feature-job: no resident memory measured after the warm-up",
        "3 requests or event batches failed (target 0)",
        "2 acknowledged events lost, 0 counted twice (target 0)",
        "the retraining published nothing (exit code 1)",
    ]


def soak_at(elapsed_s: float, after_swap_s: float | None, tmp_path) -> Soak:
    """A 3-minute soak `elapsed_s` into its load, whose retraining published v3."""
    run = Soak(Settings(), Load(3, 50, 10, 5, 0.1, 0.1, 5, after_swap_s), tmp_path)
    run.started, run.retraining.version = time.monotonic() - elapsed_s, 3
    return run


def test_the_load_ends_the_given_seconds_after_the_first_answer_from_the_retrainings_version(tmp_path):
    run = soak_at(100, 20, tmp_path)

    run.end_after_swap(2)  # the version before: the end stays
    assert run.ends_s == 180
    run.end_after_swap(3)
    assert run.ends_s == pytest.approx(120, abs=1)
    run.started -= 30  # a later answer from v3 does not move the end again
    run.end_after_swap(3)
    assert run.ends_s == pytest.approx(120, abs=1)


def test_the_load_runs_its_minutes_without_an_end_after_the_swap_and_never_past_them(tmp_path):
    unset = soak_at(100, None, tmp_path)
    unset.end_after_swap(3)
    assert unset.ends_s == 180

    late = soak_at(170, 20, tmp_path)  # 170 + 20 is past the 3 minutes
    late.end_after_swap(3)
    assert late.ends_s == 180
