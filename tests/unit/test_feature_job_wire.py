from hypothesis import given

from schemas.events import Event
from streams.feature_job import from_wire, to_wire
from tests.strategies import event_payloads


@given(event_payloads())
def test_events_cross_a_shuffle_unchanged(payload):
    event = Event.model_validate(payload)

    wire = to_wire(event, 1_700_000_000_123)

    assert from_wire(wire) == (event, 1_700_000_000_123)
    assert wire[:3] == (event.event_id, event.user_id, event.item_id)  # plain values, not the model
