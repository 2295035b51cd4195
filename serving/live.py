"""The live state serving reads from Redis: one pipelined round trip per request."""

import asyncio
import logging
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import redis.asyncio as aioredis

from schemas.features import SequenceEntry, UserFeatures, UserSequence
from schemas.redis_format import (
    TRENDING_ENTITY,
    VALUE_FIELD,
    KeyKind,
    StoredValue,
    active_namespace_key,
    decode_value,
    entity_of,
    key_pattern,
    read_seen,
    redis_key,
)

log = logging.getLogger("kingfisher.serving")
NAMESPACE_REFRESH_S = 1.0
USER_SCAN_BATCH = 500


@dataclass(frozen=True)
class LiveState:
    """A user's live sequence and features and the trending list, as stored (None where absent),
    and the user's seen set when it was read."""

    sequence: StoredValue | None = None
    features: StoredValue | None = None
    trending: StoredValue | None = None
    seen_set: frozenset[str] = frozenset()

    @property
    def seen(self) -> set[str]:
        """Every item the user interacted with that the state holds: the seen set and the sequence."""
        return set(self.seen_set).union(behaviour.item_id for behaviour in self.behaviours)

    @property
    def known_user(self) -> bool:
        return self.sequence is not None or self.features is not None

    @cached_property
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

    def profile(self) -> dict[str, Any]:
        sequence: UserSequence | None = self.sequence.data if self.sequence else None
        return {
            "sequence": [asdict(entry) for entry in sequence.entries] if sequence else [],
            "features": asdict(self.features.data) if self.features else None,
            "features_as_of": self.as_of,
        }


class LiveStore:
    """Reads through redis.asyncio; follows the active namespace (switched by replays) once a second."""

    def __init__(self, client: aioredis.Redis, default_namespace: str):
        self.client = client
        self.namespace = default_namespace
        self._default = default_namespace

    async def follow_namespace(self) -> None:
        while True:
            try:
                active = await self.client.get(active_namespace_key())
                self.namespace = active.decode() if active else self._default
            except (aioredis.RedisError, OSError) as error:
                log.debug("namespace refresh failed: %s", error)
            await asyncio.sleep(NAMESPACE_REFRESH_S)

    async def read(self, user_id: str, seen: bool = False) -> LiveState:
        """The user's state in one round trip; with `seen`, also the user's whole seen set."""
        kinds = (KeyKind.USER_SEQUENCE, KeyKind.USER_FEATURES, KeyKind.TRENDING)
        entities = (user_id, user_id, TRENDING_ENTITY)
        async with self.client.pipeline(transaction=False) as pipe:
            for kind, entity in zip(kinds, entities, strict=True):
                pipe.hget(redis_key(kind, entity, self.namespace), VALUE_FIELD)
            if seen:
                read_seen(pipe, redis_key(KeyKind.USER_SEEN, user_id, self.namespace))
            raw = await pipe.execute()
        values = [
            decode_value(kind, value) if value is not None else None
            for kind, value in zip(kinds, raw[: len(kinds)], strict=True)
        ]
        seen_set = frozenset(item.decode() for item in raw[len(kinds)]) if seen else frozenset()
        return LiveState(*values, seen_set=seen_set)

    async def trending(self) -> StoredValue | None:
        raw = await self.client.hget(redis_key(KeyKind.TRENDING, TRENDING_ENTITY, self.namespace), VALUE_FIELD)
        return decode_value(KeyKind.TRENDING, raw) if raw is not None else None

    async def some_users(self, limit: int) -> list[str]:
        """Up to `limit` users that have a live sequence, shortest ids first (for a picker, not a census)."""
        namespace, users = self.namespace, []
        async for key in self.client.scan_iter(
            match=key_pattern(namespace, KeyKind.USER_SEQUENCE), count=USER_SCAN_BATCH
        ):
            users.append(entity_of(key.decode(), KeyKind.USER_SEQUENCE, namespace))
            if len(users) >= limit:
                break
        return sorted(users, key=lambda user: (len(user), user))
