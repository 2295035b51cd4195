"""Redis format version 2: the one key builder, the value codecs and the seen sets' commands.
Specified in REDIS_FORMAT.md.

Keys are ``kf:v<FORMAT_VERSION>:<namespace>:<kind>:<entity_id>``. A replay rebuilds state in a
fresh namespace beside the live one; the control namespace holds which one is active.
Feature keys are hashes ``{version, value}``: `value` is JSON ``{"format_version": 2, "as_of": <newest
event time, ms>, "data": {...}}`` and `version` counts the events applied to the key, so a write
that would move the key backwards (a restart, a replay) is refused by `UPSERT_IF_NOT_OLDER`.
A user's seen set is a sorted set (item -> newest interaction time) whose writes are idempotent.
"""

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

import orjson

from schemas.events import EventType
from schemas.features import ItemFeatures, SequenceEntry, UserFeatures, UserSequence

FORMAT_VERSION = 2
KEY_PREFIX = "kf"
CONTROL_NAMESPACE = "control"
NAMESPACE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
T = TypeVar("T")


class KeyKind(StrEnum):
    USER_SEQUENCE = "user_seq"
    USER_FEATURES = "user_feat"
    ITEM_FEATURES = "item_feat"
    TRENDING = "trending"
    USER_SEEN = "user_seen"
    ACTIVE_NAMESPACE = "active_ns"
    TOOLCHAIN_CHECK = "toolchain_check"


CONTROL_KINDS = frozenset({KeyKind.ACTIVE_NAMESPACE})


def _namespace_prefix(namespace: str) -> str:
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} must match {NAMESPACE_PATTERN.pattern}")
    return f"{KEY_PREFIX}:v{FORMAT_VERSION}:{namespace}:"


def redis_key(kind: KeyKind, entity_id: str, namespace: str) -> str:
    """Build the key of one entity. The entity id comes last, so it may itself contain ':'."""
    prefix = _namespace_prefix(namespace)
    if (kind in CONTROL_KINDS) != (namespace == CONTROL_NAMESPACE):
        raise ValueError(f"kind {kind} belongs {'in' if kind in CONTROL_KINDS else 'outside'} the control namespace")
    if not entity_id:
        raise ValueError("entity_id must not be empty")
    return f"{prefix}{KeyKind(kind)}:{entity_id}"


def key_pattern(namespace: str, kind: KeyKind | None = None) -> str:
    """A SCAN MATCH pattern for every key of `namespace`, or only those of one kind.
    Namespaces and kinds hold no glob characters, so the pattern matches exactly those keys."""
    return _namespace_prefix(namespace) + (f"{KeyKind(kind)}:*" if kind is not None else "*")


def entity_of(key: str, kind: KeyKind, namespace: str) -> str:
    """The entity id of a key `redis_key(kind, entity_id, namespace)` built."""
    prefix = f"{_namespace_prefix(namespace)}{KeyKind(kind)}:"
    if not key.startswith(prefix):
        raise ValueError(f"{key!r} is not a {kind} key of namespace {namespace!r}")
    return key[len(prefix) :]


VERSION_FIELD, VALUE_FIELD = "version", "value"
TRENDING_ENTITY = "global"
"""Entity id of the one trending list of a namespace."""

# KEYS = the keys; ARGV = version, value, ttl in ms (0: none) of each key in turn. Writes each key
# unless its stored version is newer; returns how many it wrote. One call takes many keys, so a
# writer pays one round trip and one script run for a whole batch.
UPSERT_IF_NOT_OLDER = """
local written = 0
for i, key in ipairs(KEYS) do
  local version, ttl = ARGV[3 * i - 2], tonumber(ARGV[3 * i])
  local stored = redis.call('HGET', key, 'version')
  if not stored or tonumber(stored) <= tonumber(version) then
    redis.call('HSET', key, 'version', version, 'value', ARGV[3 * i - 1])
    if ttl > 0 then redis.call('PEXPIRE', key, ttl) end
    written = written + 1
  end
end
return written
"""


UPSERT_KEYS_PER_CALL = 500


def upsert_calls(writes: Sequence[tuple[str, int, bytes, int]]) -> Iterator[tuple[list[str], list[int | bytes]]]:
    """The (KEYS, ARGV) of the `UPSERT_IF_NOT_OLDER` calls that make (key, version, value, ttl_ms)
    writes, at most UPSERT_KEYS_PER_CALL keys per call (a script blocks Redis while it runs)."""
    for start in range(0, len(writes), UPSERT_KEYS_PER_CALL):
        chunk = writes[start : start + UPSERT_KEYS_PER_CALL]
        yield [key for key, *_ in chunk], [field for _, *fields in chunk for field in fields]


def add_seen(pipeline: Any, key: str, entries: Mapping[str, int], capacity: int, ttl_ms: int) -> None:
    """Queue on a redis-py pipeline the commands that add `entries` (item_id -> interaction time) to
    the seen set `key` and keep its `capacity` newest: `schemas.features.update_seen` in Redis.
    ZADD GT keeps each item's newest time and ZREMRANGEBYRANK drops the oldest (ties: the smaller
    item_id first, as `update_seen`), so writing the same entries again, or late, changes nothing."""
    pipeline.zadd(key, dict(entries), gt=True)
    pipeline.zremrangebyrank(key, 0, -(capacity + 1))
    if ttl_ms > 0:
        pipeline.pexpire(key, ttl_ms)


def read_seen(pipeline: Any, key: str) -> None:
    """Queue the read of a seen set: its items, oldest first (bytes)."""
    pipeline.zrange(key, 0, -1)


def active_namespace_key() -> str:
    return redis_key(KeyKind.ACTIVE_NAMESPACE, "current", CONTROL_NAMESPACE)


@dataclass(frozen=True, slots=True)
class Trending:
    """The most popular items at `at_ts`, most popular first."""

    items: tuple[tuple[str, float], ...]
    at_ts: int


@dataclass(frozen=True, slots=True)
class StoredValue(Generic[T]):
    data: T
    as_of: int
    """Event time (epoch ms) of the newest event the value includes."""


class FormatError(ValueError):
    """A stored value is not in the format this code reads."""


def encode_value(data: UserSequence | UserFeatures | ItemFeatures | Trending, as_of: int) -> bytes:
    return orjson.dumps({"format_version": FORMAT_VERSION, "as_of": as_of, "data": data})


def _sequence(data: dict[str, Any]) -> UserSequence:
    return UserSequence(tuple(SequenceEntry(**{**e, "type": EventType(e["type"])}) for e in data["entries"]))


def _item(data: dict[str, Any]) -> ItemFeatures:
    return ItemFeatures(**{**data, "recent": tuple((start, count) for start, count in data["recent"])})


def _trending(data: dict[str, Any]) -> Trending:
    return Trending(items=tuple((item_id, score) for item_id, score in data["items"]), at_ts=data["at_ts"])


DECODERS: dict[KeyKind, Callable[[dict[str, Any]], Any]] = {
    KeyKind.USER_SEQUENCE: _sequence,
    KeyKind.USER_FEATURES: lambda data: UserFeatures(**data),
    KeyKind.ITEM_FEATURES: _item,
    KeyKind.TRENDING: _trending,
}


def decode_value(kind: KeyKind, raw: bytes) -> StoredValue:
    try:
        stored = orjson.loads(raw)
        if stored.get("format_version") != FORMAT_VERSION:
            raise FormatError(f"{kind} value has format_version {stored.get('format_version')}, not {FORMAT_VERSION}")
        return StoredValue(DECODERS[kind](stored["data"]), stored["as_of"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise FormatError(f"{kind} value is not in Redis format v{FORMAT_VERSION}: {error!r}") from None
