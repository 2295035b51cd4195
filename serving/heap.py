"""When the service lets Python's cyclic garbage collector run, so that it never stops a request.

Each collection holds the GIL: every thread and the event loop wait it out, and a request waiting
through it can miss its Redis or model budget and fall back. So:
- at start, everything imported (the libraries' objects) is frozen out of the collector's reach:
  full collections then walk only the live bundles and what requests leave;
- after a model swap, the swapped-out bundle is freed by one collection run at a moment when no
  request is in flight, so it delays only requests that arrive during it, and their budgets start
  after it.
"""

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("kingfisher.serving")
COLLECTION_THRESHOLDS = (20_000, 20, 20)
"""gc.set_threshold after the freeze: a request leaves a few hundred short-lived containers, so
Python's default (700, 10, 10) collected the young generation every few requests, each time under
the GIL every thread waits for (README, Garbage collection)."""


class InFlight:
    """How many requests the service is answering, and a wait for a moment with none."""

    def __init__(self) -> None:
        self.count = 0
        self._none = asyncio.Event()
        self._none.set()

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        self.count += 1
        self._none.clear()
        try:
            yield
        finally:
            self.count -= 1
            if self.count == 0:
                self._none.set()

    async def quiet(self, patience_s: float) -> bool:
        """Return once no request is in flight (True), or after `patience_s` (False). The caller
        must act before its next `await`: any later moment may have requests again."""
        deadline = asyncio.get_running_loop().time() + patience_s
        while self.count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._none.wait(), remaining)
        return True


def freeze_imports() -> None:
    """Collect once, then freeze every object alive: call at start, before any bundle is loaded,
    so that bundles stay collectable."""
    clock = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*COLLECTION_THRESHOLDS)
    log.info("%d objects frozen out of garbage collection in %.0f ms", gc.get_freeze_count(), _ms_since(clock))


async def collect_when_quiet(in_flight: InFlight, patience_s: float) -> None:
    """Free what a swap left behind at the first moment without requests (after `patience_s` of
    constant traffic, at once), and hand the freed memory back to the operating system."""
    waited = time.perf_counter()
    quiet = await in_flight.quiet(patience_s)
    clock = time.perf_counter()
    freed = gc.collect()
    _return_free_memory()
    log.info(
        "%d objects of swapped-out models collected in %.0f ms, %s after %.1f s",
        freed,
        _ms_since(clock),
        "no request in flight" if quiet else f"{in_flight.count} requests in flight",
        clock - waited,
    )


def _return_free_memory() -> None:
    # glibc keeps freed heap pages mapped; malloc_trim unmaps them (elsewhere there is nothing to do).
    if libc_name := ctypes.util.find_library("c"):
        trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _ms_since(clock: float) -> float:
    return (time.perf_counter() - clock) * 1000
