"""The live state serving reads from Redis: one pipelined round trip per request."""

import asyncio
import logging

import redis.asyncio as aioredis

from schemas.features import FeatureSpec
from schemas.redis_format import StoredValue
from schemas.runtime.feature_store import AsyncFeatureStore, UserRead
from serving.clock import EventClock

log = logging.getLogger("kingfisher.serving")
NAMESPACE_REFRESH_S = 1.0


class LiveStore:
    """The feature store's reads in the namespace serving follows: the active one (switched by
    replays), looked up once a second; and the stream's event-time clock, which every read moves."""

    def __init__(self, store: AsyncFeatureStore, default_namespace: str, clock: EventClock | None = None):
        self.store = store
        self.namespace = default_namespace
        self._default = default_namespace
        self.clock = clock or EventClock()

    async def follow_namespace(self) -> None:
        while True:
            try:
                self.namespace = await self.store.active_namespace(self._default)
            except (aioredis.RedisError, OSError) as error:
                log.debug("namespace refresh failed: %s", error)
            await asyncio.sleep(NAMESPACE_REFRESH_S)

    async def read(self, user_id: str, seen: bool = False) -> UserRead:
        """The user's state in one round trip; with `seen`, also the user's whole seen set."""
        state = await self.store.read_user(user_id, self.namespace, seen)
        for stored in (state.trending, state.sequence):  # the user's own events may be newer than the list's
            if stored is not None:
                self.clock.observe(stored.as_of)
        return state

    async def stream_feature_spec(self) -> FeatureSpec | None:
        """The feature spec the stream writing the namespace runs with (None: none recorded, or Redis
        does not answer: then nothing can be checked)."""
        try:
            return await self.store.feature_spec(self.namespace)
        except (aioredis.RedisError, OSError) as error:
            log.warning("the stream's feature spec could not be read: %s", error)
            return None

    async def trending(self) -> StoredValue | None:
        return await self.store.trending(self.namespace)

    async def experiment_tallies(self, experiment: str) -> StoredValue | None:
        return await self.store.experiment_tallies(experiment, self.namespace)

    async def some_users(self, limit: int) -> list[str]:
        """Up to `limit` users that have a live sequence, shortest ids first (for a picker, not a census)."""
        return await self.store.users(self.namespace, limit)
