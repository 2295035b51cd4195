"""MicroBatcher with a real thread pool and a work function that can be held busy."""

import asyncio
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest

from serving.batcher import MicroBatcher


class Work:
    """Doubles each request; the first call blocks until `release`, so later requests queue."""

    def __init__(self):
        self.calls: list[tuple[str, list[int]]] = []
        self.release, self.first_started = threading.Event(), threading.Event()

    def __call__(self, key: str, requests: list[int]) -> list[int]:
        self.calls.append((key, requests))
        if len(self.calls) == 1:
            self.first_started.set()
            self.release.wait(5)
        if -1 in requests:
            raise ValueError("bad request in batch")
        return [2 * request for request in requests]


async def _serve(work: Work, submissions: list[tuple[str, int]], max_batch: int = 3, cancel: int | None = None):
    """Submit the first request, wait until its call runs, queue the rest, then release the work."""
    waits: list[list[float]] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = MicroBatcher(work, executor, workers=1, max_batch=max_batch, on_batch=waits.append)
        runner = asyncio.create_task(batcher.run())
        answers = [asyncio.create_task(batcher.submit(*submissions[0]))]
        await asyncio.get_running_loop().run_in_executor(None, work.first_started.wait, 5)
        answers += [asyncio.create_task(batcher.submit(*submission)) for submission in submissions[1:]]
        await asyncio.sleep(0.01)  # all submitted and queued
        if cancel is not None:
            answers[cancel].cancel()
        work.release.set()
        results = await asyncio.gather(*answers, return_exceptions=True)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
    return results, waits


def test_idle_requests_run_alone_at_once_and_queued_ones_in_batches_of_at_most_max_batch():
    work = Work()

    results, waits = asyncio.run(_serve(work, [("v1", n) for n in range(6)]))

    assert results == [0, 2, 4, 6, 8, 10]
    assert work.calls == [("v1", [0]), ("v1", [1, 2, 3]), ("v1", [4, 5])]
    assert [len(batch) for batch in waits] == [1, 3, 2] and all(wait >= 0 for batch in waits for wait in batch)


def test_a_batch_never_mixes_keys_and_other_keys_keep_their_order():
    work = Work()

    results, _ = asyncio.run(_serve(work, [("v1", 0), ("v1", 1), ("v2", 2), ("v1", 3), ("v2", 4)]))

    assert results == [0, 2, 4, 6, 8]
    assert work.calls == [("v1", [0]), ("v1", [1, 3]), ("v2", [2, 4])]


def test_a_failing_call_fails_its_own_requests_only():
    work = Work()

    results, _ = asyncio.run(_serve(work, [("v1", 0), ("v1", 1), ("v1", -1), ("v2", 3)]))

    assert results[0] == 0 and results[3] == 6
    assert all(isinstance(result, ValueError) for result in results[1:3])


def test_a_request_cancelled_while_queued_is_never_computed():
    work = Work()

    results, _ = asyncio.run(_serve(work, [("v1", 0), ("v1", 1), ("v1", 2)], cancel=1))

    assert isinstance(results[1], asyncio.CancelledError) and results[2] == 4
    assert work.calls == [("v1", [0]), ("v1", [2])]


@pytest.mark.parametrize("max_batch", [1, 8])
def test_every_request_is_answered_once_whatever_the_batch_limit(max_batch):
    work = Work()

    results, waits = asyncio.run(_serve(work, [("v1", n) for n in range(20)], max_batch=max_batch))

    assert results == [2 * n for n in range(20)]
    assert sum(map(len, waits)) == 20 and max(map(len, waits)) == min(max_batch, 19)


class Bundle:
    """A batch key that can be watched for being freed."""


def test_once_answered_a_batch_leaves_no_reference_to_its_key():
    async def scenario() -> None:
        bundle = Bundle()
        alive = weakref.ref(bundle)
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(lambda key, requests: requests, executor, workers=2, max_batch=4)
            runner = asyncio.create_task(batcher.run())
            assert await batcher.submit(bundle, 7) == 7
            del bundle
            await asyncio.sleep(0.01)  # the batcher is idle again, waiting for the next request
            assert alive() is None  # freed by reference counting: no collection needed
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)

    asyncio.run(scenario())


def test_the_batcher_is_idle_only_while_no_request_waits_for_a_model_thread():
    async def run() -> list[bool]:
        work, seen = Work(), []
        with ThreadPoolExecutor(1) as executor:
            batcher = MicroBatcher(work, executor, workers=1, max_batch=3)
            runner = asyncio.create_task(batcher.run())
            seen.append(batcher.idle)
            first = asyncio.create_task(batcher.submit("v1", 1))
            await asyncio.get_running_loop().run_in_executor(None, work.first_started.wait, 5)
            seen.append(batcher.idle)  # the one request runs: none waits
            second = asyncio.create_task(batcher.submit("v1", 2))
            await asyncio.sleep(0.01)
            seen.append(batcher.idle)  # the second waits for the busy thread
            work.release.set()
            await asyncio.gather(first, second)
            seen.append(batcher.idle)
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        return seen

    assert asyncio.run(run()) == [True, True, False, True]
