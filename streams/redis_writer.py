"""Writing feature state to Redis from inside Flink operators: coalesced, pipelined, never backwards.

Operators `put` an entity's newest state with its version and `add_seen` a user's new seen items
while they work through a batch, note each event they applied, and `flush` before the batch ends:
per key only the newest state goes to the feature store, which builds the keys, encodes the values
and writes them all in one round trip, through the
`WRITE_FEATURES` script (compare-and-set, and the seen sets' idempotent additions). Flushing
inside the batch means a checkpoint (taken between batches) never covers an event whose Redis
write is still pending, so a restart can only rewrite, never lose; the version check makes the
rewrite harmless.
While Redis is unreachable a flush retries, holding the job back rather than dropping writes.
The writer also measures freshness: write time - event time, and - Kafka append time; and, per
report, the batches noted, the largest, and the longest time between two (a stall before the
operator, where freshness alone cannot say which side of it the time went).
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from schemas.experiments import ExperimentTallies
from schemas.features import FeatureSpec, ItemState, TrendingState, UserState
from schemas.redis_format import TRENDING_ENTITY, KeyKind
from schemas.runtime.feature_store import EntityWrite, FeatureStore, SeenAddition
from schemas.runtime.streaming import trending_list
from streams.gc_pauses import GcPauses

log = logging.getLogger(__name__)
REPORT_EVERY_S = 10.0
RETRY_BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0)


@dataclass
class Freshness:
    """Write-time lags of the events written since the last report, in milliseconds."""

    since_event: list[int] = field(default_factory=list)
    since_append: list[int] = field(default_factory=list)
    writes: int = 0
    refused: int = 0
    batches: int = 0
    largest_batch: int = 0
    """Events in the largest batch noted."""
    longest_gap_ms: float = 0.0
    """The longest time between two batches noted: a stall before the operator shows here."""

    def percentiles(self) -> dict[str, float]:
        result = {}
        for name, lags in (("event", self.since_event), ("append", self.since_append)):
            if lags:
                p50, p99 = np.percentile(lags, [50, 99])
                result |= {f"{name}_p50_ms": float(p50), f"{name}_p99_ms": float(p99)}
        return result


class RedisWriter:
    def __init__(
        self,
        store: FeatureStore,
        name: str,
        namespace: str,
        sleep: Callable[[float], None] = time.sleep,
        gc_pauses: GcPauses | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        # The store's writes are idempotent (a version no older, ZADD GT), so one that timed out is simply sent again.
        self.store = store
        self.name, self.namespace = name, namespace
        self.sleep = sleep
        self.gc_pauses = gc_pauses
        """The interpreter's collections, reported with the freshness (by one writer of the interpreter's)."""
        self.pending: dict[tuple[KeyKind, str], EntityWrite] = {}
        """(kind, entity_id) -> its newest queued state."""
        self.pending_seen: dict[str, SeenAddition] = {}
        """user_id -> the items to add to the user's seen set."""
        self.event_times: list[int] = []
        self.append_times: list[int] = []
        self.clock = clock
        self.freshness = Freshness()
        self.last_report = clock()
        self.last_batch: float | None = None
        self.latest: dict[str, float] = {}

    def put(self, kind: KeyKind, entity_id: str, version: int, value: Any, as_of: int, ttl_ms: int) -> None:
        """Queue the newest state of the entity's key of `kind`, a value `encode_value` takes; it is
        encoded when flushed."""
        queued = self.pending.get((kind, entity_id))
        if queued is None or version >= queued.version:
            self.pending[kind, entity_id] = EntityWrite(kind, entity_id, version, value, as_of, ttl_ms)

    def add_seen(self, user_id: str, item_id: str, ts: int, capacity: int, ttl_ms: int) -> None:
        """Queue an item interacted with at `ts` for the user's seen set (of at most `capacity` items)."""
        queued = self.pending_seen.get(user_id)
        if queued is None:
            queued = self.pending_seen[user_id] = SeenAddition({}, capacity, ttl_ms)
        queued.add(item_id, ts)

    def applied(self, event_times: Iterable[int], append_times: Iterable[int | None]) -> None:
        """Note events the queued writes carry (event times and Kafka append times, in epoch ms):
        their freshness is measured when they are written. Once per batch, not per event."""
        noted = len(self.event_times)
        self.event_times.extend(event_times)
        self.append_times.extend(ms for ms in append_times if ms is not None)
        now, freshness = self.clock(), self.freshness
        freshness.batches += 1
        freshness.largest_batch = max(freshness.largest_batch, len(self.event_times) - noted)
        if self.last_batch is not None:
            freshness.longest_gap_ms = max(freshness.longest_gap_ms, (now - self.last_batch) * 1000)
        self.last_batch = now

    def flush(self) -> None:
        """Write every queued key; retries while Redis is unreachable and returns only once written."""
        if not self.pending and not self.pending_seen:
            return
        batch, seen, self.pending, self.pending_seen = list(self.pending.values()), self.pending_seen, {}, {}
        written = self._execute(batch, seen)
        now_ms = int(time.time() * 1000)
        self.freshness.writes += written
        self.freshness.refused += len(batch) - written
        self.freshness.since_event.extend(now_ms - ts for ts in self.event_times)
        self.freshness.since_append.extend(now_ms - ts for ts in self.append_times)
        self.event_times, self.append_times = [], []
        self._report()

    def _execute(self, batch: list[EntityWrite], seen: dict[str, SeenAddition]) -> int:
        attempt = 0
        while True:
            try:
                return self.store.write(self.namespace, batch, seen)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                log.warning("redis writer %s: %d writes failed (%s); retrying", self.name, len(batch), error)
                self.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                attempt += 1

    def _report(self) -> None:
        if self.clock() - self.last_report < REPORT_EVERY_S:
            return
        f, self.latest = self.freshness, self.freshness.percentiles()
        lags = ", ".join(f"{name} {value:,.0f}" for name, value in self.latest.items())
        log.info(
            "redis writer %s: %d keys written, %d refused as older; freshness (ms): %s; "
            "%d batches, largest %d events, longest gap %.0f ms%s",
            self.name, f.writes, f.refused, lags, f.batches, f.largest_batch, f.longest_gap_ms,
            "" if self.gc_pauses is None else f"; {self.gc_pauses.take()}",
        )  # fmt: skip
        self.freshness = Freshness()
        self.last_report = self.clock()

    def close(self) -> None:
        self.flush()
        self.store.close()


# Which keys each state of the stream is written to, for the job's operators and the backfill alike.
def put_user(writer: RedisWriter, user_id: str, state: UserState, ttl_ms: int) -> None:
    """Queue a user's sequence and features, both at the user's version."""
    for kind, value in ((KeyKind.USER_SEQUENCE, state.sequence), (KeyKind.USER_FEATURES, state.features)):
        writer.put(kind, user_id, state.version, value, state.features.last_ts, ttl_ms)


def put_item(writer: RedisWriter, item_id: str, state: ItemState, ttl_ms: int) -> None:
    writer.put(KeyKind.ITEM_FEATURES, item_id, state.version, state.features, state.features.last_ts, ttl_ms)


def put_trending(writer: RedisWriter, state: TrendingState, spec: FeatureSpec) -> None:
    """Queue the trending list; it never expires."""
    writer.put(KeyKind.TRENDING, TRENDING_ENTITY, state.version, trending_list(state, spec), state.at_ts, 0)


def put_tallies(writer: RedisWriter, experiment: str, tallies: ExperimentTallies) -> None:
    """Queue an experiment's tallies; they never expire."""
    writer.put(KeyKind.EXPERIMENT, experiment, tallies.version, tallies, tallies.at_ts, 0)
