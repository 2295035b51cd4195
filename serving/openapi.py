"""The OpenAPI 3.1 document served at /openapi.json, generated from the route table: each route's
parameters from its parameter models, its answers from the answer models, the request body from
the event contract."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from schemas.config import Settings
from schemas.events import Event
from serving.parameters import Parameters


class BadRequestAnswer(BaseModel):
    error: str
    reasons: list[str]


class Reason(BaseModel):
    item_id: str
    title: str | None


class ScoredItem(BaseModel):
    item_id: str
    score: float
    title: str | None
    reasons: list[Reason] = []
    """With explain=true: the sequence items DIN attended to most."""


class Recommendations(BaseModel):
    user_id: str
    items: list[ScoredItem]
    request_id: str
    """Put it in the `context.request_id` of these items' impressions and clicks: an experiment counts them."""
    arm: str | None
    """The experiment's arm that answered; null outside an experiment."""
    model_version: int | None
    features_as_of: int | None = None
    """Event time (ms) of the newest event used."""
    fallback: bool
    """True when answered without live state or without the models (none loaded, or busier than KF_MODEL_BUDGET_MS)."""
    reason: str | None
    """Why not ranked by DIN: the fallback's or cold start."""
    took_ms: float


class ArmReport(BaseModel):
    name: str
    version: int | None
    share: float
    shadow: bool
    impressions: int
    clicks: int
    """A shadow arm's: clicks on the answers of the requests it ranked."""
    ctr: float | None
    ctr_interval: tuple[float, float] | None
    """95 % Wilson interval of the CTR."""
    difference_interval: tuple[float, float] | None
    """95 % interval of this arm's CTR minus the first arm's."""
    would_have_shown: int | None
    """A shadow arm's: of the clicked items, how many it would have shown."""
    shown_interval: tuple[float, float] | None
    """95 % Wilson interval of would_have_shown / clicks."""


class ExperimentReport(BaseModel):
    name: str
    arms: list[ArmReport]
    as_of: int | None


class ExperimentAnswer(BaseModel):
    experiment: ExperimentReport | None
    error: str | None = None
    """Why the configured experiment is not running, if it is not."""


class ItemList(BaseModel):
    items: list[ScoredItem]


@dataclass(frozen=True)
class Answer:
    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    answers: dict[int, Answer]
    parameters: Sequence[type[Parameters]] = ()
    body: Callable[[Settings], dict] | None = None
    """The request body's JSON schema, for the settings."""


def _answer(answer: Answer, schemas: dict[str, Any]) -> dict:
    if answer.model is None:
        schema = {"type": "object" if answer.media_type == "application/json" else "string"}
        return {"description": answer.description, "content": {answer.media_type: {"schema": schema}}}
    schema = answer.model.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas[answer.model.__name__] = schema
    reference = {"$ref": f"#/components/schemas/{answer.model.__name__}"}
    return {"description": answer.description, "content": {"application/json": {"schema": reference}}}


def _operation(route: Route, settings: Settings, schemas: dict[str, Any]) -> dict:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "responses": {str(status): _answer(answer, schemas) for status, answer in sorted(route.answers.items())},
    }
    if parameters := [parameter for model in route.parameters for parameter in model.openapi(settings)]:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": route.body(settings)}}}
    return operation


def openapi_document(settings: Settings, routes: Sequence[Route]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Event": Event.model_json_schema()}
    paths: dict[str, dict] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, settings, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kingfisher recommendation service", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }
