"""Redis format version 3: the one key builder and the value codecs. Specified in REDIS_FORMAT.md;
`schemas.runtime.feature_store` is the one module that writes and reads them.

Keys are ``kf:v<FORMAT_VERSION>:<namespace>:<kind>:{<entity_id>}``: the braces are a Redis Cluster
hash tag, so every key of one user or item lives in one hash slot. A replay rebuilds state in a
fresh namespace beside the live one; the control namespace holds which one is active.
Feature keys are hashes ``{version, value}``: `value` is JSON ``{"format_version": 3, "as_of": <newest
event time, ms>, "data": {...}}`` and `version` counts the events applied to the key, so a write
that would move the key backwards (a restart, a replay) is refused by `WRITE_FEATURES`.
A user's seen set is a sorted set (item -> newest interaction time) whose writes are idempotent.
"""

import re
from collections.abc import Callable
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
    return orjson.dumps({"format_version": FORMAT_VERSION, "as_of": as_of, "data": data})


def _sequence(data: dict[str, Any]) -> UserSequence:
    return UserSequence(tuple(SequenceEntry(**{**e, "type": EventType(e["type"])}) for e in data["entries"]))


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
