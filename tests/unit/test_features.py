import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.events import Event, EventType
from schemas.features import FeatureSpec, ItemFeatures, UserFeatures, UserSequence
from schemas.redis_format import seen_filter_of
from schemas.runtime.features import (
    popularity_at,
    trending,
    update_item_features,
    update_sequence,
    update_user_features,
)
from schemas.runtime.streaming import fold_stream, seen_filters, seen_sets
from tests.strategies import event_payloads

T0 = 1_700_000_000_000
HOUR = 3_600_000
SPEC = FeatureSpec(sequence_length=3, popularity_half_life_ms=HOUR)


def event(event_id: str, ts: int, item: str = "i1", kind: str = "click", user: str = "u1", value=None) -> Event:
    return Event(event_id=event_id, user_id=user, item_id=item, type=kind, ts=ts, value=value)


def sequence_of(*events: Event, spec: FeatureSpec = SPEC) -> UserSequence:
    sequence = UserSequence()
    for e in events:
        sequence = update_sequence(sequence, e, spec)
    return sequence


def test_sequence_keeps_the_newest_n_interactions_in_event_time_order():
    sequence = sequence_of(*(event(f"e{i}", T0 + i, item=f"i{i}") for i in range(5)))

    assert sequence.item_ids == ["i2", "i3", "i4"]


def test_a_late_event_is_inserted_at_its_place():
    sequence = sequence_of(event("a", T0 + 10, "i1"), event("b", T0 + 30, "i3"), event("late", T0 + 20, "i2"))

    assert sequence.item_ids == ["i1", "i2", "i3"]


def test_an_event_older_than_the_whole_full_window_falls_out():
    full = sequence_of(*(event(f"e{i}", T0 + i * 10, item=f"i{i}") for i in range(3)))

    assert update_sequence(full, event("ancient", T0 - 1, "old"), SPEC) == full


def test_duplicates_and_impressions_do_not_enter_the_sequence():
    sequence = sequence_of(event("a", T0, "i1"), event("a", T0 + 5, "i9"), event("imp", T0 + 6, "i7", "impression"))

    assert sequence.item_ids == ["i1"]


def test_equal_timestamps_order_by_event_id_whatever_the_arrival():
    assert sequence_of(event("b", T0, "i2"), event("a", T0, "i1")).item_ids == ["i1", "i2"]


def test_user_features_count_types_and_average_ratings():
    features = UserFeatures()
    for e in [
        event("r1", T0 + 5, kind="rating", value=4.0),
        event("c", T0),
        event("r2", T0 + 9, kind="rating", value=2.5),
    ]:
        features = update_user_features(features, e, SPEC)

    assert features.event_counts == {"rating": 2, "click": 1}
    assert features.rating_mean == pytest.approx(3.25)
    assert (features.first_ts, features.last_ts) == (T0, T0 + 9)


def test_popularity_halves_every_half_life_and_weights_event_types():
    features = update_item_features(ItemFeatures(), event("c", T0), SPEC)  # click: weight 1
    features = update_item_features(features, event("p", T0 + HOUR, kind="purchase"), SPEC)  # weight 4

    assert features.popularity == pytest.approx(0.5 + 4.0)
    assert popularity_at(features, T0 + 2 * HOUR, SPEC) == pytest.approx(2.25)
    assert popularity_at(features, T0, SPEC) == pytest.approx(4.5)  # never un-decays to before its newest event


def test_a_late_event_adds_what_it_would_have_added_on_time():
    on_time = update_item_features(
        update_item_features(ItemFeatures(), event("a", T0), SPEC), event("b", T0 + HOUR), SPEC
    )
    late = update_item_features(update_item_features(ItemFeatures(), event("b", T0 + HOUR), SPEC), event("a", T0), SPEC)

    assert late.popularity == pytest.approx(on_time.popularity) == pytest.approx(1.5)
    assert late.popularity_ts == on_time.popularity_ts == T0 + HOUR


def test_impressions_count_towards_ctr_but_not_popularity():
    features = ItemFeatures()
    for e in [event(f"imp{i}", T0, kind="impression") for i in range(4)] + [event("c", T0)]:
        features = update_item_features(features, e, SPEC)

    assert features.ctr == pytest.approx(0.25)
    assert features.popularity == pytest.approx(1.0)
    assert ItemFeatures().ctr is None


def test_trending_ranks_by_decayed_popularity_then_item_id():
    items = {
        "old-hit": ItemFeatures(popularity=8.0, popularity_ts=T0),  # 8 decays to 2 after two hours
        "fresh": ItemFeatures(popularity=3.0, popularity_ts=T0 + 2 * HOUR),
        "tie-b": ItemFeatures(popularity=2.0, popularity_ts=T0 + 2 * HOUR),
    }

    ranked = trending(items.items(), T0 + 2 * HOUR, k=3, spec=SPEC)

    assert [item for item, _ in ranked] == ["fresh", "old-hit", "tie-b"]
    assert [score for _, score in ranked] == pytest.approx([3.0, 2.0, 2.0])


one_users_events = st.lists(event_payloads(), min_size=1, max_size=25).map(
    lambda payloads: [
        Event.model_validate(p | {"event_id": f"e{n}", "user_id": "u", "item_id": f"i{n % 4}"})
        for n, p in enumerate(payloads)
    ]
)

one_users_events_within_days = one_users_events.map(
    lambda events: [e.model_copy(update={"ts": T0 + (e.ts % (3 * 24 * HOUR))}) for e in events]
)
"""The same, within three days: the item's 24-hour window drops buckets as its newest event moves on."""


@given(one_users_events | one_users_events_within_days, st.randoms(use_true_random=False))
def test_state_does_not_depend_on_arrival_order_or_duplicates(events, random):
    shuffled = events + random.sample(events, k=len(events) // 2)  # duplicates, re-delivered later
    random.shuffle(shuffled)
    spec = FeatureSpec(sequence_length=5)
    users, items, _ = fold_stream(events, spec)
    reordered_users, reordered_items, _ = fold_stream(shuffled, spec)

    # Sequences, counts and times are exact; float sums may differ in the last bits with the order of addition.
    assert reordered_users["u"].sequence == users["u"].sequence
    assert reordered_users["u"].features.event_counts == users["u"].features.event_counts
    assert reordered_users["u"].features.rating_sum == pytest.approx(users["u"].features.rating_sum, rel=1e-9)
    assert reordered_items.keys() == items.keys()
    for item_id, state in items.items():
        assert reordered_items[item_id].features.event_counts == state.features.event_counts
        assert reordered_items[item_id].features.recent == state.features.recent
        assert reordered_items[item_id].features.popularity_ts == state.features.popularity_ts
        assert reordered_items[item_id].features.popularity == pytest.approx(state.features.popularity, rel=1e-9)


def test_default_spec_keeps_50_interactions_and_weights_every_type():
    spec = FeatureSpec()

    assert spec.sequence_length == 50
    assert set(spec.interaction_weights) == set(EventType)


def test_the_seen_set_keeps_each_items_newest_time_and_drops_the_oldest_beyond_capacity():
    spec = FeatureSpec(seen_capacity=2)
    events = [event("a", T0, item="i1"), event("b", T0 + 5, item="i2"), event("c", T0 + 1, item="i1"),
              event("d", T0 + 3, item="i3"), event("e", T0 + 9, kind="impression", item="i4")]  # fmt: skip

    assert seen_sets(events, spec) == {"u1": {"i2": T0 + 5, "i3": T0 + 3}}
    tied = [event("a", T0, item="i9"), event("b", T0, item="i10"), event("c", T0, item="i11")]
    assert seen_sets(tied, spec) == {"u1": {"i11": T0, "i9": T0}}  # equal times: the smaller id ("i10") leaves first


def test_a_user_who_interacted_with_more_items_than_the_seen_capacity_gets_a_filter_of_all_of_them():
    spec = FeatureSpec(seen_capacity=2)
    twice = [event("a", T0, item="i1"), event("b", T0 + 1, item="i2"), event("c", T0 + 2, item="i1"),
             event("d", T0 + 3, item="i3", kind="impression")]  # fmt: skip
    thrice = [*twice, event("e", T0 + 4, item="i3"), event("e", T0 + 5, item="i4")]  # the second "e": a redelivery

    assert seen_filters(twice, spec) == {}  # two items (the impression is no interaction)
    assert seen_filters(thrice, spec) == {"u1": seen_filter_of(["i1", "i2", "i3"])}


@given(one_users_events, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=5))
def test_the_seen_set_does_not_depend_on_arrival_order_or_duplicates(events, random, capacity):
    shuffled = events + random.sample(events, k=len(events) // 2)
    random.shuffle(shuffled)
    spec = FeatureSpec(seen_capacity=capacity)

    assert seen_sets(shuffled, spec) == seen_sets(events, spec)
    assert seen_filters(shuffled, spec) == seen_filters(events, spec)
