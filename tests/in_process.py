"""The service in the test's own process (aiohttp's test client): the real app, handlers and models,
with a feature store in memory and a Kafka producer that records what it is given."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schemas.config import Settings
from schemas.events import Event
from schemas.experiments import tallies_of
from schemas.features import FeatureSpec
from schemas.redis_format import StoredValue
from schemas.runtime.feature_store import UserRead
from schemas.runtime.pipeline import rank_batch
from schemas.runtime.streaming import fold_stream, seen_filters, seen_sets, trending_list
from serving.app import init_app
from serving.batcher import MicroBatcher
from serving.catalogue import LiveCatalogue
from serving.experiments import Experiments
from serving.live import LiveStore
from serving.models import ModelHolder
from serving.resources import (
    BATCHER,
    CATALOGUE,
    EXECUTOR,
    EXPERIMENTS,
    IN_FLIGHT,
    METRICS,
    MODELS,
    PRODUCER,
    SETTINGS,
    STORE,
)


class MemoryFeatureStore:
    """`AsyncFeatureStore`'s reads over the state `fold_stream` computes from `events`; `down`
    makes every read fail as an unreachable Redis does."""

    def __init__(self, events: list[Event], spec: FeatureSpec):
        self.spec = spec
        self.states, _, trending = fold_stream(events, spec)
        self.seen = seen_sets(events, spec)
        self.seen_filters = seen_filters(events, spec)
        listed = trending_list(trending, spec)
        self.trending_list = StoredValue(listed, listed.at_ts) if events else None
        self.tallies = tallies_of(events)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise redis.ConnectionError("connection refused")

    async def ping(self) -> None:
        self._check()

    async def active_namespace(self, default: str) -> str:
        self._check()
        return default

    async def feature_spec(self, namespace: str) -> FeatureSpec | None:
        self._check()
        return self.spec

    async def read_user(self, user_id: str, namespace: str, seen: bool = False) -> UserRead:
        self._check()
        state = self.states.get(user_id)
        if state is None:
            return UserRead(None, None, self.trending_list)
        as_of = state.features.last_ts
        seen_set = frozenset(self.seen.get(user_id, {})) if seen else frozenset()
        seen_filter = self.seen_filters.get(user_id) if seen else None
        return UserRead(StoredValue(state.sequence, as_of), StoredValue(state.features, as_of), self.trending_list,
                        seen_set, seen_filter)  # fmt: skip

    async def trending(self, namespace: str) -> StoredValue | None:
        self._check()
        return self.trending_list

    async def experiment_tallies(self, experiment: str, namespace: str) -> StoredValue | None:
        self._check()
        tallies = self.tallies.get(experiment)
        return StoredValue(tallies, tallies.at_ts) if tallies else None

    async def users(self, namespace: str, limit: int) -> list[str]:
        self._check()
        return sorted(self.states, key=lambda user: (len(user), user))[:limit]


class RecordingProducer:
    """Acknowledges every event at once, or refuses them all with `error`."""

    def __init__(self):
        self.produced: list[tuple[str, bytes, bytes]] = []
        self.error: str | None = None

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Callable) -> None:
        if self.error is None:
            self.produced.append((topic, key, value))
        on_delivery(self.error, None)

    def flush(self, _timeout: float = 0) -> int:
        return 0


def in_memory_resources(store: MemoryFeatureStore, producer: RecordingProducer, catalogue: LiveCatalogue):
    """A `cleanup_ctx` like `serving.resources.resources`, with the store and producer given and the
    registry's current bundle and experiment (KF_EXPERIMENT) loaded before the first request."""

    async def resources(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        app[EXECUTOR] = ThreadPoolExecutor(1, thread_name_prefix="models")
        app[STORE] = LiveStore(store, settings.stack.namespace)
        app[PRODUCER] = producer
        app[CATALOGUE] = catalogue
        stream_spec = app[STORE].stream_feature_spec
        app[MODELS] = ModelHolder(
            settings, app[EXECUTOR], app[IN_FLIGHT], catalogue, stream_spec, app[METRICS].model_live
        )
        await app[MODELS].refresh()
        app[EXPERIMENTS] = Experiments(
            app[MODELS],
            lambda version: ModelHolder(
                settings, app[EXECUTOR], app[IN_FLIGHT], catalogue, stream_spec, pinned=version
            ),
            settings.serving.experiment,
        )
        await app[EXPERIMENTS].start(app[EXPERIMENTS].registry.experiment(settings.serving.experiment))
        app[BATCHER] = MicroBatcher(
            rank_batch, app[EXECUTOR], 1, settings.serving.serve_max_batch, app[METRICS].observe_batch
        )
        batcher = asyncio.create_task(app[BATCHER].run(), name="batcher")
        yield
        batcher.cancel()
        app[EXECUTOR].shutdown(wait=True)

    return resources


def with_client(settings: Settings, resources, test: Callable[[TestClient], Awaitable[Any]]) -> Any:
    """Run `test` against the app built by `init_app(settings, resources)` in this process."""

    async def run() -> Any:
        async with TestClient(TestServer(init_app(settings, resources))) as client:
            return await test(client)

    return asyncio.run(run())
