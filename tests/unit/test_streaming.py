import hashlib
import io
import math
import pickle
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.dead_letters import dead_letter, original_payload
from schemas.events import Event
from schemas.features import HOUR_MS, FeatureSpec, ItemFeatures, ItemState, RecentEventIds, TrendingState, UserState
from schemas.runtime.features import popularity_at
from schemas.runtime.samples import training_sample
from schemas.runtime.streaming import (
    TrendingUpdate,
    apply_item_event,
    apply_trending_update,
    apply_trending_updates,
    apply_user_event,
    fold_stream,
    rank_key,
    trending_list,
)
from schemas.validation import Problem

T0 = 1_700_000_000_000


def event(event_id, ts, item="i1", kind="click", user="u1", value=None, context=None) -> Event:
    return Event(event_id=event_id, user_id=user, item_id=item, type=kind, ts=ts, value=value, context=context)


def test_remembered_ids_drop_redeliveries_and_forget_the_oldest():
    recent = RecentEventIds(capacity=2)

    assert [recent.remember(event_id) for event_id in ["a", "b", "c"]] == [True, True, True]
    assert not recent.remember("c") and not recent.remember("b")
    assert recent.remember("a")  # forgotten: beyond capacity


def test_remembered_ids_survive_a_checkpoint():
    recent = RecentEventIds(capacity=3)
    for event_id in ["a", "b", "c", "d"]:
        recent.remember(event_id)

    restored = pickle.loads(pickle.dumps(recent))

    assert [restored.remember(event_id) for event_id in ["b", "c", "d", "a"]] == [False, False, False, True]
    assert restored.remember("b")  # "a" pushed the oldest out, as before the checkpoint


def digests_of(event_ids: list[str]) -> bytes:
    """The ids as a checkpoint holds them: 8 bytes of blake2b each, in order."""
    return b"".join(hashlib.blake2b(event_id.encode(), digest_size=8).digest() for event_id in event_ids)


def test_remembered_ids_checkpoint_as_eight_little_endian_bytes_of_blake2b_per_id_oldest_first():
    """The form Flink's checkpoints hold: a checkpoint written by an earlier version restores."""
    recent = RecentEventIds(capacity=3)
    for event_id in ["a", "b", "c", "d"]:
        recent.remember(event_id)

    assert recent.__reduce__() == (RecentEventIds, (3, digests_of(["b", "c", "d"])))


def test_remembered_ids_restored_under_a_smaller_capacity_keep_the_newest():
    restored = RecentEventIds(2, digests_of(["a", "b", "c"]))

    assert [restored.remember(event_id) for event_id in ["b", "c", "a"]] == [False, False, True]


class ClassesNamed(pickle.Unpickler):
    """Unpickles, and records the (module, name) of every class and function the pickle names."""

    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.named: set[tuple[str, str]] = set()

    def find_class(self, module, name):
        self.named.add((module, name))
        return super().find_class(module, name)


def test_every_class_the_checkpoints_pickle_lives_in_the_features_contract():
    """Flink's checkpoints name each state class by module, so a move of one is a state migration:
    they all stay in `schemas.features`, where the README's upgrade note points."""
    spec = FeatureSpec()
    user = UserState()
    for n, kind in enumerate(["click", "rating", "like"]):
        user = apply_user_event(user, event(f"e{n}", T0 + n, kind=kind, value=4.0 if kind == "rating" else None), spec)
    item = apply_item_event(ItemState(), event("e9", T0, kind="click"), spec)
    trending = apply_trending_update(TrendingState(), TrendingUpdate.of("i1", item.features, spec), spec)
    recent = RecentEventIds(capacity=2)
    recent.remember("e1")
    unpickler = ClassesNamed(pickle.dumps([(T0, user), (T0, item), trending, recent]))

    assert unpickler.load() is not None
    assert {module for module, _ in unpickler.named if module.split(".")[0] == "schemas"} == {"schemas.features"}


def test_user_versions_count_applied_events():
    state = UserState()
    for n in range(3):
        state = apply_user_event(state, event(f"e{n}", T0 + n), FeatureSpec())

    assert state.version == 3
    assert state.features.event_counts == {"click": 3}


def test_rank_keys_order_items_like_popularity_at_any_common_time():
    spec = FeatureSpec(popularity_half_life_ms=HOUR_MS)
    old = ItemFeatures(popularity=8.0, popularity_ts=T0)
    new = ItemFeatures(popularity=3.0, popularity_ts=T0 + 2 * HOUR_MS)  # 8 decays to 2 by then

    assert rank_key(new, spec) > rank_key(old, spec)
    for at in (T0 + 2 * HOUR_MS, T0 + 50 * HOUR_MS):
        assert popularity_at(new, at, spec) > popularity_at(old, at, spec)
    assert rank_key(ItemFeatures(), spec) == -math.inf


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 8))
def test_incremental_trending_equals_the_top_k_of_all_items(seed, k):
    rng = random.Random(seed)
    spec = FeatureSpec(popularity_half_life_ms=HOUR_MS, trending_size=k)
    kinds = ["click", "impression", "purchase", "play"]
    events = [event(f"e{n}", T0 + rng.randrange(10 * HOUR_MS), f"i{rng.randrange(15)}", rng.choice(kinds), f"u{n % 4}")
              for n in range(120)]  # fmt: skip

    _, items, trending = fold_stream(events, spec)
    expected = sorted(
        ((item_id, state.features) for item_id, state in items.items() if state.features.popularity > 0),
        key=lambda pair: (-rank_key(pair[1], spec), pair[0]),
    )[:k]
    listed = trending_list(trending, spec)

    assert [item_id for item_id, _ in listed.items] == [item_id for item_id, _ in expected]
    for (_, score), (_, features) in zip(listed.items, expected, strict=True):
        assert score == pytest.approx(popularity_at(features, listed.at_ts, spec))


def test_trending_counts_every_update_as_a_version():
    state = TrendingState()
    _, items, _ = fold_stream([event("a", T0), event("b", T0 + 1, item="i2")], FeatureSpec())
    for n, item in enumerate(items.values()):
        state = apply_trending_update(state, TrendingUpdate.of(f"i{n}", item.features, FeatureSpec()), FeatureSpec())

    assert state.version == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcdefgh"), st.integers(0, 40), st.integers(0, 10**6)), max_size=60),
    st.integers(0, 60),
)
def test_trending_takes_a_batch_as_it_takes_its_updates_one_by_one(raw_updates, cut):
    # Rank keys never decrease per item, as in the stream: each item's rank is the running maximum.
    spec, best = FeatureSpec(trending_size=3), {}
    updates = []
    for item_id, rank, last_ts in raw_updates:
        best[item_id] = max(best.get(item_id, 0), rank)
        updates.append(TrendingUpdate(item_id, float(best[item_id]), last_ts))
    one_by_one = TrendingState()
    for update in updates:
        one_by_one = apply_trending_update(one_by_one, update, spec)

    batched = apply_trending_updates(apply_trending_updates(TrendingState(), updates[:cut], spec), updates[cut:], spec)

    assert batched == one_by_one and batched.version == len(updates)


def test_item_window_counts_cover_the_last_hour_and_day():
    spec = FeatureSpec()
    events = [event(f"e{n}", T0 + offset) for n, offset in enumerate([0, 23 * HOUR_MS, 23 * HOUR_MS + 30 * 60_000])]
    events.append(event("imp", T0 + 23 * HOUR_MS + 31 * 60_000, kind="impression"))

    item = fold_stream(events, spec)[1]["i1"].features

    assert item.interactions_within(HOUR_MS) == 2
    assert item.interactions_within(24 * HOUR_MS) == 3
    assert (
        fold_stream([*events[:1], event("late", T0 + 25 * HOUR_MS)], spec)[1]["i1"].features.interactions_within(
            24 * HOUR_MS
        )
        == 1
    )
    hour_only = fold_stream(events, FeatureSpec(recent_window_ms=HOUR_MS))[1]["i1"].features
    assert hour_only.interactions_within(24 * HOUR_MS) == 2  # the spec keeps one hour of buckets


def test_training_samples_hold_the_state_just_before_the_event():
    spec = FeatureSpec()
    state = UserState()
    for e in [event("a", T0, "i1"), event("c", T0 + 20, "i3")]:
        state = apply_user_event(state, e, spec)
    late_click = event("b", T0 + 10, "i2", context={"request_id": "r1", "position": 4})

    sample = training_sample(state, late_click)

    assert [entry.item_id for entry in sample.sequence] == ["i1"]  # only interactions before it in event time
    assert sample.features.event_counts == {"click": 2}
    assert (sample.event.request_id, sample.event.position, sample.event.type) == ("r1", 4, "click")
    assert training_sample(state, event("p", T0, kind="play")) is None


def test_dead_letters_keep_the_original_bytes_and_the_source():
    raw = b"\xff\x00 not json"

    record = orjson.loads(dead_letter(raw, [Problem(field="$", rule="not UTF-8")], 3, 42, T0))

    assert record["reason"] == "$: not UTF-8"
    assert record["source"] == {"partition": 3, "offset": 42, "kafka_timestamp_ms": T0}
    assert original_payload(orjson.dumps(record)) == raw
