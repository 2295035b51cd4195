"""Catalogue v1: item records on the compacted `items` topic, keyed by item_id. A record with the
item's key and no value (a tombstone) withdraws the item; a later record of it publishes it again."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, model_validator

from schemas.events import EpochMillis, Identifier
from schemas.validation import ContractRecord, check_json_size, parse_record, validate_record

SCHEMA_VERSION = 1
MAX_ITEM_BYTES = 16 * 1024
MAX_ATTRIBUTES_BYTES = 8 * 1024

Genre = Annotated[str, Field(strict=True, min_length=1, max_length=64)]


class CatalogueItem(ContractRecord):
    """One item of the catalogue, schema version 1. The newest record per item_id wins."""

    kafka_key_field = "item_id"

    item_id: Identifier
    title: str = Field(strict=True, min_length=1, max_length=512)
    genres: list[Genre] = Field(default_factory=list, max_length=32)
    year: Annotated[StrictInt, Field(ge=1800, le=2100)] | None = None
    attributes: dict[str, Any] = Field(
        default_factory=dict, description=f"Free-form, at most {MAX_ATTRIBUTES_BYTES} bytes as JSON."
    )
    updated_at: EpochMillis
    schema_version: Literal[1] = SCHEMA_VERSION

    @model_validator(mode="after")
    def _check_attributes_size(self) -> "CatalogueItem":
        check_json_size("attributes", self.attributes, MAX_ATTRIBUTES_BYTES)
        return self


def validate_catalogue_item(payload: Mapping[str, Any]) -> CatalogueItem:
    return validate_record(CatalogueItem, payload)


def parse_catalogue_item(data: bytes) -> CatalogueItem:
    return parse_record(CatalogueItem, data, MAX_ITEM_BYTES)


def withdrawn_item(key: bytes | None, value: bytes | None) -> str | None:
    """The item_id a catalogue record withdraws: a tombstone's key; None for a record with a value."""
    return key.decode() if value is None and key else None
