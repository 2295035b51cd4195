"""The live state serving reads from Redis: one pipelined round trip per request."""

import asyncio
import logging
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import redis.asyncio as aioredis

from schemas.feature_store import AsyncFeatureStore
from schemas.logic.features import SequenceEntry, UserFeatures, UserSequence
from schemas.redis_format import StoredValue

log = logging.getLogger("kingfisher.serving")
NAMESPACE_REFRESH_S = 1.0


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
    """The feature store's reads in the namespace serving follows: the active one (switched by
    replays), looked up once a second."""

    def __init__(self, store: AsyncFeatureStore, default_namespace: str):
        self.store = store
        self.namespace = default_namespace
        self._default = default_namespace

    async def follow_namespace(self) -> None:
        while True:
            try:
                self.namespace = await self.store.active_namespace(self._default)
            except (aioredis.RedisError, OSError) as error:
                log.debug("namespace refresh failed: %s", error)
            await asyncio.sleep(NAMESPACE_REFRESH_S)

    async def read(self, user_id: str, seen: bool = False) -> LiveState:
        """The user's state in one round trip; with `seen`, also the user's whole seen set."""
        read = await self.store.read_user(user_id, self.namespace, seen)
        return LiveState(read.sequence, read.features, read.trending, seen_set=read.seen)

    async def trending(self) -> StoredValue | None:
        return await self.store.trending(self.namespace)

    async def some_users(self, limit: int) -> list[str]:
        """Up to `limit` users that have a live sequence, shortest ids first (for a picker, not a census)."""
        return await self.store.users(self.namespace, limit)
