"""The stream benchmark's real-history workload has the shape its name promises."""

from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

from infra.benches.stream import ACTIVE_SESSIONS, PROJECT_ROOT, Workload, live_events
from schemas.events import EventType
from streams.publish import Pacer
from tests.unit.test_publish import FakeClock

SEQUENCE_LENGTH = 50


def test_real_histories_fill_heavy_users_sequences_and_seen_sets_while_most_users_add_a_few_events():
    events = list(Workload("real", users=20_000).events(60_000, seed=3))
    per_user = Counter(event.user_id for event in events)
    seen: dict[str, set[str]] = defaultdict(set)
    for event in events:
        seen[event.user_id].add(event.item_id)

    at_cap = sum(count for count in per_user.values() if count >= SEQUENCE_LENGTH)
    assert at_cap / len(events) > 0.5  # most events land on users whose sequences are full
    assert max(len(items) for items in seen.values()) > 1000
    assert sorted(per_user.values())[len(per_user) // 2] < SEQUENCE_LENGTH // 2  # the median user: a few events
    assert {event.type for event in events} == {EventType.CLICK, EventType.RATING, EventType.PLAY}
    assert len({event.event_id for event in events}) == len(events)


def test_real_histories_interleave_sessions_so_a_users_events_arrive_in_bursts_among_others():
    events = list(Workload("real", users=20_000).events(10_000, seed=4))
    same_user_in_a_row = sum(a.user_id == b.user_id for a, b in pairwise(events))
    every_active_later = sum(a.user_id == b.user_id for a, b in zip(events, events[ACTIVE_SESSIONS:], strict=False))

    assert same_user_in_a_row < len(events) * 0.1  # not one user's session after another
    assert every_active_later > len(events) * 0.8  # each slot keeps its user for a session


def test_this_codes_job_runs_from_the_checkout_root():
    assert Path(__file__).resolve().parents[2] == PROJECT_ROOT


def test_a_live_event_is_stamped_when_its_turn_to_be_sent_comes_not_before_it_waits():
    clock = FakeClock()  # at 100 s
    pacer = Pacer(rate=10, clock=clock, sleep=clock.sleep)
    events = live_events(Workload("real", users=100), 3, seed=1, pacer=pacer, now_ms=lambda: round(clock() * 1000))
    # At 10 events/s event n is due n / 10 s after the start: 100.0, 100.1 and 100.2 s.
    assert [event.ts for event in events] == [100_000, 100_100, 100_200]
