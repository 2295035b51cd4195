"""The live model bundle: loaded, verified and tried once in the background, then swapped in one assignment.

A request takes `holder.bundle` once and uses that object to the end, so a swap never changes the
models under a request in flight. New versions are noticed from the `model-updates` topic and,
as a backstop, by polling the registry's CURRENT pointer. Items of the catalogue newer than a
bundle's training, and withdrawals, reach it the same way: a copy of the bundle with them swaps in
(`apply`).
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from schemas.bundle import BundleError, Registry, verify
from schemas.catalogue import CatalogueItem
from schemas.config import Settings
from schemas.features import FeatureSpec
from schemas.runtime.catalogue_topic import CatalogueChanges
from schemas.runtime.loaded_bundle import LoadedBundle
from schemas.runtime.model_inputs import FIRST_ITEM, RANKER_FEATURES, SequenceArrays
from serving.catalogue import LiveCatalogue, private_consumer
from serving.heap import InFlight, collect_when_quiet

log = logging.getLogger("kingfisher.serving")
# Under traffic that never pauses, a swapped-out bundle is collected after this anyway: its memory
# matters more than one pause.
QUIET_PATIENCE_S = 30.0


class ModelHolder:
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        in_flight: InFlight,
        catalogue: LiveCatalogue,
        stream_spec: Callable[[], Awaitable[FeatureSpec | None]],
        on_live: Callable[[int, int, int], None] = lambda version, added, withdrawn: None,
        pinned: int | None = None,
    ):
        """Holds the registry's current version, or with `pinned`, that version only (an experiment's
        arm). `stream_spec`: the feature spec the stream writing the served namespace runs with; a
        version trained with another is refused."""
        self.settings, self.executor, self.in_flight, self.on_live = settings, executor, in_flight, on_live
        self.pinned = pinned
        self.catalogue, self.stream_spec = catalogue, stream_spec
        self.registry = Registry(settings.stack.models_dir)
        self.bundle: LoadedBundle | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._summaries: dict[int, dict] = {}
        self._collections: set[asyncio.Task] = set()

    async def refresh(self) -> bool:
        """Load the registry's current (or the pinned) version unless it is live; True if a new one went live."""
        async with self._lock:
            current = self.pinned or self.registry.current()
            if current is None or (self.bundle is not None and self.bundle.version == current):
                return False
            loop, known, withdrawn = (
                asyncio.get_running_loop(),
                list(self.catalogue.items.values()),
                set(self.catalogue.withdrawn),
            )
            try:
                await self._check_feature_spec(current)
                loaded = await loop.run_in_executor(self.executor, self._load, current, known, withdrawn)
            except (BundleError, OSError, ValueError) as error:
                if self.last_error != (refusal := f"version {current}: {error}"):
                    log.error("not loading model %s", refusal)
                self.last_error = refusal
                return False
            previous, self.bundle, self.last_error = self.bundle, loaded, None
            self._live(loaded)
            log.info(
                "model version %d live (was %s), %d catalogue items newer than its training added",
                loaded.version,
                previous.version if previous else "none",
                loaded.added_items,
            )
            if previous is not None:
                del previous  # requests in flight may still hold it: it is collected once they are done
                self._collect_when_quiet()
            return True

    async def apply(self, changes: CatalogueChanges) -> None:
        """Swap in a copy of the live bundle with the items of `changes` it does not know and its withdrawals."""
        async with self._lock:
            if self.bundle is None:
                return
            grown = await asyncio.get_running_loop().run_in_executor(
                None, self.bundle.with_items, changes.published.values(), changes.withdrawn
            )  # not on the model threads: requests do not queue behind it
            if grown is not self.bundle:
                log.info("model v%d: %d items added, %d withdrawn (since its training)", grown.version,
                         grown.added_items, len(grown.withdrawn))  # fmt: skip
                self.bundle = grown
                self._live(grown)

    async def _check_feature_spec(self, version: int) -> None:
        """BundleError when `version` was trained on features the stream does not compute (another spec)."""
        trained, stream = self.registry.manifest(version).feature_spec, await self.stream_spec()
        if stream is not None and trained != stream:
            raise BundleError(
                f"trained with another feature spec than the stream's ({trained.differences(stream)}): "
                "retrain on the stream's sample log, or run the stream with the model's spec"
            )

    def _live(self, bundle: LoadedBundle) -> None:
        self.on_live(bundle.version, bundle.added_items, len(bundle.withdrawn))

    def _collect_when_quiet(self) -> None:
        collection = asyncio.create_task(collect_when_quiet(self.in_flight, QUIET_PATIENCE_S), name="collection")
        self._collections.add(collection)  # a task nobody references may vanish before it runs
        collection.add_done_callback(self._collections.discard)

    def _load(self, version: int, catalogue: list[CatalogueItem], withdrawn: set[str]) -> LoadedBundle:
        return load_tried(self.settings, self.registry.path(version)).with_items(catalogue, withdrawn)

    async def follow(self, wake: asyncio.Event) -> None:
        """Refresh on each announcement (`wake`) and every KF_MODEL_POLL_S."""
        while True:
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.serving.model_poll_s)
            wake.clear()

    def retained(self) -> list[dict]:
        """Every version in the registry, newest first, with its metrics (or why it cannot be loaded)."""
        return [self._summary(version) for version in reversed(self.registry.versions())]

    def _summary(self, version: int) -> dict:
        # A published version's files never change: verify each version once.
        if version not in self._summaries:
            self._summaries[version] = self._verified_summary(version)
        return self._summaries[version]

    def _verified_summary(self, version: int) -> dict:
        try:
            manifest = verify(self.registry.path(version))
        except BundleError as error:
            return {"version": version, "error": str(error)}
        return {
            "version": version,
            "created_at": manifest.created_at,
            "parent_version": manifest.parent_version,
            "metrics": manifest.metrics,
        }


def load_tried(settings: Settings, directory: Path) -> LoadedBundle:
    """A bundle as the service serves it: loaded, verified and run once on a batch of the largest
    shape a request brings, so that a bundle whose arrays do not fit together is refused before
    it goes live rather than failing requests after."""
    clock = time.perf_counter()
    bundle = LoadedBundle(directory, settings.pipeline.faiss_exact_max_items)
    rows, length = settings.serving.serve_max_batch, bundle.sequence_length
    pipeline = settings.pipeline
    most_candidates = sum((pipeline.candidates, pipeline.new_item_candidates, pipeline.covisitation_candidates,
                           pipeline.trending_candidates))  # fmt: skip
    items = np.full((rows, length), FIRST_ITEM, np.int32)
    sequences = SequenceArrays(items, items, np.zeros((rows, length), np.float32))
    bundle.index.search(bundle.user_vectors(sequences), most_candidates)
    candidates = np.full((rows, most_candidates), FIRST_ITEM, np.int32)
    features = np.zeros((rows, most_candidates, len(RANKER_FEATURES)), np.float32)
    bundle.score(
        sequences, candidates, features, np.zeros((rows, most_candidates, bundle.ranker_behaviours), np.float32)
    )
    log.info("model v%d loaded and tried in %.2f s", bundle.version, time.perf_counter() - clock)
    return bundle


def listen_for_updates(
    settings: Settings, loop: asyncio.AbstractEventLoop, wake: asyncio.Event, stop: threading.Event
) -> threading.Thread:
    """A thread that sets `wake` on every message of the model-updates topic."""

    def run() -> None:
        consumer = private_consumer(settings, "serving", "latest")
        consumer.subscribe([settings.stack.topic_model_updates])
        try:
            while not stop.is_set():
                message = consumer.poll(0.5)
                if message is not None and not message.error():
                    loop.call_soon_threadsafe(wake.set)
        finally:
            consumer.close()

    thread = threading.Thread(target=run, name="model-updates", daemon=True)
    thread.start()
    return thread
