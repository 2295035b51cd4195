"""The service's request handlers: each parses its parameters with its model
(`serving.parameters`), reads through the app's resources (`serving.resources`) and answers JSON.
A request never fails because Redis is slow or down, or because no model is loaded yet: it
answers from trending/popularity with `fallback` set.
"""

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TypeVar

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from confluent_kafka import KafkaException, Producer
from prometheus_client import CONTENT_TYPE_LATEST

from schemas.config import Settings
from schemas.events import Event, validate_event
from schemas.experiments import Experiment, experiment_report, new_request_id
from schemas.redis_format import seen_filter_holds
from schemas.runtime.feature_store import UserRead
from schemas.runtime.loaded_bundle import LoadedBundle
from schemas.runtime.pipeline import Ranked, RankRequest, fallback_items
from schemas.validation import InvalidRecord, validate_record
from serving.experiments import ExperimentError
from serving.metrics import MULTIPROCESS_DIR, Metrics
from serving.models import ModelHolder
from serving.parameters import (
    BadRequest,
    ItemPath,
    Promotion,
    RecommendationsQuery,
    SimilarQuery,
    TrendingQuery,
    UserPath,
    UsersQuery,
)
from serving.resources import (
    BATCHER,
    CATALOGUE,
    EXECUTOR,
    EXPERIMENTS,
    METRICS,
    MODELS,
    PRODUCER,
    SETTINGS,
    STORE,
)

log = logging.getLogger("kingfisher.serving")
MAX_BATCH = 500
MAX_BODY_BYTES = 4 * 1024 * 1024
WEB_DIR = Path(__file__).resolve().parent / "web"
T = TypeVar("T")
COLD_START = "cold start"
MODELS_BUSY = "models busy: no answer within KF_MODEL_BUDGET_MS"


class Unavailable(RuntimeError):
    """Redis (within the request budget) or Kafka (within KF_EVENTS_ACK_TIMEOUT_S) did not answer; the
    message says how it failed."""


def json_response(payload, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _from_store(app: web.Application, read: Awaitable[T]) -> T:
    """A Redis read within the request budget, timed as the `redis` stage."""
    clock = time.perf_counter()
    try:
        async with asyncio.timeout(app[SETTINGS].serving.request_budget_ms / 1000):  # unlike wait_for, no task per call
            return await read
    except TimeoutError:
        raise Unavailable("redis slower than the request budget") from None
    except (aioredis.RedisError, OSError) as error:
        raise Unavailable(f"redis unavailable: {type(error).__name__}") from None
    finally:
        app[METRICS].stage.labels("redis").observe(time.perf_counter() - clock)


async def _live_state(app: web.Application, user_id: str, seen: bool) -> tuple[UserRead, str | None]:
    """The user's live state (with `seen`, the seen set too) within the time budget, or an empty one and why not."""
    try:
        return await _from_store(app, app[STORE].read(user_id, seen)), None
    except Unavailable as unavailable:
        return UserRead(), str(unavailable)


def _interacted(state: UserRead, bundle: LoadedBundle | None, trending: list[str]) -> set[str]:
    """What `exclude_seen` leaves out: the seen set and the sequence and, for a user whose seen set
    has overflowed, the items its filter holds (of the bundle's vocabulary; without a bundle, of
    the trending items the fallback answers with)."""
    if state.seen_filter is None:
        return state.seen
    if bundle is not None:
        return state.seen | bundle.seen_before(state.seen_filter)
    return state.seen | {item for item in trending if seen_filter_holds(state.seen_filter, item)}


def _item(app: web.Application, item_id: str, score: float, reasons: tuple[str, ...] = ()) -> dict:
    catalogue = app[CATALOGUE]
    item = {"item_id": item_id, "score": score, "title": catalogue.title(item_id)}
    if reasons:
        item["reasons"] = [{"item_id": reason, "title": catalogue.title(reason)} for reason in reasons]
    return item


async def recommendations(request: web.Request) -> web.Response:
    app, clock = request.app, time.perf_counter()
    query = RecommendationsQuery.parse(request.query, app[SETTINGS])
    user_id, k, exclude_seen, explain = query.user_id, query.k, query.exclude_seen, query.explain
    assignment = app[EXPERIMENTS].assign(user_id)
    bundle = assignment.holder.bundle  # this request's models, whatever swaps meanwhile
    state, problem = await _live_state(app, user_id, exclude_seen)
    trending = list(state.trending.data.items) if state.trending else []
    left_out = _interacted(state, bundle, [item for item, _ in trending]) if exclude_seen else set()
    if bundle is not None and bundle.withdrawn:
        left_out = left_out | bundle.withdrawn
    reason = problem or (None if bundle else "no model loaded") or (None if state.known_user else COLD_START)
    ranked, shadow_lists = None, {}
    if reason is None:
        asked = RankRequest(
            user_id,
            state.behaviours,
            state.user_features,
            now_ms=app[STORE].clock.now_ms(),
            trending=trending[: app[SETTINGS].pipeline.trending_candidates],
            exclude=left_out,
            k=k,
            candidates=app[SETTINGS].pipeline.candidates,
            explain=k if explain else 0,
            new_items=app[SETTINGS].pipeline.new_item_candidates,
            covisited=app[SETTINGS].pipeline.covisitation_candidates,
        )
        ranked, shadow_lists = await _ranked_with_shadows(app, bundle, asked, assignment.shadows)
        reason = None if ranked is not None else MODELS_BUSY
    if ranked is not None:
        items = [_item(app, s.item_id, s.score, s.reasons) for s in ranked.items]
    else:
        app[METRICS].fallbacks.labels(reason.split(":")[0]).inc()
        items = _popular_items(app, bundle, [item for item, _ in trending], left_out, k)
    if assignment.arm is not None:
        for arm in (assignment.arm, *shadow_lists):
            app[METRICS].arm_answers.labels(assignment.experiment, arm).inc()
    return json_response(
        {
            "user_id": user_id,
            "items": items,
            "request_id": new_request_id(assignment.experiment, assignment.arm, shadow_lists),
            "arm": assignment.arm,
            "model_version": bundle.version if bundle else None,
            "features_as_of": state.as_of,
            "fallback": reason not in (None, COLD_START),
            "reason": reason,
            "took_ms": round((time.perf_counter() - clock) * 1000, 2),
        }
    )


async def _ranked_with_shadows(
    app: web.Application, bundle: LoadedBundle, asked: RankRequest, shadows: tuple[tuple[str, ModelHolder], ...]
) -> tuple[Ranked | None, dict[str, list[str]]]:
    """The answer's ranking, and beside it (concurrently) each shadow arm's items for the same request.
    Shadow rankings are best effort: none while requests wait for the model threads (they would take
    those requests' time), and a shadow arm with no models yet or over the budget is left out."""
    ranked_by = [(name, holder.bundle) for name, holder in shadows if holder.bundle is not None]
    if not ranked_by or not app[BATCHER].idle:  # most requests: no task of their own, as before experiments
        return await _ranked(app, bundle, asked), {}
    unexplained = replace(asked, explain=0)
    ranked, *shadow_ranked = await asyncio.gather(
        _ranked(app, bundle, asked), *(_ranked(app, shadow, unexplained) for _, shadow in ranked_by)
    )
    lists = {name: [scored.item_id for scored in result.items]
             for (name, _), result in zip(ranked_by, shadow_ranked, strict=True) if result is not None}  # fmt: skip
    return ranked, lists


def _popular_items(app: web.Application, bundle: LoadedBundle | None, trending: list[str], left_out: set[str], k: int):
    """The answer without DIN: trending, then the bundle's popularity list, without `left_out` (seen, withdrawn)."""
    chosen = fallback_items(trending, bundle.popular if bundle else [], left_out, k)
    return [_item(app, item, 1.0 / (rank + 1)) for rank, item in enumerate(chosen)]


async def _ranked(app: web.Application, bundle: LoadedBundle, asked: RankRequest) -> Ranked | None:
    """DIN's ranking, or None when the models cannot answer within the model budget: the request
    leaves the queue (it is never computed) and is answered from trending/popularity instead."""
    try:
        async with asyncio.timeout(app[SETTINGS].serving.model_budget_ms / 1000):
            ranked = await app[BATCHER].submit(bundle, asked)
    except TimeoutError:
        return None
    for stage, seconds in ranked.timings_s.items():
        app[METRICS].stage.labels(stage).observe(seconds)
    app[METRICS].candidates.observe(ranked.candidates)
    return ranked


async def similar_items(request: web.Request) -> web.Response:
    item_id = ItemPath.parse(request.match_info, request.app[SETTINGS]).item_id
    k = SimilarQuery.parse(request.query, request.app[SETTINGS]).k
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
    user_id = UserPath.parse(request.match_info, request.app[SETTINGS]).user_id
    state = await _from_store(request.app, request.app[STORE].read(user_id))
    catalogue = request.app[CATALOGUE]
    return json_response(
        {
            "user_id": user_id,
            "namespace": request.app[STORE].namespace,
            "sequence": [asdict(entry) | {"title": catalogue.title(entry.item_id)} for entry in state.behaviours],
            "features": asdict(state.user_features) if state.user_features else None,
            "features_as_of": state.as_of,
        }
    )


async def trending(request: web.Request) -> web.Response:
    k = TrendingQuery.parse(request.query, request.app[SETTINGS]).k
    stored = await _from_store(request.app, request.app[STORE].trending())
    ranked = stored.data.items[:k] if stored else ()
    return json_response(
        {
            "items": [_item(request.app, item, score) for item, score in ranked],
            "as_of": stored.as_of if stored else None,
        }
    )


async def users(request: web.Request) -> web.Response:
    limit = UsersQuery.parse(request.query, request.app[SETTINGS]).limit
    return json_response({"users": await _from_store(request.app, request.app[STORE].some_users(limit))})


async def page(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def post_events(request: web.Request) -> web.Response:
    body = await _json_body(request)
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
    return json_response({"accepted": len(events), "topic": settings.stack.topic_events}, status=202)


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
            producer.produce(
                settings.stack.topic_events, key=event.kafka_key, value=event.to_json(), on_delivery=acknowledge
            )
        except (BufferError, KafkaException) as error:
            settle(outcome, error)
    await asyncio.wait(outcomes, timeout=settings.serving.events_ack_timeout_s)
    errors = [o.result() if o.done() else "no acknowledgement in time" for o in outcomes]
    return [f"{event.event_id}: {error}" for event, error in zip(events, errors, strict=True) if error is not None]


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    bundle, problems = request.app[MODELS].bundle, []
    if bundle is None:
        problems.append(request.app[MODELS].last_error or "no model loaded")
    elif MULTIPROCESS_DIR in os.environ:  # under the supervisor: the port's next answer may come from another worker
        workers, ready = request.app[SETTINGS].serving.serve_workers, Metrics.workers_with_a_model()
        if ready < workers:
            problems.append(f"{ready} of {workers} workers have a model")
    try:
        await asyncio.wait_for(request.app[STORE].store.ping(), 1.0)
    except (TimeoutError, aioredis.RedisError, OSError) as error:
        problems.append(f"redis: {type(error).__name__}")
    status = {"ready": not problems, "model_version": bundle.version if bundle else None, "problems": problems}
    return json_response(status, status=200 if not problems else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def models(request: web.Request) -> web.Response:
    bundle = request.app[MODELS].bundle
    retained = await asyncio.get_running_loop().run_in_executor(request.app[EXECUTOR], request.app[MODELS].retained)
    return json_response(
        {"live_version": bundle.version if bundle else None, "load_error": request.app[MODELS].last_error,
         "versions": retained}
    )  # fmt: skip


def _require_admin(request: web.Request) -> None:
    token = request.app[SETTINGS].serving.admin_token
    if token is None:
        raise web.HTTPForbidden(
            text='{"error": "admin routes are off: set KF_ADMIN_TOKEN"}', content_type="application/json"
        )
    if request.headers.get("Authorization") != f"Bearer {token}":
        raise web.HTTPUnauthorized(text='{"error": "admin token required"}', content_type="application/json")


async def reload_models(request: web.Request) -> web.Response:
    _require_admin(request)
    swapped = await request.app[MODELS].refresh()
    bundle = request.app[MODELS].bundle
    return json_response(
        {
            "swapped": swapped,
            "live_version": bundle.version if bundle else None,
            "error": request.app[MODELS].last_error,
        }
    )


async def experiments(request: web.Request) -> web.Response:
    """The running experiment: each arm's impressions, clicks and CTR as the stream counted them, with intervals."""
    running = request.app[EXPERIMENTS].running.experiment
    if running is None:
        return json_response({"experiment": None, "error": request.app[EXPERIMENTS].last_error})
    stored = await _from_store(request.app, request.app[STORE].experiment_tallies(running.name))
    report = experiment_report(running, stored.data if stored else None)
    return json_response({"experiment": report, "error": request.app[EXPERIMENTS].last_error})


async def start_experiment(request: web.Request) -> web.Response:
    """Run the experiment of the body in every worker (its pinned versions loaded first, in this one)."""
    _require_admin(request)
    experiment = _validated(Experiment, await _json_body(request))
    await _run_experiment(request.app, experiment)
    return await experiments(request)


async def stop_experiment(request: web.Request) -> web.Response:
    _require_admin(request)
    await _run_experiment(request.app, None)
    return json_response({"experiment": None})


async def promote_arm(request: web.Request) -> web.Response:
    """Make the arm's version the registry's live one and end the experiment: every worker serves it to everyone."""
    _require_admin(request)
    arm_name = _validated(Promotion, await _json_body(request)).arm
    running = request.app[EXPERIMENTS].running.experiment
    arm = next((arm for arm in running.arms if arm.name == arm_name), None) if running else None
    if arm is None:
        raise BadRequest(f"arm: no arm {arm_name!r} in the running experiment")
    if arm.version is not None:
        try:
            request.app[MODELS].registry.make_current(arm.version)
        except OSError as error:
            raise Unavailable(f"the model registry is not writable ({error}): nothing changed") from None
        await request.app[MODELS].refresh()
    await _run_experiment(request.app, None)
    bundle = request.app[MODELS].bundle
    return json_response({"promoted": arm.name, "live_version": bundle.version if bundle else None})


async def _run_experiment(app: web.Application, experiment: Experiment | None) -> None:
    """Run `experiment` here (its versions loaded) and in the registry for every worker; if the
    registry cannot be written, this worker goes back to the experiment it ran."""
    try:
        await app[EXPERIMENTS].run(experiment)
    except ExperimentError as error:
        raise BadRequest(f"arms: {error}") from None
    except OSError as error:
        raise Unavailable(f"the model registry is not writable ({error}): nothing changed") from None


async def _json_body(request: web.Request):
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise BadRequest(f"body: at most {MAX_BODY_BYTES} bytes")
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"body: not JSON ({error})") from None


def _validated(model: type[T], body) -> T:
    if not isinstance(body, dict):
        raise BadRequest("$: must be a JSON object")
    try:
        return validate_record(model, body)
    except InvalidRecord as invalid:
        raise BadRequest(*map(str, invalid.problems)) from None
