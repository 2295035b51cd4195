"""The service's request parameters, one pydantic model per route: the handlers parse requests with
them and the OpenAPI document describes them from the same models, so the two cannot drift apart.

Bounds that are settings (`k` up to KF_MAX_K) are declared as `AtMost("max_k")` and checked
against the service's settings, which `parse` takes as the validation context.
"""

import re
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from schemas.config import Settings
from schemas.events import ID_PATTERN
from schemas.experiments import Name


class BadRequest(ValueError):
    def __init__(self, *reasons: str):
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


@dataclass(frozen=True)
class AtMost:
    """The largest value of an integer parameter: a number, or the name of the serving setting that holds it."""

    most: int | str

    def of(self, settings: Settings) -> int:
        return self.most if isinstance(self.most, int) else getattr(settings.serving, self.most)


def _strict_flag(raw: Any) -> Any:
    """Only true/false/1/0 (pydantic alone would also take yes/on/t...)."""
    if isinstance(raw, str) and raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError("not a flag")
    return raw


def _integer_text(raw: Any) -> Any:
    if isinstance(raw, str) and not re.fullmatch(r"-?[0-9]+", raw):
        raise ValueError("not an integer")
    return raw


Flag = Annotated[bool, BeforeValidator(_strict_flag)]
Count = Annotated[int, Field(ge=1), BeforeValidator(_integer_text)]
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]


class Parameters(BaseModel):
    """Parameters of one kind (`location`: query or path) of a route."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    location: ClassVar[str] = "query"

    @classmethod
    def parse(cls, values: Any, settings: Settings) -> "Parameters":
        """The validated parameters, or BadRequest with one reason per invalid parameter."""
        raw = dict(values)
        try:
            return cls.model_validate(raw, context=settings)
        except ValidationError as invalid:
            raise BadRequest(*(cls._reason(error, raw, settings) for error in invalid.errors())) from None

    @model_validator(mode="after")
    def _within_settings(self, info: ValidationInfo):
        for name, bound in self.bounds().items():
            if getattr(self, name) > bound.of(info.context):
                raise ValueError(f"{name}: above the setting")
        return self

    @classmethod
    def bounds(cls) -> dict[str, AtMost]:
        return {
            name: bound
            for name, field in cls.model_fields.items()
            for bound in field.metadata
            if isinstance(bound, AtMost)
        }

    @classmethod
    def _reason(cls, error: dict, raw: dict, settings: Settings) -> str:
        name = str(error["loc"][0]) if error["loc"] else next(iter(cls.bounds()))
        if error["type"] == "missing":
            return f"{name}: required"
        annotation = cls.model_fields[name].annotation
        if annotation is bool:
            return f"{name}: must be true or false, got {raw.get(name)!r}"
        if annotation is int:
            bound = cls.bounds().get(name)
            most = f" to {bound.of(settings)}" if bound else ""
            return f"{name}: must be an integer from 1{most}, got {raw.get(name)!r}"
        return f"{name}: must match {ID_PATTERN}"

    @classmethod
    def openapi(cls, settings: Settings) -> list[dict]:
        """The OpenAPI parameter objects of the model's fields."""
        schema = cls.model_json_schema()
        required = set(schema.get("required", ()))
        described = []
        for name in cls.model_fields:
            field_schema = {key: value for key, value in schema["properties"][name].items() if key != "title"}
            description = field_schema.pop("description", "")
            if name in cls.bounds():
                field_schema["maximum"] = cls.bounds()[name].of(settings)
            described.append({"name": name, "in": cls.location, "required": name in required,
                              "schema": field_schema, "description": description})  # fmt: skip
        return described


class RecommendationsQuery(Parameters):
    user_id: Identifier = Field(description="The user.")
    k: Annotated[Count, AtMost("max_k")] = Field(20, description="How many items.")
    exclude_seen: Flag = Field(False, description="Leave out items the user interacted with (the seen set).")
    explain: Flag = Field(False, description="Add attention-based reasons.")


class SimilarQuery(Parameters):
    k: Annotated[Count, AtMost("max_k")] = Field(20, description="How many items.")


class TrendingQuery(Parameters):
    k: Annotated[Count, AtMost("max_k")] = Field(10, description="How many items.")


class UsersQuery(Parameters):
    limit: Annotated[Count, AtMost(100)] = Field(12, description="How many.")


class ItemPath(Parameters):
    location: ClassVar[str] = "path"
    item_id: Identifier = Field(description="The item.")


class UserPath(Parameters):
    location: ClassVar[str] = "path"
    user_id: Identifier = Field(description="The user.")


class Promotion(BaseModel):
    """The body of POST /v1/admin/experiments/promote."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    arm: Name = Field(description="The arm whose version goes live for everyone.")
