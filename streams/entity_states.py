"""Per-user and per-item state inside a batch operator: a Flink MapState with the entries in memory in front.

The batch operators are keyed by a bucket of entities, so each entity's state is one entry of its
bucket's MapState. Reading an entry costs a call into the JVM and unpickling the value (in process
mode, an entry PyFlink has not cached is a blocking round trip, ~10 ms measured here), so a
bucket's entries are read in bulk on its first batch and then kept in memory; an entity not among
them has no state, without asking. Writes go to Flink once per entity and batch, all of a batch's
in one call. Only this operator instance reads and writes its buckets' entries, so memory and
Flink agree; a restart (restore, failover, rescaling) opens a new instance with an empty memory,
which refills from the restored Flink state.

Past `capacity` entries the least recently used leave memory, and from then on an entity missing
from memory is read from Flink, one call each.

An entity whose state was last written `ttl_ms` or longer ago (processing time, as its Redis keys'
TTL counts) has expired: it reads as no state and leaves Flink. Each entry is stored with the time
of its write, so expiry is decided here, the same on every state backend and after any restore:
Flink's own TTL (`streams.operators`) only frees the storage of entries nobody reads again, and
never before this does, since Flink stamps an entry when it is committed, after the batch began.
"""

import time
from collections.abc import Callable, Hashable, Iterable
from itertools import islice
from typing import Any, Protocol

NO_STATE = object()


class EntityMapState(Protocol):
    """The part of pyflink.datastream.state.MapState used here."""

    def get(self, key: str) -> Any: ...

    def put_all(self, entries: dict[str, Any]) -> None:
        """Thread mode calls `entries.items()`; process mode iterates `entries` as pairs."""

    def items(self) -> Iterable[tuple[str, Any]]: ...

    def remove(self, key: str) -> None: ...


class _Entries(dict):
    """PyFlink's `MapState.put_all` reads its argument as a dict in thread mode (`.items()`) and
    iterates it as (key, value) pairs in process mode: this dict is both."""

    def __iter__(self):
        return iter(self.items())


class EntityStates:
    def __init__(self, state: EntityMapState, capacity: int, ttl_ms: int, clock: Callable[[], float] = time.time):
        self.state = state
        self.capacity = capacity
        self.ttl_ms = ttl_ms
        self.clock = clock
        self.now_ms = 0
        self.entries: dict[str, tuple[int, Any]] = {}
        """entity -> (when its state was written, in ms; the state)."""
        self.changed: set[str] = set()
        self.complete_buckets: set[Hashable] = set()
        self.bucket_complete = False
        self.evicted = False

    def enter(self, bucket: Hashable) -> None:
        """Start a batch of `bucket`, the operator's current key; the batch's writes are stamped now."""
        self.now_ms = int(self.clock() * 1000)
        if bucket not in self.complete_buckets and not self.evicted:
            self.entries.update(self.state.items())
            self.complete_buckets.add(bucket)
        self.bucket_complete = bucket in self.complete_buckets

    def get(self, entity_id: str, default: Any) -> Any:
        """The entity's state, `default` when it has none. The entity must belong to the entered bucket."""
        value = self.entries.pop(entity_id, NO_STATE)
        if value is NO_STATE and not self.bucket_complete:
            stored = self.state.get(entity_id)
            value = NO_STATE if stored is None else stored
        if value is NO_STATE:
            return default
        written_ms, state = value
        if self.now_ms - written_ms >= self.ttl_ms:
            self.state.remove(entity_id)
            return default
        self.entries[entity_id] = value  # newest last: eviction takes the least recently used first
        return state

    def age_ms(self, entity_id: str) -> int:
        """How long before the current batch the entity's state was written; it must be in memory, as
        `get` leaves it."""
        return self.now_ms - self.entries[entity_id][0]

    def put(self, entity_id: str, value: Any) -> None:
        self.entries[entity_id] = (self.now_ms, value)
        self.changed.add(entity_id)

    def commit(self) -> list[tuple[str, Any]]:
        """End the batch: write its changes to Flink (one entry per changed entity), then bound the
        memory. Returns the changed entities with their new states, for the caller's Redis writes."""
        changed = _Entries((entity_id, self.entries[entity_id]) for entity_id in self.changed)
        if changed:
            # One call into the JVM per batch, not one per entity: each call holds the Python lock
            # that every operator of the job shares.
            self.state.put_all(changed)
        self.changed.clear()
        excess = len(self.entries) - self.capacity
        if excess > 0:
            for entity_id in list(islice(self.entries, excess)):
                del self.entries[entity_id]
            self.evicted, self.complete_buckets = True, set()
        return [(entity_id, state) for entity_id, (_, state) in changed.items()]
