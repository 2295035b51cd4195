"""The recommendation service: `init_app(settings)` builds it for production and for tests.

Resources live in `cleanup_ctx` under typed keys; handlers are short and turn domain errors into
HTTP errors at the edge. A request never fails because Redis is slow or down, or because no model
is loaded yet: it answers from trending/popularity with `fallback` set.
"""

import asyncio
import gc
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from confluent_kafka import KafkaException, Producer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.bundle import LoadedBundle
from schemas.catalogue_topic import read_catalogue_topic
from schemas.config import Settings
from schemas.events import ID_PATTERN, Event, validate_event
from schemas.pipeline import Ranked, RankRequest, rank_batch
from schemas.validation import InvalidRecord
from serving import parameters
from serving.batcher import MicroBatcher
from serving.heap import InFlight, freeze_imports
from serving.live import LiveState, LiveStore
from serving.metrics import GcPauseProbe, Metrics
from serving.models import ModelHolder, listen_for_updates
from serving.openapi import openapi_document
from serving.parameters import BadRequest

log = logging.getLogger("kingfisher.serving")
MAX_BATCH = 500
MAX_BODY_BYTES = 4 * 1024 * 1024
ID_RE = re.compile(ID_PATTERN)
WEB_DIR = Path(__file__).resolve().parent / "web"
T = TypeVar("T")
COLD_START = "cold start"
MODELS_BUSY = "models busy: no answer within KF_MODEL_BUDGET_MS"

SETTINGS = web.AppKey("settings", Settings)
STORE = web.AppKey("store", LiveStore)
MODELS = web.AppKey("models", ModelHolder)
METRICS = web.AppKey("metrics", Metrics)
PRODUCER = web.AppKey("producer", Producer)
TITLES = web.AppKey("titles", dict)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
BATCHER = web.AppKey("batcher", MicroBatcher)
IN_FLIGHT = web.AppKey("in_flight", InFlight)


class Unavailable(RuntimeError):
    """Redis (within the request budget) or Kafka (within KF_EVENTS_ACK_TIMEOUT_S) did not answer; the
    message says how it failed."""


def json_response(payload, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


@web.middleware
async def edge(request: web.Request, handler) -> web.StreamResponse:
    """Time every route; turn BadRequest into 400 with its reasons and Unavailable into 503."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    clock = time.perf_counter()
    try:
        with request.app[IN_FLIGHT].request():
            response = await handler(request)
    except BadRequest as bad:
        response = json_response({"error": "bad request", "reasons": bad.reasons}, status=400)
    except Unavailable as unavailable:
        response = json_response({"error": str(unavailable)}, status=503)
    except web.HTTPException as http:
        response = http
    except Exception:  # a bug: logged with its traceback, answered as JSON like every other error
        log.exception("%s %s failed", request.method, request.path_qs)
        response = json_response({"error": "internal server error"}, status=500)
    metrics = request.app[METRICS]
    metrics.latency.labels(route).observe(time.perf_counter() - clock)
    if response.status >= 400:
        metrics.errors.labels(route, str(response.status)).inc()
    if isinstance(response, web.HTTPException):
        raise response
    return response


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequest(f"{name}: must be true or false, got {raw!r}")
    return raw in ("true", "1")


def _identifier(name: str, value: str | None) -> str:
    if value is None:
        raise BadRequest(f"{name}: required")
    if not ID_RE.fullmatch(value):
        raise BadRequest(f"{name}: must match {ID_PATTERN}")
    return value


async def _from_store(app: web.Application, read: Awaitable[T]) -> T:
    """A Redis read within the request budget, timed as the `redis` stage."""
    clock = time.perf_counter()
    try:
        async with asyncio.timeout(app[SETTINGS].request_budget_ms / 1000):  # unlike wait_for, no task per call
            return await read
    except TimeoutError:
        raise Unavailable("redis slower than the request budget") from None
    except (aioredis.RedisError, OSError) as error:
        raise Unavailable(f"redis unavailable: {type(error).__name__}") from None
    finally:
        app[METRICS].stage.labels("redis").observe(time.perf_counter() - clock)


async def _live_state(app: web.Application, user_id: str, seen: bool) -> tuple[LiveState, str | None]:
    """The user's live state (with `seen`, the seen set too) within the time budget, or an empty one and why not."""
    try:
        return await _from_store(app, app[STORE].read(user_id, seen)), None
    except Unavailable as unavailable:
        return LiveState(), str(unavailable)


def _item(app: web.Application, item_id: str, score: float, reasons: tuple[str, ...] = ()) -> dict:
    titles = app[TITLES]
    item = {"item_id": item_id, "score": score, "title": titles.get(item_id)}
    if reasons:
        item["reasons"] = [{"item_id": reason, "title": titles.get(reason)} for reason in reasons]
    return item


async def recommendations(request: web.Request) -> web.Response:
    app, clock = request.app, time.perf_counter()
    user_id = _identifier("user_id", request.query.get("user_id"))
    k = parameters.RECOMMENDED.parse(request.query, app[SETTINGS])
    exclude_seen, explain = _flag(request, "exclude_seen"), _flag(request, "explain")
    bundle = app[MODELS].bundle  # this request's models, whatever swaps meanwhile
    state, problem = await _live_state(app, user_id, exclude_seen)
    seen = state.seen if exclude_seen else set()
    trending = list(state.trending.data.items) if state.trending else []
    reason = problem or (None if bundle else "no model loaded") or (None if state.known_user else COLD_START)
    ranked = None
    if reason is None:
        asked = RankRequest(
            user_id,
            state.behaviours,
            state.user_features,
            now_ms=int(time.time() * 1000),
            trending=trending[: app[SETTINGS].trending_candidates],
            exclude=seen,
            k=k,
            candidates=app[SETTINGS].candidates,
            explain=k if explain else 0,
        )
        ranked = await _ranked(app, bundle, asked)
        reason = None if ranked is not None else MODELS_BUSY
    if ranked is not None:
        items = [_item(app, s.item_id, s.score, s.reasons) for s in ranked.items]
    else:
        app[METRICS].fallbacks.labels(reason.split(":")[0]).inc()
        items = _popular_items(app, bundle, [item for item, _ in trending], seen, k)
    return json_response(
        {
            "user_id": user_id,
            "items": items,
            "model_version": bundle.version if bundle else None,
            "features_as_of": state.as_of,
            "fallback": reason not in (None, COLD_START),
            "reason": reason,
            "took_ms": round((time.perf_counter() - clock) * 1000, 2),
        }
    )


def _popular_items(app: web.Application, bundle: LoadedBundle | None, trending: list[str], seen: set[str], k: int):
    """The answer without DIN: trending, then the bundle's popularity list, seen items left out."""
    popular = trending + ([item for item in bundle.popular if item not in trending] if bundle else [])
    chosen = [item for item in popular if item not in seen][:k]
    return [_item(app, item, 1.0 / (rank + 1)) for rank, item in enumerate(chosen)]


async def _ranked(app: web.Application, bundle: LoadedBundle, asked: RankRequest) -> Ranked | None:
    """DIN's ranking, or None when the models cannot answer within the model budget: the request
    leaves the queue (it is never computed) and is answered from trending/popularity instead."""
    try:
        async with asyncio.timeout(app[SETTINGS].model_budget_ms / 1000):
            ranked = await app[BATCHER].submit(bundle, asked)
    except TimeoutError:
        return None
    for stage, seconds in ranked.timings_s.items():
        app[METRICS].stage.labels(stage).observe(seconds)
    app[METRICS].candidates.observe(ranked.candidates)
    return ranked


async def similar_items(request: web.Request) -> web.Response:
    item_id = _identifier("item_id", request.match_info["item_id"])
    k = parameters.SIMILAR.parse(request.query, request.app[SETTINGS])
    bundle = request.app[MODELS].bundle
    if bundle is None:
        return json_response({"error": "no model loaded"}, status=503)
    neighbours = await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR], bundle.similar, item_id, k)
    if neighbours is None:
        raise web.HTTPNotFound(
            text=orjson.dumps({"error": f"unknown item {item_id}"}).decode(), content_type="application/json"
        )
    items = [_item(request.app, other, score) for other, score in neighbours]
    return json_response({"item_id": item_id, "items": items, "model_version": bundle.version})


async def profile(request: web.Request) -> web.Response:
    user_id = _identifier("user_id", request.match_info["user_id"])
    state = await _from_store(request.app, request.app[STORE].read(user_id))
    stored = state.profile()
    titles = request.app[TITLES]
    stored["sequence"] = [entry | {"title": titles.get(entry["item_id"])} for entry in stored["sequence"]]
    return json_response({"user_id": user_id, "namespace": request.app[STORE].namespace} | stored)


async def trending(request: web.Request) -> web.Response:
    k = parameters.TRENDING.parse(request.query, request.app[SETTINGS])
    stored = await _from_store(request.app, request.app[STORE].trending())
    ranked = stored.data.items[:k] if stored else ()
    return json_response(
        {
            "items": [_item(request.app, item, score) for item, score in ranked],
            "as_of": stored.as_of if stored else None,
        }
    )


async def users(request: web.Request) -> web.Response:
    limit = parameters.USERS.parse(request.query, request.app[SETTINGS])
    return json_response({"users": await _from_store(request.app, request.app[STORE].some_users(limit))})


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def post_events(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"body: at most {MAX_BODY_BYTES} bytes")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"body: not JSON ({error})") from None
    payloads = body if isinstance(body, list) else [body]
    if not 1 <= len(payloads) <= MAX_BATCH:
        raise BadRequest(f"body: one event or a list of 1 to {MAX_BATCH}, got {len(payloads)}")
    events, reasons = [], []
    for index, payload in enumerate(payloads):
        if not isinstance(payload, dict):
            reasons.append(f"[{index}] $: an event must be a JSON object")
            continue
        try:
            events.append(validate_event(payload))
        except InvalidRecord as invalid:
            reasons += [f"[{index}] {problem}" for problem in invalid.problems]
    if reasons:
        raise BadRequest(*reasons)  # nothing of an invalid batch is produced: the client resends it whole
    settings = request.app[SETTINGS]
    failed = await _produce_acknowledged(request.app[PRODUCER], settings, events)
    if failed:
        # Resending the whole batch is safe: the stream drops an event_id it has already applied.
        raise Unavailable(
            f"events: {len(failed)} of {len(events)} not acknowledged by Kafka within KF_EVENTS_ACK_TIMEOUT_S "
            f"({failed[0]}); resend the batch"
        )
    request.app[METRICS].events.inc(len(events))
    return json_response({"accepted": len(events), "topic": settings.topic_events}, status=202)


async def _produce_acknowledged(producer: Producer, settings: Settings, events: list[Event]) -> list[str]:
    """Produce `events` and wait for the broker's acknowledgements; returns why each one that was
    not acknowledged (within KF_EVENTS_ACK_TIMEOUT_S) failed, as 'event_id: error'."""
    loop = asyncio.get_running_loop()
    outcomes = [loop.create_future() for _ in events]

    def settle(outcome: asyncio.Future, error) -> None:
        if not outcome.done():
            outcome.set_result(None if error is None else str(error))

    for event, outcome in zip(events, outcomes, strict=True):
        try:
            acknowledge = lambda error, _, o=outcome: loop.call_soon_threadsafe(settle, o, error)  # noqa: E731
            producer.produce(settings.topic_events, key=event.kafka_key, value=event.to_json(), on_delivery=acknowledge)
        except (BufferError, KafkaException) as error:
            settle(outcome, error)
    await asyncio.wait(outcomes, timeout=settings.events_ack_timeout_s)
    errors = [o.result() if o.done() else "no acknowledgement in time" for o in outcomes]
    return [f"{event.event_id}: {error}" for event, error in zip(events, errors, strict=True) if error is not None]


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    bundle, problems = request.app[MODELS].bundle, []
    if bundle is None:
        problems.append(request.app[MODELS].last_error or "no model loaded")
    try:
        await asyncio.wait_for(request.app[STORE].client.ping(), 1.0)
    except (TimeoutError, aioredis.RedisError, OSError) as error:
        problems.append(f"redis: {type(error).__name__}")
    status = {"ready": not problems, "model_version": bundle.version if bundle else None, "problems": problems}
    return json_response(status, status=200 if not problems else 503)


async def metrics(request: web.Request) -> web.Response:
    bundle = request.app[MODELS].bundle
    request.app[METRICS].model_version.set(bundle.version if bundle else 0)
    return web.Response(
        body=generate_latest(request.app[METRICS].registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def models(request: web.Request) -> web.Response:
    bundle = request.app[MODELS].bundle
    retained = await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR], request.app[MODELS].retained)
    return json_response(
        {"live_version": bundle.version if bundle else None, "load_error": request.app[MODELS].last_error,
         "versions": retained}
    )  # fmt: skip


async def reload_models(request: web.Request) -> web.Response:
    token = request.app[SETTINGS].admin_token
    if token is None:
        raise web.HTTPForbidden(
            text='{"error": "admin routes are off: set KF_ADMIN_TOKEN"}', content_type="application/json"
        )
    if request.headers.get("Authorization") != f"Bearer {token}":
        raise web.HTTPUnauthorized(text='{"error": "admin token required"}', content_type="application/json")
    swapped = await request.app[MODELS].refresh()
    bundle = request.app[MODELS].bundle
    return json_response(
        {
            "swapped": swapped,
            "live_version": bundle.version if bundle else None,
            "error": request.app[MODELS].last_error,
        }
    )


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS], MAX_BATCH))


async def resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[EXECUTOR] = ThreadPoolExecutor(settings.serve_model_threads, thread_name_prefix="models")
    client = aioredis.Redis(
        host=settings.bind_host, port=settings.redis_port, socket_connect_timeout=1, socket_timeout=1
    )
    app[STORE] = LiveStore(client, settings.namespace)
    app[PRODUCER] = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    app[MODELS] = ModelHolder(settings, app[EXECUTOR], app[IN_FLIGHT])
    loop, wake, stop = asyncio.get_running_loop(), asyncio.Event(), threading.Event()
    try:
        app[TITLES] = await loop.run_in_executor(app[EXECUTOR], _titles, settings)
    except Exception as error:  # a missing catalogue costs titles only
        log.warning("no catalogue titles: %s", error)
        app[TITLES] = {}
    listener = listen_for_updates(settings, loop, wake, stop)
    deliveries = threading.Thread(target=_serve_deliveries, args=(app[PRODUCER], stop), name="kafka deliveries")
    deliveries.start()
    app[BATCHER] = MicroBatcher(
        rank_batch, app[EXECUTOR], settings.serve_model_threads, settings.serve_max_batch, app[METRICS].observe_batch
    )
    freeze_imports()
    gc.callbacks.append(probe := GcPauseProbe(app[METRICS]))
    tasks = [
        asyncio.create_task(app[BATCHER].run(), name="batcher"),
        asyncio.create_task(app[STORE].follow_namespace(), name="namespace"),
        asyncio.create_task(app[MODELS].follow(wake), name="models"),
    ]
    yield
    for task in tasks:
        task.cancel()
    gc.callbacks.remove(probe)
    stop.set()
    await loop.run_in_executor(None, listener.join, 5)
    await loop.run_in_executor(None, deliveries.join, 5)
    await loop.run_in_executor(None, app[PRODUCER].flush, 10)
    await client.aclose()
    app[EXECUTOR].shutdown(wait=True)


def _serve_deliveries(producer: Producer, stop: threading.Event) -> None:
    """Run the producer's delivery callbacks (they settle POST /v1/events' acknowledgements)."""
    while not stop.is_set():
        producer.poll(0.1)


def _titles(settings: Settings) -> dict[str, str]:
    return {item_id: item.title for item_id, item in read_catalogue_topic(settings).items()}


def init_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[edge], client_max_size=MAX_BODY_BYTES)
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[IN_FLIGHT] = InFlight()
    app.cleanup_ctx.append(resources)
    app.router.add_get("/v1/recommendations", recommendations)
    app.router.add_get("/v1/items/{item_id}/similar", similar_items)
    app.router.add_get("/v1/users", users)
    app.router.add_get("/v1/users/{user_id}/profile", profile)
    app.router.add_get("/v1/trending", trending)
    app.router.add_post("/v1/events", post_events)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/admin/models/reload", reload_models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", page)
    app.router.add_static("/static", WEB_DIR)
    return app
