"""Hypothesis strategies for contract records, shared by the property tests."""

from hypothesis import strategies as st

from schemas.events import ID_PATTERN, MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, EventType

identifiers = st.from_regex(ID_PATTERN, fullmatch=True)
timestamps = st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS - 1)
finite_numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
contexts = st.none() | st.dictionaries(
    st.text(max_size=10), st.one_of(st.text(max_size=20), st.integers(-1000, 1000)), max_size=5
)


@st.composite
def event_payloads(draw, event_type: EventType | None = None) -> dict:
    kind = event_type or draw(st.sampled_from(EventType))
    value = draw(st.floats(0.5, 5.0)) if kind is EventType.RATING else draw(st.none() | finite_numbers)
    payload = {
        "event_id": draw(identifiers),
        "user_id": draw(identifiers),
        "item_id": draw(identifiers),
        "type": kind.value,
        "value": value,
        "ts": draw(timestamps),
        "context": draw(contexts),
    }
    return {key: field for key, field in payload.items() if field is not None}
