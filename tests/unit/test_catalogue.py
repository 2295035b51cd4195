import json

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.catalogue import CatalogueItem, parse_catalogue_item, validate_catalogue_item
from schemas.export_json_schemas import SCHEMA_DIR, main
from schemas.validation import InvalidRecord
from tests.strategies import identifiers, timestamps

ITEM_JSON_SCHEMA = json.loads((SCHEMA_DIR / "catalogue-item-v1.schema.json").read_text())

items = st.builds(
    CatalogueItem,
    item_id=identifiers,
    title=st.text(min_size=1, max_size=80),
    genres=st.lists(st.text(min_size=1, max_size=20), max_size=5),
    year=st.none() | st.integers(1800, 2100),
    attributes=st.dictionaries(st.text(max_size=8), st.integers(-(2**63), 2**64 - 1), max_size=3),
    updated_at=timestamps,
)


@given(items)
def test_every_valid_item_round_trips_and_satisfies_the_json_schema(item):
    assert parse_catalogue_item(item.to_json()) == item
    jsonschema.validate(orjson.loads(item.to_json()), ITEM_JSON_SCHEMA)


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("title", {"title": ""}),
        ("genres.0", {"genres": [""]}),
        ("year", {"year": 1066}),
        ("updated_at", {"updated_at": "yesterday"}),
        ("attributes", {"attributes": {"blob": "x" * 9000}}),
    ],
)
def test_invalid_items_are_rejected_naming_the_field(field, change):
    valid = {"item_id": "1", "title": "Toy Story", "genres": ["Comedy"], "year": 1995, "updated_at": 1_700_000_000_000}

    with pytest.raises(InvalidRecord) as caught:
        parse_catalogue_item(orjson.dumps(valid | change))

    assert field in {problem.field for problem in caught.value.problems}


def test_integers_beyond_64_bits_are_a_validation_problem_not_a_crash():
    with pytest.raises(InvalidRecord, match="attributes: not representable as JSON"):
        validate_catalogue_item({"item_id": "1", "title": "t", "attributes": {"n": 2**70}, "updated_at": 10**12})


def test_checked_in_json_schemas_are_current():
    assert main(["--check"]) == 0
