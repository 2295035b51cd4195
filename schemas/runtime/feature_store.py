"""The online feature store: every read and write of Kingfisher's state in Redis, in Redis format v3.

`schemas.redis_format` says what is stored (keys, value codecs); this module is the one place that
sends it to Redis and reads it back: versioned writes that never move a key backwards, the seen
sets, the namespaces, and the reads serving makes per request. Callers name entities and hand over
values: the store builds every key and encodes every value. `FeatureStore` (redis-py) serves the
stream's writers, replay, the CLIs and the benchmarks; `AsyncFeatureStore` (redis.asyncio) serves
the service; their reads are one method set, defined once (`_Reads`). Both work with a single
Redis server or a Redis Cluster: every key of one entity shares a hash slot (the key builder's hash
tag), and a cluster gets one script call per slot, as it requires of a script's keys. One contract
test suite (tests/integration/test_feature_store.py) runs against each deployment.
"""

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, TryAgainError

from schemas.config import StackSettings
from schemas.experiments import ExperimentTallies
from schemas.features import FeatureSpec, ItemFeatures, SequenceEntry, UserFeatures, UserSequence
from schemas.redis_format import (
    SEEN_FILTER_BITS,
    SEEN_FILTER_HASHES,
    TRENDING_ENTITY,
    VALUE_FIELD,
    VERSION_FIELD,
    KeyKind,
    StoredValue,
    Trending,
    active_namespace_key,
    decode_feature_spec,
    decode_value,
    encode_feature_spec,
    encode_value,
    entity_of,
    feature_spec_key,
    key_pattern,
    redis_key,
)

SCAN_BATCH = 1000
KEYS_PER_CALL = 500
"""Keys per call of `WRITE_FEATURES`: a script blocks Redis while it runs."""
MEMBERS_PER_ZADD = 500
"""Seen items per ZADD inside the script: Lua's unpack() takes a few thousand values at most."""

# KEYS = the versioned keys, then each seen set followed by its filter. ARGV[1] = how many keys
# are versioned; then the version, value and ttl in ms (0: none) of each versioned key in turn;
# then for each seen set its capacity, ttl, number of items and (time, item_id) pairs. Writes each
# versioned key unless its stored version is newer (returns how many it wrote), and adds to each
# seen set as `update_seen` does. A set that overflows its capacity gets a Bloom filter of every
# item the user interacted with: at the first overflow the set still holds every item ever
# added, and after it each new item overflows the set again and is marked. So the filter depends
# on the set of interactions only, like the set. One call takes a whole batch: one round trip and
# one script run, where a command per seen set cost the writer more than everything else it sends.
WRITE_FEATURES = """
local function mark(filter, item)
  local digest = redis.sha1hex(item)
  for n = 0, SEEN_FILTER_HASHES - 1 do
    redis.call('SETBIT', filter, tonumber(string.sub(digest, 8 * n + 1, 8 * n + 8), 16) % SEEN_FILTER_BITS, 1)
  end
end
local versioned, written = tonumber(ARGV[1]), 0
for i = 1, versioned do
  local version, ttl = ARGV[3 * i - 1], tonumber(ARGV[3 * i + 1])
  local stored = redis.call('HGET', KEYS[i], 'version')
  if not stored or tonumber(stored) <= tonumber(version) then
    redis.call('HSET', KEYS[i], 'version', version, 'value', ARGV[3 * i])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
    written = written + 1
  end
end
local at = 3 * versioned + 2
for i = versioned + 1, #KEYS, 2 do
  local set, filter = KEYS[i], KEYS[i + 1]
  local capacity, ttl, last = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), at + 2 + 2 * tonumber(ARGV[at + 2])
  for first = at + 3, last, 2 * MEMBERS_PER_ZADD do
    redis.call('ZADD', set, 'GT', unpack(ARGV, first, math.min(first + 2 * MEMBERS_PER_ZADD - 1, last)))
  end
  if redis.call('ZCARD', set) > capacity then
    if redis.call('EXISTS', filter) == 1 then
      for item = at + 4, last, 2 do mark(filter, ARGV[item]) end
    else
      for _, item in ipairs(redis.call('ZRANGE', set, 0, -1)) do mark(filter, item) end
    end
    redis.call('ZREMRANGEBYRANK', set, 0, -(capacity + 1))
  end
  if ttl > 0 then
    redis.call('PEXPIRE', set, ttl)
    redis.call('PEXPIRE', filter, ttl)
  end
  at = last + 1
end
return written
"""
for name, value in (
    ("MEMBERS_PER_ZADD", MEMBERS_PER_ZADD),
    ("SEEN_FILTER_HASHES", SEEN_FILTER_HASHES),
    ("SEEN_FILTER_BITS", SEEN_FILTER_BITS),
):
    WRITE_FEATURES = WRITE_FEATURES.replace(name, str(value))


class EntityWrite(NamedTuple):
    """The new state of one entity's key of `kind`: written unless the stored version is newer. A
    named tuple: the stream makes one per written key, and a tuple is made in half a dataclass's time."""

    kind: KeyKind
    entity_id: str
    version: int
    data: UserSequence | UserFeatures | ItemFeatures | Trending | ExperimentTallies
    as_of: int
    """Event time (epoch ms) of the newest event the value includes."""
    ttl_ms: int = 0
    """0: the key never expires."""


@functools.lru_cache(maxsize=1 << 18)
def _key(kind: KeyKind, entity_id: str, namespace: str) -> str:
    """Building and checking a key costs more than the rest of a Redis write; active entities repeat."""
    return redis_key(kind, entity_id, namespace)


class VersionedWrite(NamedTuple):
    """An `EntityWrite` as the store sends it: its key built and its value encoded."""

    key: str
    version: int
    value: bytes
    """An `encode_value` envelope."""
    ttl_ms: int = 0
    """0: the key never expires."""


@dataclass(slots=True)
class SeenAddition:
    """Items to add to one user's seen set (item_id -> interaction time, epoch ms)."""

    entries: dict[str, int]
    capacity: int
    """Items the set keeps: those of the newest interactions (`FeatureSpec.seen_capacity`)."""
    ttl_ms: int = 0

    def add(self, item_id: str, ts: int) -> None:
        self.entries[item_id] = max(ts, self.entries.get(item_id, ts))


class SeenWrite(NamedTuple):
    """A `SeenAddition` as the store sends it: the keys of the user's seen set and of its filter."""

    key: str
    filter_key: str
    addition: SeenAddition


def write_calls(
    writes: Sequence[VersionedWrite],
    seen: Sequence[SeenWrite],
    slot_of: Callable[[str], int] | None = None,
) -> Iterator[tuple[list[str], list[int | str | bytes]]]:
    """The (KEYS, ARGV) of the `WRITE_FEATURES` calls that make `writes` and the seen sets'
    additions, at most KEYS_PER_CALL entities per call; with `slot_of` (a Redis Cluster), the keys of
    a call share one hash slot. A seen set adds each item with ZADD GT and keeps the newest
    `capacity` (ties: the smaller item_id first), and its filter marks every item once the set has
    overflowed, so writing the same entries again, or late, changes nothing."""
    keyed = [*writes, *seen]
    for group in [keyed] if slot_of is None else _by_slot(keyed, slot_of):
        for start in range(0, len(group), KEYS_PER_CALL):
            chunk = group[start : start + KEYS_PER_CALL]
            versioned = [w for w in chunk if isinstance(w, VersionedWrite)]
            keys, arguments = [w.key for w in versioned], [len(versioned)]
            for write in versioned:
                arguments += (write.version, write.value, write.ttl_ms)
            for key, filter_key, addition in chunk[len(versioned) :]:
                keys += (key, filter_key)
                arguments += (addition.capacity, addition.ttl_ms, len(addition.entries))
                for item_id, ts in addition.entries.items():
                    arguments += (ts, item_id)
            yield keys, arguments


def _by_slot(
    keyed: list[VersionedWrite | SeenWrite], slot_of: Callable[[str], int]
) -> list[list[VersionedWrite | SeenWrite]]:
    """Versioned writes stay ahead of seen sets within each group, as a call takes them."""
    groups: dict[int, list] = {}
    for entry in keyed:
        groups.setdefault(slot_of(entry.key), []).append(entry)
    return list(groups.values())


def _text(raw: bytes | str | None) -> str | None:
    return raw.decode() if isinstance(raw, bytes) else raw


CLUSTER_CHANGED = (AskError, TryAgainError, ClusterDownError)
"""A cluster moving slots or failing over; the store refreshes its slot map and writes again."""


@dataclass(frozen=True, slots=True)
class UserRead:
    """What serving reads for one request: the user's stored sequence and features, the trending
    list (None where absent; all None: nothing could be read) and, when asked for, the seen set and
    its filter."""

    sequence: StoredValue | None = None
    features: StoredValue | None = None
    trending: StoredValue | None = None
    seen_set: frozenset[str] = frozenset()
    seen_filter: bytes | None = None
    """A Bloom filter of every item the user interacted with, once the seen set has overflowed its
    capacity (REDIS_FORMAT.md); None before."""

    @property
    def seen(self) -> set[str]:
        """The items of the seen set and the sequence (a filter's older items are not listed: see `seen_filter`)."""
        return set(self.seen_set).union(behaviour.item_id for behaviour in self.behaviours)

    @property
    def known_user(self) -> bool:
        return self.sequence is not None or self.features is not None

    @property
    def behaviours(self) -> tuple[SequenceEntry, ...]:
        return self.sequence.data.entries if self.sequence else ()

    @property
    def user_features(self) -> UserFeatures | None:
        return self.features.data if self.features else None

    @property
    def as_of(self) -> int | None:
        """Event time of the newest event the user's state includes."""
        times = [value.as_of for value in (self.sequence, self.features) if value is not None]
        return max(times) if times else None


class _Read(NamedTuple):
    """One read: the commands of its pipelined round trip, and what their replies answer."""

    commands: tuple[tuple[str, tuple], ...]
    answer: Callable[[list], Any]


def _decoded(kind: KeyKind, raw: bytes | None) -> StoredValue | None:
    return decode_value(kind, raw) if raw is not None else None


def _value_command(kind: KeyKind, entity_id: str, namespace: str) -> tuple[str, tuple]:
    return "hget", (_key(kind, entity_id, namespace), VALUE_FIELD)


def _value_read(kind: KeyKind, entity_id: str, namespace: str) -> _Read:
    """A feature key's decoded value, None when absent."""
    return _Read((_value_command(kind, entity_id, namespace),), lambda raw: _decoded(kind, raw[0]))


def _user_read(user_id: str, namespace: str, seen: bool) -> _Read:
    kinds = (KeyKind.USER_SEQUENCE, KeyKind.USER_FEATURES, KeyKind.TRENDING)
    entities = (user_id, user_id, TRENDING_ENTITY)
    commands = tuple(_value_command(kind, entity, namespace) for kind, entity in zip(kinds, entities, strict=True))
    if seen:
        commands += (
            ("zrange", (_key(KeyKind.USER_SEEN, user_id, namespace), 0, -1)),
            ("get", (_key(KeyKind.USER_SEEN_FILTER, user_id, namespace),)),
        )

    def answer(raw: list) -> UserRead:
        values = [_decoded(kind, value) for kind, value in zip(kinds, raw[: len(kinds)], strict=True)]
        if not seen:
            return UserRead(*values)
        seen_set = frozenset(map(bytes.decode, raw[len(kinds)]))  # thousands for heavy users
        return UserRead(*values, seen_set=seen_set, seen_filter=raw[len(kinds) + 1])

    return _Read(commands, answer)


class _Reads(ABC):
    """The reads both stores make, each one pipelined round trip, defined once: a method returns
    its answer from `FeatureStore` and an awaitable of it from `AsyncFeatureStore`, whose `_run`
    is a coroutine."""

    @abstractmethod
    def _run(self, read: _Read) -> Any:
        """Send the read's commands in one pipeline and return (or, async, resolve to) its answer."""

    def read(self, kind: KeyKind, entity_id: str, namespace: str) -> tuple[int, StoredValue] | None:
        """A feature key's (version, decoded value), None when absent."""

        def answer(raw: list) -> tuple[int, StoredValue] | None:
            version, value = raw[0]
            return None if value is None else (int(version), decode_value(kind, value))

        return self._run(_Read((("hmget", (_key(kind, entity_id, namespace), VERSION_FIELD, VALUE_FIELD)),), answer))

    def read_user(self, user_id: str, namespace: str, seen: bool = False) -> UserRead:
        """What serving reads per request: the user's sequence and features, the trending list and,
        with `seen`, the user's whole seen set."""
        return self._run(_user_read(user_id, namespace, seen))

    def read_seen(self, user_id: str, namespace: str) -> dict[str, int]:
        """A user's seen set: item_id -> newest interaction time, oldest first."""
        key = _key(KeyKind.USER_SEEN, user_id, namespace)
        answer = lambda raw: {_text(item): int(ts) for item, ts in raw[0]}  # noqa: E731
        return self._run(_Read((("zrange", (key, 0, -1, False, True)),), answer))  # desc False, withscores True

    def read_seen_filter(self, user_id: str, namespace: str) -> bytes | None:
        """A user's seen filter (REDIS_FORMAT.md); None while the seen set has never overflowed."""
        return self._run(_Read((("get", (_key(KeyKind.USER_SEEN_FILTER, user_id, namespace),)),), lambda raw: raw[0]))

    def trending(self, namespace: str) -> StoredValue | None:
        return self._run(_value_read(KeyKind.TRENDING, TRENDING_ENTITY, namespace))

    def experiment_tallies(self, experiment: str, namespace: str) -> StoredValue | None:
        return self._run(_value_read(KeyKind.EXPERIMENT, experiment, namespace))

    def feature_spec(self, namespace: str) -> FeatureSpec | None:
        """The feature spec the stream writing `namespace` runs with; None before it first started."""
        answer = lambda raw: decode_feature_spec(raw[0]) if raw[0] is not None else None  # noqa: E731
        return self._run(_Read((("get", (feature_spec_key(namespace),)),), answer))

    def active_namespace(self, default: str) -> str:
        """The namespace serving reads: the control key, or `default` (KF_NAMESPACE) while none was set."""
        return self._run(_Read((("get", (active_namespace_key(),)),), lambda raw: _text(raw[0]) or default))


class FeatureStore(_Reads):
    """Blocking access for the stream, replay, the CLIs and the benchmarks."""

    def __init__(self, client: redis.Redis | RedisCluster):
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self._write_sha: str | None = None

    @classmethod
    def connect(cls, host: str, port: int, timeout_s: float | None = None, cluster: bool = False) -> "FeatureStore":
        """A store on the Redis server at host:port, or, with `cluster`, on the Redis Cluster that
        node belongs to (the client learns the others from it)."""
        options = {"host": host, "port": port, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        return cls(RedisCluster(**options) if cluster else redis.Redis(**options))

    @classmethod
    def for_stack(cls, stack: StackSettings, timeout_s: float | None = None) -> "FeatureStore":
        """The store of the Redis the settings name (KF_REDIS_HOST, KF_REDIS_PORT, KF_REDIS_CLUSTER)."""
        return cls.connect(stack.redis_address, stack.redis_port, timeout_s, stack.redis_cluster)

    def _run(self, read: _Read) -> Any:
        with self.client.pipeline(transaction=False) as pipe:
            for command, arguments in read.commands:
                getattr(pipe, command)(*arguments)
            return read.answer(pipe.execute())

    def write(
        self, namespace: str, writes: Sequence[EntityWrite], seen: Mapping[str, SeenAddition] | None = None
    ) -> int:
        """Make `writes` and the seen sets' additions (user_id -> addition) in `namespace`, in one
        round trip (to each cluster node that holds some); returns how many versioned keys were
        written (the rest were older than what is stored). Every write is idempotent, so a caller
        may simply send again what failed."""
        encoded = [
            VersionedWrite(_key(w.kind, w.entity_id, namespace), w.version, encode_value(w.data, w.as_of), w.ttl_ms)
            for w in writes
        ]
        additions = [
            SeenWrite(_key(KeyKind.USER_SEEN, user, namespace), _key(KeyKind.USER_SEEN_FILTER, user, namespace), added)
            for user, added in (seen or {}).items()
        ]
        try:
            return self._write(encoded, additions)
        except redis.exceptions.NoScriptError:  # Redis restarted without its script cache
            self._write_sha = None
            return self._write(encoded, additions)
        except CLUSTER_CHANGED:
            self.client.nodes_manager.initialize()
            return self._write(encoded, additions)

    def _write(self, writes: Sequence[VersionedWrite], seen: Sequence[SeenWrite]) -> int:
        # EVALSHA of a script loaded once (on every master of a cluster): redis-py's Script object
        # asks SCRIPT EXISTS before every pipeline.
        if self._write_sha is None:
            self._write_sha = self.client.script_load(WRITE_FEATURES)
        pipelines: dict[int, Any] = {}
        for keys, arguments in write_calls(writes, seen, self.client.keyslot if self.cluster else None):
            self._pipeline_of(keys[0], pipelines).evalsha(self._write_sha, len(keys), *keys, *arguments)
        return sum(sum(pipeline.execute()) for pipeline in pipelines.values())

    def _pipeline_of(self, key: str, pipelines: dict[int, Any]) -> Any:
        """The pipeline to the server that holds `key`. redis-py's cluster pipeline refuses EVALSHA,
        so a cluster gets a plain pipeline per master."""
        node = self.client.get_redis_connection(self.client.get_node_from_key(key)) if self.cluster else self.client
        if id(node) not in pipelines:
            pipelines[id(node)] = node.pipeline(transaction=False)
        return pipelines[id(node)]

    def entities(self, namespace: str, kind: KeyKind) -> Iterator[str]:
        """The entity ids that have a key of `kind` in `namespace`, in no particular order."""
        for key in self.client.scan_iter(match=key_pattern(namespace, kind), count=SCAN_BATCH):
            yield entity_of(_text(key), kind, namespace)

    def switch_namespace(self, namespace: str) -> str | None:
        """Point serving at `namespace` in one atomic SET; returns the namespace it pointed at before."""
        key_pattern(namespace)  # refuses an invalid name before the switch
        return _text(self.client.set(active_namespace_key(), namespace, get=True))

    def count_keys(self, namespace: str) -> int:
        return sum(1 for _ in self.client.scan_iter(match=key_pattern(namespace), count=SCAN_BATCH))

    def drop_namespace(self, namespace: str) -> int:
        """Delete every key of `namespace`; returns how many."""
        dropped, batch = 0, []
        for key in self.client.scan_iter(match=key_pattern(namespace), count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                dropped, batch = dropped + self.client.unlink(*batch), []
        return dropped + (self.client.unlink(*batch) if batch else 0)

    def record_feature_spec(self, namespace: str, spec: FeatureSpec) -> None:
        """Record the feature spec the stream writing `namespace` runs with (REDIS_FORMAT.md, `feature_spec`)."""
        self.client.set(feature_spec_key(namespace), encode_feature_spec(spec))

    def add_toolchain_records(self, topic: str, namespace: str, *records: str) -> None:
        """The toolchain check's copy of `topic` (`infra.benches.smoke`): a set, so a re-run adds nothing twice."""
        self.client.sadd(redis_key(KeyKind.TOOLCHAIN_CHECK, topic, namespace), *records)

    def toolchain_records(self, topic: str, namespace: str) -> set[str]:
        return {_text(record) for record in self.client.smembers(redis_key(KeyKind.TOOLCHAIN_CHECK, topic, namespace))}

    def close(self) -> None:
        self.client.close()


class AsyncFeatureStore(_Reads):
    """The service's reads, each one pipelined round trip (to each cluster node the keys are on)."""

    def __init__(self, client: aioredis.Redis | AsyncRedisCluster):
        self.client = client

    @classmethod
    def connect(cls, host: str, port: int, timeout_s: float, cluster: bool = False) -> "AsyncFeatureStore":
        options = {"host": host, "port": port, "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        return cls(AsyncRedisCluster(**options) if cluster else aioredis.Redis(**options))

    @classmethod
    def for_stack(cls, stack: StackSettings, timeout_s: float) -> "AsyncFeatureStore":
        return cls.connect(stack.redis_address, stack.redis_port, timeout_s, stack.redis_cluster)

    async def _run(self, read: _Read) -> Any:
        async with self.client.pipeline(transaction=False) as pipe:
            for command, arguments in read.commands:
                getattr(pipe, command)(*arguments)
            return read.answer(await pipe.execute())

    async def close(self) -> None:
        await self.client.aclose()

    async def ping(self) -> None:
        await self.client.ping()

    async def users(self, namespace: str, limit: int) -> list[str]:
        """Up to `limit` users that have a live sequence, shortest ids first (for a picker, not a census)."""
        users = []
        async for key in self.client.scan_iter(match=key_pattern(namespace, KeyKind.USER_SEQUENCE), count=500):
            users.append(entity_of(_text(key), KeyKind.USER_SEQUENCE, namespace))
            if len(users) >= limit:
                break
        return sorted(users, key=lambda user: (len(user), user))
