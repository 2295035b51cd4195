"""The one function that builds Redis keys. The layout is specified in REDIS_FORMAT.md.

Every key is ``kf:v<FORMAT_VERSION>:<namespace>:<kind>:<entity_id>``. The namespace lets a
replay rebuild state beside the live one; the version lets a format change live beside the old
one while jobs and services roll over.
"""

import re
from enum import StrEnum

FORMAT_VERSION = 1
KEY_PREFIX = "kf"
NAMESPACE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


class KeyKind(StrEnum):
    TOOLCHAIN_CHECK = "toolchain_check"
    """Set of the records a `streams.smoke` run copied from the Kafka topic named by entity_id."""


def redis_key(kind: KeyKind, entity_id: str, namespace: str) -> str:
    """Build the key of one entity. The entity id comes last, so it may itself contain ':'."""
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(f"namespace {namespace!r} must match {NAMESPACE_PATTERN.pattern}")
    if not entity_id:
        raise ValueError("entity_id must not be empty")
    return f"{KEY_PREFIX}:v{FORMAT_VERSION}:{namespace}:{KeyKind(kind)}:{entity_id}"
