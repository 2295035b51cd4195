"""The OpenAPI 3.1 document served at /openapi.json."""

from typing import Any

from schemas.config import Settings
from schemas.events import Event
from serving import parameters


def _query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": description}


def _json(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


UNAVAILABLE = _json("Redis did not answer within the request budget.")
BAD_REQUEST = _json("Invalid input: `reasons` lists each problem.", {"$ref": "#/components/schemas/BadRequest"})


def openapi_document(settings: Settings, max_batch: int) -> dict[str, Any]:
    scored = {
        "type": "object",
        "properties": {
            "item_id": {"type": "string"},
            "score": {"type": "number"},
            "title": {"type": ["string", "null"]},
            "reasons": {
                "type": "array",
                "items": {"type": "object"},
                "description": "With explain=true: the sequence items DIN attended to most.",
            },
        },
    }
    recommendations = {
        "type": "object",
        "properties": {
            "user_id": {"type": "string"},
            "items": {"type": "array", "items": scored},
            "model_version": {"type": ["integer", "null"]},
            "features_as_of": {"type": ["integer", "null"], "description": "Event time (ms) of the newest event used."},
            "fallback": {
                "type": "boolean",
                "description": "True when answered without live state or without the models (none loaded, or "
                "busier than KF_MODEL_BUDGET_MS).",
            },
            "reason": {
                "type": ["string", "null"],
                "description": "Why not ranked by DIN: the fallback's or cold start.",
            },
            "took_ms": {"type": "number"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kingfisher recommendation service", "version": "1"},
        "paths": {
            "/v1/recommendations": {
                "get": {
                    "summary": "Recommendations from the user's live sequence: Faiss recall, DIN ranking.",
                    "parameters": [
                        _query("user_id", {"type": "string"}, "The user.", required=True),
                        parameters.RECOMMENDED.openapi(settings),
                        _query(
                            "exclude_seen",
                            {"type": "boolean", "default": False},
                            "Leave out items in the live sequence.",
                        ),
                        _query("explain", {"type": "boolean", "default": False}, "Add attention-based reasons."),
                    ],
                    "responses": {"200": _json("Recommendations.", recommendations), "400": BAD_REQUEST},
                }
            },
            "/v1/items/{item_id}/similar": {
                "get": {
                    "summary": "Items nearest in the retrieval space.",
                    "parameters": [_path("item_id", "The item."), parameters.SIMILAR.openapi(settings)],
                    "responses": {
                        "200": _json("Similar items."),
                        "400": BAD_REQUEST,
                        "404": _json("Unknown item."),
                        "503": _json("No model loaded."),
                    },
                }
            },
            "/v1/users": {
                "get": {
                    "summary": "Some users with a live sequence (a picker for the demo page and operators).",
                    "parameters": [parameters.USERS.openapi(settings)],
                    "responses": {"200": _json("User ids."), "400": BAD_REQUEST, "503": UNAVAILABLE},
                }
            },
            "/v1/trending": {
                "get": {
                    "summary": "The stream's trending items, most popular first.",
                    "parameters": [parameters.TRENDING.openapi(settings)],
                    "responses": {"200": _json("Trending items with scores."), "400": BAD_REQUEST, "503": UNAVAILABLE},
                }
            },
            "/v1/users/{user_id}/profile": {
                "get": {
                    "summary": "The live sequence and features as stored in Redis.",
                    "parameters": [_path("user_id", "The user.")],
                    "responses": {"200": _json("Profile."), "400": BAD_REQUEST, "503": UNAVAILABLE},
                }
            },
            "/v1/events": {
                "post": {
                    "summary": f"Publish one event or a list of at most {max_batch} to Kafka; all or nothing.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Event"},
                                        {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Event"},
                                            "maxItems": max_batch,
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json("Acknowledged by Kafka: `accepted` counts the events."),
                        "400": BAD_REQUEST,
                        "503": _json("Not all acknowledged by Kafka in time: resend the batch (event ids dedupe)."),
                    },
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "The live model version and the retained ones with their metrics.",
                    "responses": {"200": _json("Model versions.")},
                }
            },
            "/v1/admin/models/reload": {
                "post": {
                    "summary": "Load the registry's current version now (Authorization: Bearer KF_ADMIN_TOKEN).",
                    "responses": {
                        "200": _json("Reload result."),
                        "401": _json("Wrong or missing token."),
                        "403": _json("Admin routes are off."),
                    },
                }
            },
            "/healthz": {"get": {"summary": "Liveness.", "responses": {"200": _json("Alive.")}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: a model is loaded and Redis answers.",
                    "responses": {"200": _json("Ready."), "503": _json("Not ready, with problems.")},
                }
            },
            "/metrics": {
                "get": {"summary": "Prometheus metrics.", "responses": {"200": {"description": "Text format."}}}
            },
            "/openapi.json": {"get": {"summary": "This document.", "responses": {"200": _json("OpenAPI 3.1.")}}},
        },
        "components": {
            "schemas": {
                "Event": Event.model_json_schema(),
                "BadRequest": {
                    "type": "object",
                    "properties": {
                        "error": {"type": "string"},
                        "reasons": {"type": "array", "items": {"type": "string"}},
                    },
                },
            }
        },
    }
