import pytest
from rich.progress import Progress

from schemas.events import Event
from streams.publish import Pacer, publish


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def event(n: int, ts: int) -> Event:
    return Event(event_id=f"e{n}", user_id=f"u{n % 3}", item_id="i", type="click", ts=ts)


def test_a_rate_spaces_records_evenly():
    clock = FakeClock()
    pacer = Pacer(rate=200, clock=clock, sleep=clock.sleep)

    for index in range(5):
        pacer.wait(index, None)

    assert clock.sleeps == pytest.approx([0.005] * 4)


def test_a_speedup_replays_event_time_gaps_k_times_faster():
    clock = FakeClock()
    pacer = Pacer(speedup=60, clock=clock, sleep=clock.sleep)

    for index, ts in enumerate([1_700_000_000_000, 1_700_000_060_000, 1_700_000_060_000, 1_700_000_360_000]):
        pacer.wait(index, ts)

    assert clock.sleeps == pytest.approx([1.0, 5.0])  # a minute of history in a second, then five minutes in five


def test_no_pacing_never_sleeps_and_conflicting_pacing_is_refused():
    clock = FakeClock()
    Pacer(clock=clock, sleep=clock.sleep).wait(10_000, 1_700_000_000_000)

    assert clock.sleeps == []
    with pytest.raises(ValueError, match="not both"):
        Pacer(rate=1, speedup=1)


class FakeProducer:
    """Acknowledges every record but those whose key is in `refuse`, which fail as the broker would report."""

    def __init__(self, refuse: set[bytes]):
        self.refuse, self.pending, self.sent = refuse, [], []

    def produce(self, topic, key, value, on_delivery):
        self.pending.append((key, value, on_delivery))

    def poll(self, timeout):
        self.flush()

    def flush(self):
        for key, value, on_delivery in self.pending:
            on_delivery("broker said no" if key in self.refuse else None, None)
            self.sent.append((key, value))
        self.pending = []


def test_publish_counts_acknowledged_and_failed_records_by_key():
    producer = FakeProducer(refuse={b"u1"})
    events = [event(n, 1_700_000_000_000 + n) for n in range(9)]

    summary = publish(events, producer, "events", Pacer(), Progress(disable=True))

    assert (summary.attempted, summary.sent, summary.failed) == (9, 6, 3)
    assert summary.first_error == "broker said no"
    assert producer.sent == [(e.kafka_key, e.to_json()) for e in events]
