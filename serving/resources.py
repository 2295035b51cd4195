"""What the service holds while it runs, under typed application keys, and the `cleanup_ctx` that
opens and closes it: the thread pool for model calls, the feature store, the Kafka producer, the
model holder, the experiment's arms, the micro-batcher, the catalogue and the background tasks that
follow the active namespace, model updates, the experiment and the catalogue."""

import asyncio
import gc
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from aiohttp import web
from confluent_kafka import Producer

from schemas.config import Settings
from schemas.experiments import experiment_report
from schemas.runtime.catalogue_topic import CATALOGUE_READ_TIMEOUT_S
from schemas.runtime.feature_store import AsyncFeatureStore
from schemas.runtime.pipeline import rank_batch
from serving.batcher import MicroBatcher
from serving.catalogue import LiveCatalogue, follow_catalogue
from serving.experiments import Experiments
from serving.heap import InFlight, freeze_imports
from serving.live import LiveStore
from serving.metrics import GcPauseProbe, Metrics
from serving.models import ModelHolder, listen_for_updates

log = logging.getLogger("kingfisher.serving")

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", LiveStore)
MODELS = web.AppKey("models", ModelHolder)
EXPERIMENTS = web.AppKey("experiments", Experiments)
METRICS = web.AppKey("metrics", Metrics)
PRODUCER = web.AppKey("producer", Producer)
CATALOGUE = web.AppKey("catalogue", LiveCatalogue)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
BATCHER = web.AppKey("batcher", MicroBatcher)
IN_FLIGHT = web.AppKey("in_flight", InFlight)


async def resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[EXECUTOR] = ThreadPoolExecutor(settings.serving.serve_model_threads, thread_name_prefix="models")
    store = AsyncFeatureStore.for_stack(settings.stack, timeout_s=1)
    app[STORE] = LiveStore(store, settings.stack.namespace)
    app[PRODUCER] = Producer(
        {"bootstrap.servers": settings.stack.kafka_bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    loop, wake, stop = asyncio.get_running_loop(), asyncio.Event(), threading.Event()
    app[CATALOGUE], batches = LiveCatalogue(), asyncio.Queue()
    stream_spec = app[STORE].stream_feature_spec
    app[MODELS] = ModelHolder(
        settings, app[EXECUTOR], app[IN_FLIGHT], app[CATALOGUE], stream_spec, app[METRICS].model_live
    )
    app[EXPERIMENTS] = Experiments(
        app[MODELS],
        lambda version: ModelHolder(
            settings, app[EXECUTOR], app[IN_FLIGHT], app[CATALOGUE], stream_spec, pinned=version
        ),
        settings.serving.experiment,
    )
    catalogue = follow_catalogue(settings, loop, batches, caught_up := asyncio.Event(), stop)
    try:
        await asyncio.wait_for(caught_up.wait(), CATALOGUE_READ_TIMEOUT_S)
    except TimeoutError:  # a catalogue read late costs titles and new items until it is read
        log.warning("catalogue topic not read to its end in %d s: following it meanwhile", CATALOGUE_READ_TIMEOUT_S)
    while not batches.empty():
        app[CATALOGUE].apply(batches.get_nowait())
    log.info("%d catalogue items read", len(app[CATALOGUE].items))
    listener = listen_for_updates(settings, loop, wake, stop)
    deliveries = threading.Thread(target=_serve_deliveries, args=(app[PRODUCER], stop), name="kafka deliveries")
    deliveries.start()
    app[BATCHER] = MicroBatcher(
        rank_batch,
        app[EXECUTOR],
        settings.serving.serve_model_threads,
        settings.serving.serve_max_batch,
        app[METRICS].observe_batch,
    )
    freeze_imports()
    gc.callbacks.append(probe := GcPauseProbe(app[METRICS]))
    tasks = [
        asyncio.create_task(app[BATCHER].run(), name="batcher"),
        asyncio.create_task(app[STORE].follow_namespace(), name="namespace"),
        asyncio.create_task(app[MODELS].follow(wake), name="models"),
        asyncio.create_task(app[EXPERIMENTS].follow(settings.serving.model_poll_s), name="experiment"),
        asyncio.create_task(_apply_catalogue(app, batches), name="catalogue"),
        asyncio.create_task(_report_experiment(app), name="experiment report"),
    ]
    yield
    for task in tasks:
        task.cancel()
    gc.callbacks.remove(probe)
    stop.set()
    await loop.run_in_executor(None, listener.join, 5)
    await loop.run_in_executor(None, catalogue.join, 5)
    await loop.run_in_executor(None, deliveries.join, 5)
    await loop.run_in_executor(None, app[PRODUCER].flush, 10)
    await store.close()
    app[EXECUTOR].shutdown(wait=True)


def _serve_deliveries(producer: Producer, stop: threading.Event) -> None:
    """Run the producer's delivery callbacks (they settle POST /v1/events' acknowledgements)."""
    while not stop.is_set():
        producer.poll(0.1)


async def _report_experiment(app: web.Application) -> None:
    """The running experiment's counts into Prometheus every KF_MODEL_POLL_S, whoever reads them."""
    while True:
        await asyncio.sleep(app[SETTINGS].serving.model_poll_s)
        if (running := app[EXPERIMENTS].running.experiment) is None:
            continue
        try:
            stored = await app[STORE].experiment_tallies(running.name)
        except (aioredis.RedisError, OSError) as error:
            log.debug("experiment counts not read: %s", error)
            continue
        app[METRICS].experiment_report(experiment_report(running, stored.data if stored else None))


async def _apply_catalogue(app: web.Application, batches: asyncio.Queue) -> None:
    """Each batch of catalogue changes, with those queued behind it: into the catalogue, then the models."""
    while True:
        changes = await batches.get()
        while not batches.empty():
            changes.then(batches.get_nowait())
        app[CATALOGUE].apply(changes)
        await app[MODELS].apply(changes)
        await app[EXPERIMENTS].apply(changes)
