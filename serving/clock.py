"""A request's "now": the stream's event-time clock, the one training and evaluation use (a
sample's ages are counted from its own event's time), instead of the wall clock. For live traffic
the two agree to within the stream's lag; for a replayed history (MovieLens's 1996-2018 ratings)
the wall clock would make every behaviour years older than any age the models learnt from."""

import time
from collections.abc import Callable


class EventClock:
    """The newest event time observed (the trending list's `as_of`: every event moves it), advanced by
    the time since it was observed, and never past the wall clock. It never runs backwards: of all
    observations, the one that puts the clock furthest ahead counts."""

    def __init__(self, monotonic_s: Callable[[], float] = time.monotonic, wall_s: Callable[[], float] = time.time):
        self._monotonic_s, self._wall_s = monotonic_s, wall_s
        self._ahead_of_monotonic_ms: float | None = None

    def observe(self, event_time_ms: int) -> None:
        ahead = event_time_ms - self._monotonic_s() * 1000
        if self._ahead_of_monotonic_ms is None or ahead > self._ahead_of_monotonic_ms:
            self._ahead_of_monotonic_ms = ahead

    def now_ms(self) -> int:
        """Epoch ms: the wall clock until an event time was observed."""
        wall = self._wall_s() * 1000
        if self._ahead_of_monotonic_ms is None:
            return int(wall)
        return int(min(wall, self._monotonic_s() * 1000 + self._ahead_of_monotonic_ms))
