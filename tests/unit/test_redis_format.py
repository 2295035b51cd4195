import orjson
import pytest
from redis.crc import key_slot

from schemas.events import Event, EventType
from schemas.features import FeatureSpec, SequenceEntry, UserSequence
from schemas.redis_format import (
    SEEN_FILTER_BITS,
    FormatError,
    KeyKind,
    Trending,
    active_namespace_key,
    decode_value,
    encode_value,
    entity_of,
    key_pattern,
    redis_key,
    seen_filter_holds,
    seen_filter_of,
    seen_filter_positions,
)
from schemas.runtime.streaming import fold_stream


def test_key_layout_is_prefix_version_namespace_kind_and_the_entity_as_hash_tag():
    assert redis_key(KeyKind.USER_SEQUENCE, "42", "live") == "kf:v3:live:user_seq:{42}"
    assert redis_key(KeyKind.ITEM_FEATURES, "tenant:7", "replay-1") == "kf:v3:replay-1:item_feat:{tenant:7}"
    assert active_namespace_key() == "kf:v3:control:active_ns:{current}"


def test_every_key_of_one_entity_is_in_one_cluster_slot():
    kinds = (KeyKind.USER_SEQUENCE, KeyKind.USER_FEATURES, KeyKind.USER_SEEN, KeyKind.USER_SEEN_FILTER)
    slots = {key_slot(redis_key(kind, "u-42", namespace).encode()) for kind in kinds for namespace in ("live", "r-1")}

    assert slots == {key_slot(b"u-42")}
    with pytest.raises(ValueError, match="braces"):
        redis_key(KeyKind.USER_SEQUENCE, "a}b", "live")


@pytest.mark.parametrize("namespace", ["", "Live", "a:b", "x" * 49, "-leading-dash"])
def test_malformed_namespaces_are_rejected(namespace):
    with pytest.raises(ValueError, match="namespace"):
        redis_key(KeyKind.USER_SEQUENCE, "42", namespace)


def test_control_keys_and_data_keys_stay_in_their_namespaces():
    with pytest.raises(ValueError, match="control namespace"):
        redis_key(KeyKind.USER_SEQUENCE, "42", "control")
    with pytest.raises(ValueError, match="control namespace"):
        redis_key(KeyKind.ACTIVE_NAMESPACE, "current", "live")


def test_scan_patterns_cover_a_namespace_or_one_kind_and_entities_come_back_from_keys():
    key = redis_key(KeyKind.USER_SEQUENCE, "tenant:7", "live")

    assert key_pattern("live") == "kf:v3:live:*"
    assert key_pattern("live", KeyKind.USER_SEQUENCE) == "kf:v3:live:user_seq:*"
    assert entity_of(key, KeyKind.USER_SEQUENCE, "live") == "tenant:7"
    with pytest.raises(ValueError, match="not a user_feat key"):
        entity_of(key, KeyKind.USER_FEATURES, "live")
    with pytest.raises(ValueError, match="namespace"):
        key_pattern("a:b")


def test_empty_entity_id_is_rejected():
    with pytest.raises(ValueError, match="entity_id"):
        redis_key(KeyKind.USER_FEATURES, "", "live")


def test_every_value_kind_round_trips_with_its_as_of_time():
    spec = FeatureSpec()
    events = [
        Event(event_id="a", user_id="u", item_id="i", type="rating", value=4.5, ts=1_700_000_000_000),
        Event(event_id="b", user_id="u", item_id="i", type="click", ts=1_700_000_100_000),
    ]
    users, items, _ = fold_stream(events, spec)
    values = {
        KeyKind.USER_SEQUENCE: users["u"].sequence,
        KeyKind.USER_FEATURES: users["u"].features,
        KeyKind.ITEM_FEATURES: items["i"].features,
        KeyKind.TRENDING: Trending(items=(("i", 1.9),), at_ts=1_700_000_100_000),
    }

    for kind, data in values.items():
        stored = decode_value(kind, encode_value(data, as_of=1_700_000_100_000))
        assert (stored.data, stored.as_of) == (data, 1_700_000_100_000)


def test_the_stored_json_is_the_documented_envelope():
    raw = encode_value(Trending(items=(("i7", 12.5),), at_ts=5), as_of=5)

    assert orjson.loads(raw) == {"format_version": 3, "as_of": 5, "data": {"items": [["i7", 12.5]], "at_ts": 5}}


def test_a_stored_sequence_is_the_documented_json():
    entries = (
        SequenceEntry("ml:1:31", "31", EventType.RATING, 964982703000, 2.5),
        SequenceEntry("e2", "7", EventType.CLICK, 964982704000),
    )

    raw = encode_value(UserSequence(entries), as_of=964982704000)

    assert raw == (b'{"format_version":3,"as_of":964982704000,"data":{"entries":['
                   b'{"event_id":"ml:1:31","item_id":"31","type":"rating","ts":964982703000,"value":2.5},'
                   b'{"event_id":"e2","item_id":"7","type":"click","ts":964982704000,"value":null}]}}')  # fmt: skip


@pytest.mark.parametrize(
    "raw", [b'{"format_version": 1, "as_of": 1, "data": {}}', b"not json", b'{"format_version": 2}', b"[]"]
)
def test_values_in_another_format_are_refused(raw):
    with pytest.raises(FormatError):
        decode_value(KeyKind.USER_FEATURES, raw)


@pytest.mark.parametrize("entry", [{"event_id": "e", "item_id": "i", "type": "teleport", "ts": 1, "value": None},
                                   {"event_id": "e", "item_id": "i", "type": "click", "ts": 1}])  # fmt: skip
def test_a_sequence_with_an_unknown_event_type_or_a_missing_field_is_refused(entry):
    raw = orjson.dumps({"format_version": 3, "as_of": 1, "data": {"entries": [entry]}})

    with pytest.raises(FormatError):
        decode_value(KeyKind.USER_SEQUENCE, raw)


def test_an_items_seen_filter_bits_are_words_of_its_sha1_modulo_the_filters_size():
    # `echo -n i1 | sha1sum` = 3795b54c 5ba62df5 2f7f5132 a3c17a21 91fc7f74..., each word mod 2^17
    assert seen_filter_positions("i1") == (0x3795B54C % 2**17, 0x5BA62DF5 % 2**17, 0x2F7F5132 % 2**17,
                                           0xA3C17A21 % 2**17, 0x91FC7F74 % 2**17)  # fmt: skip
    assert seen_filter_positions("i1") == (111948, 11765, 86322, 96801, 32628)


def test_a_seen_filter_is_as_long_as_its_last_bit_needs_and_sets_bits_most_significant_first():
    assert seen_filter_of([]) == b""
    single = seen_filter_of(["i1"])
    assert len(single) == 111948 // 8 + 1
    assert single[111948 // 8] == 0x80 >> (111948 % 8) == 0x08  # bit 4 of byte 13993
    assert single[11765 // 8] == 0x80 >> (11765 % 8) == 0x04
    assert sum(bin(byte).count("1") for byte in single) == 5


def test_a_seen_filter_holds_its_items_and_about_as_few_others_as_its_size_promises():
    items = [f"m{n}" for n in range(2_700)]  # MovieLens's heaviest user
    seen_filter = seen_filter_of(items)
    others = [f"other-{n}" for n in range(50_000)]

    assert all(seen_filter_holds(seen_filter, item) for item in items)
    # (1 - e^(-5 * 2,700 / 2^17))^5 = 9.0e-6: 0.45 expected among 50,000
    assert sum(seen_filter_holds(seen_filter, item) for item in others) <= 3
    assert not seen_filter_holds(b"", "m1") and len(seen_filter) <= SEEN_FILTER_BITS // 8
