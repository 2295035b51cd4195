from serving.clock import EventClock

WALL_S = 1_764_900_000.0  # 2025-12-05
HISTORY_END_MS = 1_537_800_000_000  # 2018-09-24, MovieLens's newest rating


class Clocks:
    def __init__(self):
        self.monotonic, self.wall = 100.0, WALL_S

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds


def clock_and_time() -> tuple[EventClock, Clocks]:
    clocks = Clocks()
    return EventClock(lambda: clocks.monotonic, lambda: clocks.wall), clocks


def test_the_clock_is_the_wall_clock_until_an_event_time_is_observed():
    clock, _ = clock_and_time()
    assert clock.now_ms() == 1_764_900_000_000


def test_a_replayed_history_sets_the_clock_to_its_newest_event_then_it_runs_with_the_wall_clock():
    clock, clocks = clock_and_time()
    clock.observe(HISTORY_END_MS)
    assert clock.now_ms() == HISTORY_END_MS
    clocks.advance(60.0)
    assert clock.now_ms() == HISTORY_END_MS + 60_000


def test_the_clock_never_runs_backwards_and_never_past_the_wall_clock():
    clock, clocks = clock_and_time()
    clock.observe(HISTORY_END_MS)
    clocks.advance(10.0)
    clock.observe(HISTORY_END_MS + 4_000)  # read 10 s later, moved 4 s: the clock stays 10 s ahead
    assert clock.now_ms() == HISTORY_END_MS + 10_000
    clock.observe(1_764_900_010_000 - 250)  # live traffic: 250 ms behind the wall clock
    assert clock.now_ms() == 1_764_900_010_000 - 250
    clock.observe(1_764_900_010_000 + 5_000)  # an app's clock 5 s ahead
    assert clock.now_ms() == 1_764_900_010_000
