"""Redis format version 3: the one key builder and the value codecs. Specified in REDIS_FORMAT.md;
`schemas.runtime.feature_store` is the one module that writes and reads them.

Keys are ``kf:v<FORMAT_VERSION>:<namespace>:<kind>:{<entity_id>}``: the braces are a Redis Cluster
hash tag, so every key of one user or item lives in one hash slot. A replay rebuilds state in a
fresh namespace beside the live one; the control namespace holds which one is active.
Feature keys are hashes ``{version, value}``: `value` is JSON ``{"format_version": 3, "as_of": <newest
event time, ms>, "data": {...}}`` and `version` counts the events applied to the key, so a write
that would move the key backwards (a restart, a replay) is refused by `WRITE_FEATURES`.
A user's seen set is a sorted set (item -> newest interaction time) whose writes are idempotent;
once it has held more items than its capacity, a Bloom filter of every item the user interacted
with stands beside it (`seen_filter_positions`).
"""

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

import orjson

from schemas.events import EventType
from schemas.experiments import ArmTally, ExperimentTallies
from schemas.features import FeatureSpec, ItemFeatures, SequenceEntry, UserFeatures, UserSequence

FORMAT_VERSION = 3
KEY_PREFIX = "kf"
CONTROL_NAMESPACE = "control"
NAMESPACE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")
T = TypeVar("T")


class KeyKind(StrEnum):
    USER_SEQUENCE = "user_seq"
    USER_FEATURES = "user_feat"
    ITEM_FEATURES = "item_feat"
    TRENDING = "trending"
    EXPERIMENT = "experiment"
    USER_SEEN = "user_seen"
    USER_SEEN_FILTER = "user_seen_filter"
    FEATURE_SPEC = "feature_spec"
    ACTIVE_NAMESPACE = "active_ns"
    TOOLCHAIN_CHECK = "toolchain_check"


CONTROL_KINDS = frozenset({KeyKind.ACTIVE_NAMESPACE})


def _namespace_prefix(namespace: str) -> str:
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} must match {NAMESPACE_PATTERN.pattern}")
    return f"{KEY_PREFIX}:v{FORMAT_VERSION}:{namespace}:"


def redis_key(kind: KeyKind, entity_id: str, namespace: str) -> str:
    """Build the key of one entity. The entity id comes last, so it may itself contain ':'; it is
    the key's hash tag, so it may not contain braces."""
    prefix = _namespace_prefix(namespace)
    if (kind in CONTROL_KINDS) != (namespace == CONTROL_NAMESPACE):
        raise ValueError(f"kind {kind} belongs {'in' if kind in CONTROL_KINDS else 'outside'} the control namespace")
    if not entity_id:
        raise ValueError("entity_id must not be empty")
    if "{" in entity_id or "}" in entity_id:
        raise ValueError(f"entity_id {entity_id!r} must not contain braces (they delimit the hash tag)")
    return f"{prefix}{KeyKind(kind)}:{{{entity_id}}}"


def key_pattern(namespace: str, kind: KeyKind | None = None) -> str:
    """A SCAN MATCH pattern for every key of `namespace`, or only those of one kind.
    Namespaces and kinds hold no glob characters, so the pattern matches exactly those keys."""
    return _namespace_prefix(namespace) + (f"{KeyKind(kind)}:*" if kind is not None else "*")


def entity_of(key: str, kind: KeyKind, namespace: str) -> str:
    """The entity id of a key `redis_key(kind, entity_id, namespace)` built."""
    prefix = f"{_namespace_prefix(namespace)}{KeyKind(kind)}:{{"
    if not key.startswith(prefix) or not key.endswith("}"):
        raise ValueError(f"{key!r} is not a {kind} key of namespace {namespace!r}")
    return key[len(prefix) : -1]


VERSION_FIELD, VALUE_FIELD = "version", "value"
TRENDING_ENTITY = "global"
"""Entity id of the one trending list of a namespace."""
FEATURE_SPEC_ENTITY = "stream"
"""Entity id of the feature spec the stream writing a namespace runs with."""


SEEN_FILTER_BITS = 1 << 17
SEEN_FILTER_HASHES = 5
"""A seen filter is a string of 2^17 bits (16 KiB) with 5 bits per item: one item in about 110,000
passes for seen with 2,700 items in it (MovieLens's heaviest user), one in 23 with 20,000."""


def seen_filter_positions(item_id: str) -> tuple[int, ...]:
    """The bits of `item_id` in a seen filter: the first SEEN_FILTER_HASHES 32-bit words of the SHA-1
    of its UTF-8 bytes, each modulo SEEN_FILTER_BITS (`WRITE_FEATURES` computes the same with
    `redis.sha1hex`). Bit n is SETBIT's offset n: byte n // 8, most significant bit first."""
    digest = hashlib.sha1(item_id.encode()).digest()
    return tuple(int.from_bytes(digest[4 * n : 4 * n + 4], "big") % SEEN_FILTER_BITS for n in range(SEEN_FILTER_HASHES))


def seen_filter_of(item_ids: Iterable[str]) -> bytes:
    """The seen filter holding `item_ids`, as SETBIT leaves it: as long as its last set bit needs."""
    positions = [position for item_id in item_ids for position in seen_filter_positions(item_id)]
    bits = bytearray(max(positions, default=-1) // 8 + 1)
    for position in positions:
        bits[position // 8] |= 0x80 >> position % 8
    return bytes(bits)


def seen_filter_holds(seen_filter: bytes, item_id: str) -> bool:
    """Whether `item_id` passes the filter: every one of its bits is set (false positives possible)."""
    return all(
        position // 8 < len(seen_filter) and seen_filter[position // 8] & 0x80 >> position % 8
        for position in seen_filter_positions(item_id)
    )


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


def encode_value(data: UserSequence | UserFeatures | ItemFeatures | Trending | ExperimentTallies, as_of: int) -> bytes:
    plain = _sequence_data(data) if isinstance(data, UserSequence) else data
    return orjson.dumps({"format_version": FORMAT_VERSION, "as_of": as_of, "data": plain})


def _sequence_data(sequence: UserSequence) -> dict[str, list[dict[str, Any]]]:
    """The stream writes a sequence of up to 50 entries per changed user and batch: orjson encodes
    plain dicts of them several times faster than it walks the slotted dataclasses."""
    return {
        "entries": [
            {"event_id": e.event_id, "item_id": e.item_id, "type": e.type._value_, "ts": e.ts, "value": e.value}
            for e in sequence.entries
        ]
    }


_EVENT_TYPES = {event_type.value: event_type for event_type in EventType}
"""A dict lookup instead of calling the enum: the service decodes a sequence of 50 entries per request."""


def _sequence(data: dict[str, Any]) -> UserSequence:
    return UserSequence(
        tuple(
            SequenceEntry(e["event_id"], e["item_id"], _EVENT_TYPES[e["type"]], e["ts"], e["value"])
            for e in data["entries"]
        )
    )


def _item(data: dict[str, Any]) -> ItemFeatures:
    return ItemFeatures(**{**data, "recent": tuple((start, count) for start, count in data["recent"])})


def _trending(data: dict[str, Any]) -> Trending:
    return Trending(items=tuple((item_id, score) for item_id, score in data["items"]), at_ts=data["at_ts"])


def _tallies(data: dict[str, Any]) -> ExperimentTallies:
    arms = {arm: ArmTally(**tally) for arm, tally in data["arms"].items()}
    return ExperimentTallies(arms, data["version"], data["at_ts"])


DECODERS: dict[KeyKind, Callable[[dict[str, Any]], Any]] = {
    KeyKind.USER_SEQUENCE: _sequence,
    KeyKind.USER_FEATURES: lambda data: UserFeatures(**data),
    KeyKind.ITEM_FEATURES: _item,
    KeyKind.TRENDING: _trending,
    KeyKind.EXPERIMENT: _tallies,
}


def decode_value(kind: KeyKind, raw: bytes) -> StoredValue:
    try:
        stored = orjson.loads(raw)
        if stored.get("format_version") != FORMAT_VERSION:
            raise FormatError(f"{kind} value has format_version {stored.get('format_version')}, not {FORMAT_VERSION}")
        return StoredValue(DECODERS[kind](stored["data"]), stored["as_of"])
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise FormatError(f"{kind} value is not in Redis format v{FORMAT_VERSION}: {error!r}") from None


def feature_spec_key(namespace: str) -> str:
    return redis_key(KeyKind.FEATURE_SPEC, FEATURE_SPEC_ENTITY, namespace)


def encode_feature_spec(spec: FeatureSpec) -> bytes:
    return orjson.dumps(spec.model_dump(mode="json"))


def decode_feature_spec(raw: bytes) -> FeatureSpec:
    try:
        return FeatureSpec.model_validate_json(raw)
    except ValueError as error:
        raise FormatError(f"{KeyKind.FEATURE_SPEC} value is not a feature spec: {error}") from None
