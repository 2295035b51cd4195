"""Micro-batching of concurrent model calls.

Idle, a request runs at once and alone: no waiting window. Under load, requests queue while the
model threads are busy, and each thread that frees up takes all waiting requests (up to
`max_batch`) for the same key into one call. So batches grow with the load, and a batch never
mixes keys: the service's key is the model bundle a request started with, so in-flight requests
finish on the old bundle after a swap.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")
Q = TypeVar("Q")
R = TypeVar("R")


@dataclass
class _Waiting(Generic[K, Q, R]):
    key: K
    request: Q
    answer: asyncio.Future
    since: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[K, Q, R]):
    """`await submit(key, request)` answers `work(key, [..., request, ...])[i]` for its place i.

    `work` runs in `executor`, on at most `workers` batches at a time; it must return one result
    per request, in order. `on_batch` receives the seconds each request of a batch waited."""

    def __init__(
        self,
        work: Callable[[K, list[Q]], list[R]],
        executor: Executor,
        workers: int,
        max_batch: int,
        on_batch: Callable[[list[float]], None] = lambda waits: None,
    ):
        self._work, self._executor, self._max_batch, self._on_batch = work, executor, max_batch, on_batch
        self._workers = workers
        self._waiting: deque[_Waiting[K, Q, R]] = deque()
        self._arrived = asyncio.Event()

    @property
    def idle(self) -> bool:
        """No request waits for a model thread."""
        return not self._waiting

    async def submit(self, key: K, request: Q) -> R:
        waiting = _Waiting(key, request, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._arrived.set()
        return await waiting.answer

    async def run(self) -> None:
        """Serve submissions until cancelled; then every unanswered request is cancelled too."""
        try:
            await asyncio.gather(*(self._serve() for _ in range(self._workers)))
        finally:
            for waiting in self._waiting:
                waiting.answer.cancel()

    async def _serve(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            await self._answer(batch)

    async def _answer(self, batch: list[_Waiting[K, Q, R]]) -> None:
        # A function of its own so that nothing of a batch (its key: a model bundle) outlives it.
        now = time.perf_counter()
        self._on_batch([now - waiting.since for waiting in batch])
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._work, batch[0].key, [waiting.request for waiting in batch]
            )
        except asyncio.CancelledError:
            for waiting in batch:
                waiting.answer.cancel()
            raise
        except Exception as error:  # the batch's requests fail with it; the batcher goes on
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            return
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.answer.done():  # the client may have gone meanwhile
                waiting.answer.set_result(result)

    def _take(self) -> list[_Waiting[K, Q, R]]:
        """The oldest live request and the next ones with its key, up to max_batch; others stay queued."""
        batch: list[_Waiting[K, Q, R]] = []
        kept: deque[_Waiting[K, Q, R]] = deque()
        while self._waiting and len(batch) < self._max_batch:
            waiting = self._waiting.popleft()
            if waiting.answer.done():  # cancelled while queued
                continue
            if batch and waiting.key is not batch[0].key:
                kept.append(waiting)
            else:
                batch.append(waiting)
        self._waiting.extendleft(reversed(kept))
        return batch
