"""Event v1: what apps publish to the `events` topic. Specified with examples in EVENTS.md.

`parse_event` is the only way a Kingfisher process turns bytes into an `Event`: it returns a
valid event or raises `InvalidRecord`, whose `problems` name each failing field and its rule.
"""

from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StrictInt, model_validator

from schemas.validation import ContractRecord, check_json_size, parse_record, validate_record

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 8 * 1024
MAX_CONTEXT_BYTES = 2 * 1024
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MIN_TIMESTAMP_MS = int(datetime(1995, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TIMESTAMP_MS = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp() * 1000)
MIN_RATING, MAX_RATING = 0.5, 5.0

Identifier = Annotated[str, Field(strict=True, pattern=ID_PATTERN)]


def _integral_float_to_int(value: Any) -> Any:
    # JSON Schema counts 1700000000000.0 as an integer; so does this model, to agree with producers' validators.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# The constraints come before the validator so that the JSON Schema carries them as minimum/exclusiveMaximum.
EpochMillis = Annotated[
    StrictInt, Field(ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS), BeforeValidator(_integral_float_to_int)
]
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]


# Code on the stream's per-event path reads a member's string as `_value_`: `.value` is a
# Python-level property on enums, a function call for every read.
class EventType(StrEnum):
    """What the user did. Every type but `impression` is an interaction."""

    IMPRESSION = "impression"
    CLICK = "click"
    PLAY = "play"
    LIKE = "like"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATING = "rating"

    @property
    def is_interaction(self) -> bool:
        return self is not EventType.IMPRESSION


# JSON Schema cannot say "at most N bytes of JSON"; the rest of the cross-field rules it can.
RATING_RULE_SCHEMA = {
    "if": {"properties": {"type": {"const": EventType.RATING.value}}},
    "then": {
        "required": ["value"],
        "properties": {"value": {"type": "number", "minimum": MIN_RATING, "maximum": MAX_RATING}},
    },
}


class Event(ContractRecord):
    """One user event, schema version 1."""

    model_config = ConfigDict(json_schema_extra=RATING_RULE_SCHEMA)
    kafka_key_field = "user_id"

    event_id: Identifier = Field(description="Unique per event; a repeated event_id is a duplicate.")
    user_id: Identifier = Field(description="Also the Kafka key, so each user's events stay in order.")
    item_id: Identifier
    type: EventType
    value: FiniteNumber | None = Field(
        None, description=f"Rating ({MIN_RATING} to {MAX_RATING}, required for ratings), seconds played, amount."
    )
    ts: EpochMillis = Field(description="Event time in epoch milliseconds, from 1995-01-01 to 2100-01-01.")
    context: dict[str, Any] | None = Field(
        None, description=f"Free-form, at most {MAX_CONTEXT_BYTES} bytes as JSON; e.g. request_id, device, page."
    )
    schema_version: Literal[1] = SCHEMA_VERSION

    @property
    def request_id(self) -> str | None:
        """`context.request_id` as text: what links an impression to the click that followed it."""
        return _text((self.context or {}).get("request_id"))

    @property
    def position(self) -> int | None:
        """`context.position`, where the item was shown in its list, when it is an integer."""
        position = (self.context or {}).get("position")
        return position if type(position) is int else None

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> "Event":
        if self.type is EventType.RATING and (self.value is None or not MIN_RATING <= self.value <= MAX_RATING):
            raise ValueError(f"value: a rating needs a value from {MIN_RATING} to {MAX_RATING}")
        if self.context is not None:
            check_json_size("context", self.context, MAX_CONTEXT_BYTES)
        return self


def _text(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else str(value) if type(value) is int else None


def validate_event(payload: Mapping[str, Any]) -> Event:
    """Validate an already-decoded JSON object (e.g. one element of an HTTP batch)."""
    return validate_record(Event, payload)


def parse_event(data: bytes) -> Event:
    """Decode and validate one Kafka record value."""
    return parse_record(Event, data, MAX_EVENT_BYTES)
