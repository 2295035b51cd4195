"""Python's garbage-collection pauses in the job's interpreter, for the Redis writer's log line:
every operator's batch in that interpreter waits through them, so a long one shows in freshness."""

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
