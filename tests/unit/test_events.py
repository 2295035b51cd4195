import json

import jsonschema
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import MAX_EVENT_BYTES, Event, EventType, parse_event, validate_event
from schemas.export_json_schemas import SCHEMA_DIR
from schemas.validation import InvalidRecord
from tests.strategies import event_payloads

EVENT_JSON_SCHEMA = json.loads((SCHEMA_DIR / "event-v1.schema.json").read_text())
VALID = {"event_id": "e-1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}

# (field, how to break it): each entry makes a valid event invalid in exactly that field.
MUTATIONS = [
    ("event_id", lambda p: p | {"event_id": ""}),
    ("event_id", lambda p: p | {"event_id": "x" * 65}),
    ("user_id", lambda p: p | {"user_id": "has space"}),
    ("user_id", lambda p: p | {"user_id": 42}),
    ("item_id", lambda p: p | {"item_id": "ünicode"}),
    ("item_id", lambda p: {k: v for k, v in p.items() if k != "item_id"}),
    ("type", lambda p: p | {"type": "zap"}),
    ("type", lambda p: p | {"type": None}),
    ("value", lambda p: p | {"value": "4.5"}),
    ("value", lambda p: p | {"value": True}),
    ("ts", lambda p: p | {"ts": 1_700_000_000}),
    ("ts", lambda p: p | {"ts": 4_200_000_000_000}),
    ("ts", lambda p: p | {"ts": 1.7e12 + 0.5}),
    ("ts", lambda p: p | {"ts": "1700000000000"}),
    ("ts", lambda p: {k: v for k, v in p.items() if k != "ts"}),
    ("context", lambda p: p | {"context": "not an object"}),
    ("schema_version", lambda p: p | {"schema_version": 2}),
    ("colour", lambda p: p | {"colour": "red"}),
]


def problem_fields(data: bytes) -> set[str]:
    with pytest.raises(InvalidRecord) as caught:
        parse_event(data)
    return {problem.field for problem in caught.value.problems}


@given(event_payloads())
def test_every_valid_event_round_trips_and_satisfies_the_json_schema(payload):
    event = parse_event(orjson.dumps(payload))

    assert parse_event(event.to_json()) == event
    assert event.kafka_key == payload["user_id"].encode()
    jsonschema.validate(orjson.loads(event.to_json()), EVENT_JSON_SCHEMA)


@given(event_payloads(), st.sampled_from(MUTATIONS))
def test_every_invalid_mutation_is_rejected_with_a_reason_naming_the_field(payload, mutation):
    field, mutate = mutation
    broken = mutate(payload)

    assert field in problem_fields(orjson.dumps(broken))
    assert not jsonschema.Draft202012Validator(EVENT_JSON_SCHEMA).is_valid(broken)


@given(event_payloads(EventType.RATING), st.sampled_from([None, 0.0, 0.49, 5.01, 10]))
def test_a_rating_needs_a_value_between_half_and_five(payload, value):
    broken = payload | {"value": value}

    assert problem_fields(orjson.dumps(broken)) == {"value"}
    assert not jsonschema.Draft202012Validator(EVENT_JSON_SCHEMA).is_valid(broken)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"event_id": ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, not list"),
        (b"x" * (MAX_EVENT_BYTES + 1), f"at most {MAX_EVENT_BYTES}"),
        (b"x" * 1_000_000, "payload is 1000000 bytes"),
    ],
)
def test_undecodable_payloads_are_rejected_as_a_whole(data, rule):
    with pytest.raises(InvalidRecord) as caught:
        parse_event(data)

    [problem] = caught.value.problems
    assert problem.field == "$"
    assert rule in problem.rule


def test_an_oversized_context_is_rejected():
    assert problem_fields(orjson.dumps(VALID | {"context": {"blob": "x" * 2100}})) == {"context"}


def test_integers_beyond_64_bits_in_context_are_a_validation_problem_not_a_crash():
    with pytest.raises(InvalidRecord, match="context: not representable as JSON"):
        validate_event(VALID | {"context": {"n": 2**70}})


def test_all_problems_are_reported_at_once():
    broken = VALID | {"user_id": "a b", "ts": -1, "type": "zap"}

    assert problem_fields(orjson.dumps(broken)) == {"user_id", "ts", "type"}


def test_an_integral_float_timestamp_is_an_integer_as_in_json_schema():
    assert parse_event(b'{"event_id":"e","user_id":"u","item_id":"i","type":"click","ts":1700000000000.0}').ts == (
        1_700_000_000_000
    )


def test_event_ids_and_defaults():
    event = Event.model_validate(VALID)

    assert event.schema_version == 1
    assert event.value is None
    assert orjson.loads(event.to_json()) == VALID | {"schema_version": 1}
