"""The live model bundle: loaded, verified and warmed up in the background, then swapped in one assignment.

A request takes `holder.bundle` once and uses that object to the end, so a swap never changes the
models under a request in flight. New versions are noticed from the `model-updates` topic and,
as a backstop, by polling the registry's CURRENT pointer.
"""

import asyncio
import contextlib
import gc
import logging
import threading
import time
import uuid
from concurrent.futures import Executor

import numpy as np
from confluent_kafka import Consumer

from schemas.bundle import BundleError, LoadedBundle, Registry, verify
from schemas.config import Settings
from schemas.model_inputs import FIRST_ITEM, RANKER_FEATURES, SequenceArrays

log = logging.getLogger("kingfisher.serving")


def configure_tensorflow(threads: int) -> None:
    """Limit TensorFlow's thread pools (0: its default); must run before the first model loads."""
    if threads:
        import tensorflow as tf  # here: importing it costs seconds, and only the service needs it

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


class ModelHolder:
    def __init__(self, settings: Settings, executor: Executor):
        configure_tensorflow(settings.serve_tf_threads)
        self.settings, self.executor = settings, executor
        self.registry = Registry(settings.models_dir)
        self.bundle: LoadedBundle | None = None
        self.last_error: str | None = None
        self._lock = asyncio.Lock()
        self._summaries: dict[int, dict] = {}

    async def refresh(self) -> bool:
        """Load the registry's current version if it is not the live one; True if a new one went live."""
        async with self._lock:
            current = self.registry.current()
            if current is None or (self.bundle is not None and self.bundle.version == current):
                return False
            loop = asyncio.get_running_loop()
            try:
                loaded = await loop.run_in_executor(self.executor, self._load, current)
            except (BundleError, OSError, ValueError) as error:
                self.last_error = f"version {current}: {error}"
                log.error("not loading model %s", self.last_error)
                return False
            previous, self.bundle, self.last_error = self.bundle, loaded, None
            log.info("model version %d live (was %s)", loaded.version, previous.version if previous else "none")
            del previous  # in-flight requests may still hold it; the next swap's collection frees it then
            freeze_heap()
            return True

    def _load(self, version: int) -> LoadedBundle:
        bundle = LoadedBundle(self.registry.path(version), self.settings.faiss_exact_max_items, compiled=True)
        most = self.settings.candidates + self.settings.trending_candidates
        clock = time.perf_counter()
        _warm_up(bundle, self.settings.serve_max_batch, most)
        log.info("model v%d warmed up in %.1f s", version, time.perf_counter() - clock)
        return bundle

    async def follow(self, wake: asyncio.Event) -> None:
        """Refresh on each announcement (`wake`) and every KF_MODEL_POLL_S."""
        while True:
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.settings.model_poll_s)
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


def freeze_heap() -> None:
    """Put every object alive now (TensorFlow's, the live models') beyond the cyclic garbage
    collector's reach. Otherwise each full collection walks them all: under load here one came
    about once a minute and stopped every request for 52-340 ms.
    Unfreezing first lets this collection free the bundles swapped out before (TensorFlow objects
    hold reference cycles); it is one such pause per model swap instead of one a minute."""
    clock = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info(
        "%d objects frozen out of garbage collection in %.0f ms",
        gc.get_freeze_count(),
        (time.perf_counter() - clock) * 1000,
    )


def _warm_up(bundle: LoadedBundle, max_batch: int, most_candidates: int) -> None:
    """Run every input shape a model call can bring, so that no request waits for graph tracing
    or an XLA compilation."""
    length = bundle.sequence_length
    sizes = [(rows, count) for rows in range(1, max_batch + 1) for count in range(1, most_candidates + 1)]
    shapes = {bundle.input_shape(rows, count) for rows, count in sizes}
    for rows, count in sorted(shapes):
        items = np.zeros((rows, length), np.int32)
        sequences = SequenceArrays(items, items, np.zeros((rows, length), np.float32))
        bundle.index.search(bundle.user_vectors(sequences), most_candidates)
        candidates = np.full((rows, count), FIRST_ITEM, np.int32)
        features = np.zeros((rows, count, len(RANKER_FEATURES)), np.float32)
        bundle.score(sequences, candidates, features, np.zeros((rows, count, length), np.float32))


def listen_for_updates(
    settings: Settings, loop: asyncio.AbstractEventLoop, wake: asyncio.Event, stop: threading.Event
) -> threading.Thread:
    """A thread that sets `wake` on every message of the model-updates topic."""

    def run() -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": f"serving-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([settings.topic_model_updates])
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
