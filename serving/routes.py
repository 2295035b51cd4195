"""The service's routes: each with its handler, parameter models and answers, from which
`serving.openapi` generates the document at /openapi.json."""

from aiohttp import web

from schemas.config import Settings
from schemas.experiments import Experiment
from serving import handlers
from serving.handlers import MAX_BATCH, WEB_DIR, json_response
from serving.openapi import (
    Answer,
    BadRequestAnswer,
    ExperimentAnswer,
    ItemList,
    Recommendations,
    Route,
    openapi_document,
)
from serving.parameters import (
    ItemPath,
    Promotion,
    RecommendationsQuery,
    SimilarQuery,
    TrendingQuery,
    UserPath,
    UsersQuery,
)
from serving.resources import SETTINGS

BAD_REQUEST = Answer("Invalid input: `reasons` lists each problem.", BadRequestAnswer)
UNAUTHORIZED = Answer("Wrong or missing token.")
FORBIDDEN = Answer("Admin routes are off.")
UNAVAILABLE = Answer("Redis did not answer within the request budget.")


def _events_body(_settings: Settings) -> dict:
    event = {"$ref": "#/components/schemas/Event"}
    return {"oneOf": [event, {"type": "array", "items": event, "minItems": 1, "maxItems": MAX_BATCH}]}


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(request.app[SETTINGS], ROUTES))


ROUTES = (
    Route("GET", "/v1/recommendations", handlers.recommendations,
          "Recommendations from the user's live sequence: Faiss recall, DIN ranking.",
          {200: Answer("Recommendations.", Recommendations), 400: BAD_REQUEST}, [RecommendationsQuery]),
    Route("GET", "/v1/items/{item_id}/similar", handlers.similar_items,
          "Items most like it: retrieval vectors, co-watching, titles.",
          {200: Answer("Similar items.", ItemList), 400: BAD_REQUEST, 404: Answer("Unknown item."),
           503: Answer("No model loaded.")}, [ItemPath, SimilarQuery]),
    Route("GET", "/v1/users", handlers.users,
          "Some users with a live sequence (a picker for the demo page and operators).",
          {200: Answer("User ids."), 400: BAD_REQUEST, 503: UNAVAILABLE}, [UsersQuery]),
    Route("GET", "/v1/users/{user_id}/profile", handlers.profile,
          "The live sequence and features as stored in Redis.",
          {200: Answer("Profile."), 400: BAD_REQUEST, 503: UNAVAILABLE}, [UserPath]),
    Route("GET", "/v1/trending", handlers.trending, "The stream's trending items, most popular first.",
          {200: Answer("Trending items with scores.", ItemList), 400: BAD_REQUEST, 503: UNAVAILABLE},
          [TrendingQuery]),
    Route("POST", "/v1/events", handlers.post_events,
          f"Publish one event or a list of at most {MAX_BATCH} to Kafka; all or nothing.",
          {202: Answer("Acknowledged by Kafka: `accepted` counts the events."), 400: BAD_REQUEST,
           503: Answer("Not all acknowledged by Kafka in time: resend the batch (event ids dedupe).")},
          body=_events_body),
    Route("GET", "/v1/models", handlers.models, "The live model version and the retained ones with their metrics.",
          {200: Answer("Model versions.")}),
    Route("POST", "/v1/admin/models/reload", handlers.reload_models,
          "Load the registry's current version now (Authorization: Bearer KF_ADMIN_TOKEN).",
          {200: Answer("Reload result."), 401: UNAUTHORIZED, 403: FORBIDDEN}),
    Route("GET", "/v1/experiments", handlers.experiments,
          "The running experiment: each arm's impressions, clicks and CTR counted by the stream, with 95 % intervals.",
          {200: Answer("The experiment, or null.", ExperimentAnswer), 503: UNAVAILABLE}),
    Route("POST", "/v1/admin/experiments", handlers.start_experiment,
          "Run this experiment in every worker, replacing the running one (Authorization: Bearer KF_ADMIN_TOKEN).",
          {200: Answer("The experiment, running.", ExperimentAnswer), 400: BAD_REQUEST, 401: UNAUTHORIZED,
           403: FORBIDDEN, 503: Answer("The model registry is not writable, or Redis did not answer in time.")},
          body=lambda _settings: Experiment.model_json_schema()),
    Route("DELETE", "/v1/admin/experiments", handlers.stop_experiment,
          "Stop the running experiment: everyone gets the live version (Authorization: Bearer KF_ADMIN_TOKEN).",
          {200: Answer("Stopped."), 401: UNAUTHORIZED, 403: FORBIDDEN,
           503: Answer("The model registry is not writable.")}),
    Route("POST", "/v1/admin/experiments/promote", handlers.promote_arm,
          "Make an arm's version the live one and end the experiment (Authorization: Bearer KF_ADMIN_TOKEN).",
          {200: Answer("The promoted arm and the live version."), 400: BAD_REQUEST, 401: UNAUTHORIZED,
           403: FORBIDDEN, 503: Answer("The model registry is not writable.")},
          body=lambda _settings: Promotion.model_json_schema()),
    Route("GET", "/healthz", handlers.healthz, "Liveness.", {200: Answer("Alive.")}),
    Route("GET", "/readyz", handlers.readyz, "Readiness: every worker has a model loaded and Redis answers.",
          {200: Answer("Ready."), 503: Answer("Not ready, with problems.")}),
    Route("GET", "/metrics", handlers.metrics, "Prometheus metrics.",
          {200: Answer("Prometheus text format.", media_type="text/plain")}),
    Route("GET", "/openapi.json", openapi, "This document.", {200: Answer("OpenAPI 3.1.")}),
)  # fmt: skip


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/", handlers.page)
    app.router.add_static("/static", WEB_DIR)
