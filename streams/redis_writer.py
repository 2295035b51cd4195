"""Writing feature state to Redis from inside Flink operators: coalesced, pipelined, never backwards.

Operators `put` a key's newest state with its version; a background thread flushes every
`flush_interval_ms`: per key only the newest state is encoded and written, all in one pipelined
round trip, each through the `UPSERT_IF_NOT_OLDER` compare-and-set. Redis is not part of Flink's
checkpoint: after a restart the job recomputes and rewrites, and the version check keeps that
idempotent. The thread also measures freshness: write time - event time, and - Kafka append time.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import redis

from schemas.redis_format import UPSERT_IF_NOT_OLDER

log = logging.getLogger(__name__)
REPORT_EVERY_S = 10.0


@dataclass
class PendingWrite:
    version: int
    encode: Callable[[], bytes]
    ttl_ms: int
    event_times: list[int] = field(default_factory=list)
    append_times: list[int] = field(default_factory=list)


@dataclass
class Freshness:
    """Write-time lags of the events written since the last report, in milliseconds."""

    since_event: list[int] = field(default_factory=list)
    since_append: list[int] = field(default_factory=list)
    writes: int = 0
    refused: int = 0

    def percentiles(self) -> dict[str, float]:
        result = {}
        for name, lags in (("event", self.since_event), ("append", self.since_append)):
            if lags:
                p50, p99 = np.percentile(lags, [50, 99])
                result |= {f"{name}_p50_ms": float(p50), f"{name}_p99_ms": float(p99)}
        return result


class RedisWriter:
    def __init__(self, host: str, port: int, flush_interval_ms: int, name: str):
        self.client = redis.Redis(host=host, port=port)
        self.upsert = self.client.register_script(UPSERT_IF_NOT_OLDER)
        self.flush_interval_s = flush_interval_ms / 1000
        self.name = name
        self.pending: dict[str, PendingWrite] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.freshness = Freshness()
        self.last_report = time.monotonic()
        self.latest: dict[str, float] = {}
        self.thread = threading.Thread(target=self._run, name=f"redis-writer-{name}", daemon=True)
        self.thread.start()

    def put(
        self, key: str, version: int, encode: Callable[[], bytes], ttl_ms: int, event_ts: int, append_ms: int | None
    ) -> None:
        """Queue the newest state of `key`; `encode` runs at flush time, once per key and flush."""
        with self.lock:
            write = self.pending.get(key)
            if write is None or version >= write.version:
                previous = write or PendingWrite(version, encode, ttl_ms)
                write = PendingWrite(version, encode, ttl_ms, previous.event_times, previous.append_times)
                self.pending[key] = write
            write.event_times.append(event_ts)
            if append_ms is not None:
                write.append_times.append(append_ms)

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, {}
        if not batch:
            return
        pipeline = self.client.pipeline(transaction=False)
        for key, write in batch.items():
            self.upsert(keys=[key], args=[write.version, write.encode(), write.ttl_ms], client=pipeline)
        try:
            results = pipeline.execute()
        except redis.RedisError:
            self._requeue(batch)
            raise
        now_ms = int(time.time() * 1000)
        self.freshness.writes += len(results)
        self.freshness.refused += results.count(0)
        for write in batch.values():
            self.freshness.since_event.extend(now_ms - ts for ts in write.event_times)
            self.freshness.since_append.extend(now_ms - ts for ts in write.append_times)

    def _requeue(self, batch: dict[str, PendingWrite]) -> None:
        with self.lock:
            for key, write in batch.items():
                if key not in self.pending:
                    self.pending[key] = write

    def _report(self) -> None:
        if time.monotonic() - self.last_report < REPORT_EVERY_S:
            return
        self.latest = self.freshness.percentiles()
        if self.freshness.writes:
            lags = ", ".join(f"{name} {value:,.0f}" for name, value in self.latest.items())
            log.info(
                "redis writer %s: %d keys written, %d refused as older; freshness (ms): %s",
                self.name, self.freshness.writes, self.freshness.refused, lags,
            )  # fmt: skip
        self.freshness = Freshness()
        self.last_report = time.monotonic()

    def _run(self) -> None:
        while not self.stopped.wait(self.flush_interval_s):
            try:
                self.flush()
                self._report()
            except redis.RedisError as error:
                log.warning("redis writer %s: flush failed (%s); retrying", self.name, error)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.flush()
        self.client.close()
