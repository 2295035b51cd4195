"""The stream's per-key state machines, as pure `apply(state, input, spec) -> state` functions.

The Flink job keeps one `UserState` per user, one `ItemState` per item and one `TrendingState`
in all (`schemas.features`); its operators only call these functions. `version` counts the events applied to a key:
it only grows, so a Redis write carrying it can be refused when it would move state backwards.
"""

import heapq
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from schemas.events import Event
from schemas.features import (
    FeatureSpec,
    ItemEvent,
    ItemFeatures,
    ItemState,
    TrendingState,
    UserEvent,
    UserState,
)
from schemas.redis_format import Trending, seen_filter_of
from schemas.runtime.features import (
    merge_item_features,
    seen_entry,
    unique_events,
    update_item_features,
    update_seen,
    update_sequence,
    update_user_features,
)


def apply_user_event(state: UserState, event: Event | UserEvent, spec: FeatureSpec) -> UserState:
    """Apply one new (not duplicate) event to a user; duplicates are dropped before, by event_id."""
    return UserState(
        sequence=update_sequence(state.sequence, event, spec),
        features=update_user_features(state.features, event, spec),
        version=state.version + 1,
    )


def apply_item_event(state: ItemState, event: Event | ItemEvent, spec: FeatureSpec) -> ItemState:
    return ItemState(update_item_features(state.features, event, spec), state.version + 1)


def rank_key(features: ItemFeatures, spec: FeatureSpec) -> float:
    """log2(popularity) + popularity_ts / half-life: orders items as popularity at any common time does,
    and never decreases when an item gets an event, so a top-K of it can be kept incrementally."""
    if features.popularity <= 0 or features.popularity_ts is None:
        return -math.inf
    return math.log2(features.popularity) + features.popularity_ts / spec.popularity_half_life_ms


class TrendingUpdate(NamedTuple):
    """What trending needs of an item's new features; plain values, cheap to send between operators."""

    item_id: str
    rank: float
    last_ts: int

    @classmethod
    def of(cls, item_id: str, item: ItemFeatures, spec: FeatureSpec) -> "TrendingUpdate":
        return cls(item_id, rank_key(item, spec), item.last_ts or 0)


def apply_trending_update(state: TrendingState, update: TrendingUpdate, spec: FeatureSpec) -> TrendingState:
    """Take an item's new features into the top-K."""
    return apply_trending_updates(state, (update,), spec)


def apply_trending_updates(
    state: TrendingState, updates: Iterable[tuple[str, float, int]], spec: FeatureSpec
) -> TrendingState:
    """Take items' new features into the top-K, in order: `apply_trending_update` over `updates`
    (TrendingUpdates or their plain tuples), with one copy of the candidates for all of them.
    Exact because rank keys never decrease: an item that drops out can only come back through an
    update, which passes through here."""
    candidates, floor, at_ts, version = dict(state.candidates), state.floor, state.at_ts, state.version
    for item_id, rank, last_ts in updates:
        at_ts, version = max(at_ts, last_ts), version + 1
        if item_id not in candidates and rank <= floor:
            continue
        candidates[item_id] = rank
        if len(candidates) > spec.trending_size:
            del candidates[min(candidates, key=lambda i: (candidates[i], i))]
            floor = min(candidates.values())
    return TrendingState(candidates, floor, at_ts, version)


def trending_list(state: TrendingState, spec: FeatureSpec) -> Trending:
    """The top-K with each item's popularity at `state.at_ts`, most popular first, ties by item_id."""
    ranked = sorted(state.candidates.items(), key=lambda pair: (-pair[1], pair[0]))
    offset = state.at_ts / spec.popularity_half_life_ms
    return Trending(items=tuple((item_id, 2.0 ** (rank - offset)) for item_id, rank in ranked), at_ts=state.at_ts)


def merge_item_states(a: ItemState, b: ItemState, spec: FeatureSpec) -> ItemState:
    """An item's state after two disjoint sets of its events, from the state after each (any order)."""
    return ItemState(merge_item_features(a.features, b.features, spec), a.version + b.version)


def trending_of(items: Mapping[str, ItemState], spec: FeatureSpec) -> TrendingState:
    """What `apply_trending_updates` reaches over every event of `items` (each item's state after all
    of its events), in any order: rank keys never decrease, so the top-K ends as the items of the K
    highest final keys (for a tie at the K-th place, the order of arrival chooses). An item whose
    key is -inf never enters."""
    ranks = [(rank_key(state.features, spec), item_id) for item_id, state in items.items()]
    ranks = [(rank, item_id) for rank, item_id in ranks if rank > -math.inf]
    top = heapq.nlargest(spec.trending_size, ranks)
    return TrendingState(
        candidates={item_id: rank for rank, item_id in top},
        floor=top[-1][0] if len(ranks) > spec.trending_size else -math.inf,
        at_ts=max((state.features.last_ts or 0 for state in items.values()), default=0),
        version=sum(state.version for state in items.values()),
    )


def fold_stream(
    events: Iterable[Event], spec: FeatureSpec
) -> tuple[dict[str, UserState], dict[str, ItemState], TrendingState]:
    """What the stream computes from `events` in this order: the reference for tests and replays."""
    users: dict[str, UserState] = {}
    items: dict[str, ItemState] = {}
    trending = TrendingState()
    for event in unique_events(events):
        users[event.user_id] = apply_user_event(users.get(event.user_id, UserState()), event, spec)
        item = items[event.item_id] = apply_item_event(items.get(event.item_id, ItemState()), event, spec)
        trending = apply_trending_update(trending, TrendingUpdate.of(event.item_id, item.features, spec), spec)
    return users, items, trending


def interacted_items(events: Iterable[Event]) -> dict[str, set[str]]:
    """Every item each user interacted with (what a seen set would hold without its capacity)."""
    interacted: dict[str, set[str]] = {}
    for event in unique_events(events):
        if (entry := seen_entry(event)) is not None:
            interacted.setdefault(event.user_id, set()).add(entry[0])
    return interacted


def seen_filters(events: Iterable[Event], spec: FeatureSpec) -> dict[str, bytes]:
    """The seen filter of each user who interacted with more items than `spec.seen_capacity`: every
    such item (REDIS_FORMAT.md, `user_seen_filter`), the reference for tests and replays."""
    interacted = interacted_items(events)
    return {user: seen_filter_of(items) for user, items in interacted.items() if len(items) > spec.seen_capacity}


def seen_sets(events: Iterable[Event], spec: FeatureSpec) -> dict[str, dict[str, int]]:
    """Each user's seen set (item_id -> newest interaction time) after `events`: what the stream
    leaves in Redis's `user_seen` keys, the reference for tests and replays."""
    seen: dict[str, dict[str, int]] = {}
    for event in unique_events(events):
        if (entry := seen_entry(event)) is not None:
            seen[event.user_id] = update_seen(seen.get(event.user_id, {}), entry, spec)
    return seen
