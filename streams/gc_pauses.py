"""Python's garbage collection in the job's interpreter: its pauses, for the Redis writer's log line
(every operator's batch in that interpreter waits through them, so a long one shows in freshness),
and the per-batch collection that keeps them short."""

import gc
import time
from collections.abc import Callable


class GcPauses:
    """The collections since the last `take` and the longest of them, observed through
    `gc.callbacks` between `open` and `close`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.started: float | None = None
        self.count = 0
        self.longest_ms = 0.0

    def open(self) -> None:
        gc.callbacks.append(self.observe)

    def close(self) -> None:
        if self.observe in gc.callbacks:
            gc.callbacks.remove(self.observe)

    def observe(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.started = self.clock()
        elif self.started is not None:
            self.count += 1
            self.longest_ms = max(self.longest_ms, (self.clock() - self.started) * 1000)
            self.started = None

    def take(self) -> str:
        """'python gc: N collections, longest X ms' since the last take; starts counting anew."""
        text = f"python gc: {self.count} collections, longest {self.longest_ms:,.0f} ms"
        self.count, self.longest_ms = 0, 0.0
        return text


def collect_and_freeze() -> None:
    """Collect the garbage among the objects made since the last call, then freeze the survivors.

    The job holds every active user's and item's state, over a million objects with 100,000 users,
    and Python's full collections walked them all (README, Stream performance). Frozen objects are
    never walked again; they are still freed by their reference counts when a state is replaced
    (the states hold no reference cycles), and the cycles a batch makes and drops are collected
    here, so only what lives through this call is frozen. The collection walks only what was made
    since the last freeze: a batch's worth."""
    gc.collect()
    gc.freeze()
