"""Turning bytes into validated contract records, with a precise reason for every failure."""

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

Record = TypeVar("Record", bound=BaseModel)


class Problem(BaseModel):
    """One reason a record is invalid: the field (`$` for the whole payload) and the rule it breaks."""

    model_config = ConfigDict(frozen=True)

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class ContractRecord(BaseModel):
    """A record of a wire contract: JSON on a Kafka topic, keyed by one of its fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kafka_key_field: ClassVar[str]

    @property
    def kafka_key(self) -> bytes:
        return getattr(self, self.kafka_key_field).encode()

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class InvalidRecord(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(map(str, problems)))


def check_json_size(field: str, value: Any, max_bytes: int) -> None:
    """Raise a validation error naming `field` when `value` is not JSON orjson can write, or too large."""
    try:
        size = len(orjson.dumps(value))
    except TypeError as error:
        raise ValueError(f"{field}: not representable as JSON ({error})") from None
    if size > max_bytes:
        raise ValueError(f"{field}: must be at most {max_bytes} bytes as JSON")


def problems_of(error: ValidationError) -> list[Problem]:
    problems = []
    for detail in error.errors(include_url=False):
        message = detail["msg"].removeprefix("Value error, ")
        if detail["loc"]:
            problems.append(Problem(field=".".join(map(str, detail["loc"])), rule=message))
        else:
            # Cross-field rules (model validators) start their message with the field they judge.
            field, _, rule = message.partition(": ")
            problems.append(Problem(field=field, rule=rule))
    return problems


def validate_record(model: type[Record], payload: Mapping[str, Any]) -> Record:
    """Validate an already-decoded JSON object."""
    try:
        return model.model_validate(payload)
    except ValidationError as error:
        raise InvalidRecord(problems_of(error)) from None


def parse_record(model: type[Record], data: bytes, max_bytes: int) -> Record:
    """Decode and validate one Kafka record value."""
    if len(data) > max_bytes:
        raise InvalidRecord([Problem(field="$", rule=f"payload is {len(data)} bytes; at most {max_bytes}")])
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        rule = "not UTF-8" if "utf-8" in str(error).lower() else f"not valid JSON ({error})"
        raise InvalidRecord([Problem(field="$", rule=rule)]) from None
    if not isinstance(payload, dict):
        raise InvalidRecord([Problem(field="$", rule=f"must be a JSON object, not {type(payload).__name__}")])
    return validate_record(model, payload)


def json_text(raw: Any) -> Any:
    """A setting given as text (an environment variable) holding JSON; tables (TOML) pass as they are."""
    return orjson.loads(raw) if isinstance(raw, str | bytes) else raw
