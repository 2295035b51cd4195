"""Feature definitions: the one implementation of every live and offline feature.

Each feature is a pure `update(state, event, spec) -> state` function over the value types of
`schemas.features`. The Flink job calls it per event, a replay calls it over a topic, training
calls it over history, so all three agree. Results do not depend on arrival order: sequences are
kept in event-time order, aggregates are sums and maxima, and decayed popularity is anchored so a
late event adds what it would have added on time. Deduplication by event_id across the whole
history is the caller's job (keyed state in the stream, `unique_events` offline);
`update_sequence` also ignores an event_id it holds.
"""

import bisect
import heapq
from collections.abc import Iterable

from schemas.events import Event, EventType
from schemas.features import (
    WINDOW_BUCKET_MS,
    FeatureSpec,
    ItemEvent,
    ItemFeatures,
    SequenceEntry,
    UserEvent,
    UserFeatures,
    UserSequence,
    bucket_start,
)


def update_sequence(sequence: UserSequence, event: Event | UserEvent, spec: FeatureSpec) -> UserSequence:
    """Insert an interaction at its event-time place and keep the newest `spec.sequence_length`."""
    entries = sequence.entries
    if not event.type.is_interaction or event.event_id in [entry.event_id for entry in entries]:
        return sequence
    entry = SequenceEntry(event.event_id, event.item_id, event.type, event.ts, event.value)
    if not entries or entries[-1].order <= entry.order:  # the common case: the user's newest event
        return UserSequence((*entries, entry)[-spec.sequence_length :])
    inserted = list(entries)
    bisect.insort(inserted, entry, key=lambda e: e.order)
    return UserSequence(tuple(inserted[-spec.sequence_length :]))


def _count(counts: dict[str, int], event_type: EventType) -> dict[str, int]:
    counted, name = dict(counts), event_type._value_
    counted[name] = counts.get(name, 0) + 1
    return counted


def _min(current: int | None, ts: int) -> int:
    return ts if current is None else min(current, ts)


def _max(current: int | None, ts: int) -> int:
    return ts if current is None else max(current, ts)


def update_user_features(features: UserFeatures, event: Event | UserEvent, spec: FeatureSpec) -> UserFeatures:
    rated = event.type is EventType.RATING
    return UserFeatures(
        event_counts=_count(features.event_counts, event.type),
        rating_count=features.rating_count + rated,
        rating_sum=features.rating_sum + event.value if rated else features.rating_sum,
        last_ts=_max(features.last_ts, event.ts),
        first_ts=_min(features.first_ts, event.ts),
    )


def decay(score: float, from_ts: int, to_ts: int, spec: FeatureSpec) -> float:
    return score * 2.0 ** (-(to_ts - from_ts) / spec.popularity_half_life_ms)


def _recent(
    recent: tuple[tuple[int, int], ...], event: Event | ItemEvent, last_ts: int, window_ms: int
) -> tuple[tuple[int, int], ...]:
    """The interaction counts per bucket of the `window_ms` up to `last_ts`. Every event prunes (an
    impression moves `last_ts` too), so the buckets depend on which events came, not their order."""
    oldest = bucket_start(last_ts) - window_ms + WINDOW_BUCKET_MS
    bucket = bucket_start(event.ts)
    counted = event.type.is_interaction and bucket >= oldest
    if recent and recent[0][0] >= oldest:
        if not counted:
            return recent
        if recent[-1][0] == bucket:  # the common case: another event in the newest bucket
            return (*recent[:-1], (bucket, recent[-1][1] + 1))
    counts = {start: count for start, count in recent if start >= oldest}
    if counted:
        counts[bucket] = counts.get(bucket, 0) + 1
    return tuple(sorted(counts.items()))


def update_item_features(features: ItemFeatures, event: Event | ItemEvent, spec: FeatureSpec) -> ItemFeatures:
    weight = spec.interaction_weights[event.type]
    previous_ts = event.ts if features.popularity_ts is None else features.popularity_ts
    # Decay everything to the newer of the two times, so a late event adds what it would have on time.
    anchor = max(previous_ts, event.ts)
    popularity = decay(features.popularity, previous_ts, anchor, spec) + decay(weight, event.ts, anchor, spec)
    last_ts = _max(features.last_ts, event.ts)
    rated = event.type is EventType.RATING
    return ItemFeatures(
        event_counts=_count(features.event_counts, event.type),
        rating_count=features.rating_count + rated,
        rating_sum=features.rating_sum + event.value if rated else features.rating_sum,
        last_ts=last_ts,
        popularity=popularity,
        popularity_ts=anchor,
        recent=_recent(features.recent, event, last_ts, spec.recent_window_ms),
    )


def merge_item_features(a: ItemFeatures, b: ItemFeatures, spec: FeatureSpec) -> ItemFeatures:
    """The features of an item after two disjoint sets of its events, from the features of each:
    what `update_item_features` reaches over all of them, in any order (floats to rounding). Sums
    add, maxima take the larger, popularity decays both to the newer anchor, and the window keeps
    the buckets within `recent_window_ms` of the newer `last_ts` (what pruning at every event leaves)."""
    if a.popularity_ts is None or b.popularity_ts is None:
        return b if a.popularity_ts is None else a
    anchor = max(a.popularity_ts, b.popularity_ts)
    last_ts = max(a.last_ts, b.last_ts)
    counts = dict(a.event_counts)
    for name, count in b.event_counts.items():
        counts[name] = counts.get(name, 0) + count
    oldest = bucket_start(last_ts) - spec.recent_window_ms + WINDOW_BUCKET_MS
    recent: dict[int, int] = {}
    for start, count in (*a.recent, *b.recent):
        if start >= oldest:
            recent[start] = recent.get(start, 0) + count
    popularity = decay(a.popularity, a.popularity_ts, anchor, spec) + decay(b.popularity, b.popularity_ts, anchor, spec)
    return ItemFeatures(
        event_counts=counts,
        rating_count=a.rating_count + b.rating_count,
        rating_sum=a.rating_sum + b.rating_sum,
        last_ts=last_ts,
        popularity=popularity,
        popularity_ts=anchor,
        recent=tuple(sorted(recent.items())),
    )


def popularity_at(features: ItemFeatures, ts: int, spec: FeatureSpec) -> float:
    """The item's popularity at time `ts` (not before its newest event)."""
    if features.popularity_ts is None:
        return 0.0
    return decay(features.popularity, features.popularity_ts, max(ts, features.popularity_ts), spec)


def trending(
    items: Iterable[tuple[str, ItemFeatures]], at_ts: int, k: int, spec: FeatureSpec
) -> list[tuple[str, float]]:
    """The k most popular items at `at_ts`, most popular first; ties broken by item_id."""
    scored = ((popularity_at(features, at_ts, spec), item_id) for item_id, features in items)
    top = heapq.nsmallest(k, scored, key=lambda pair: (-pair[0], pair[1]))
    return [(item_id, score) for score, item_id in top]


def seen_entry(event: Event | UserEvent) -> tuple[str, int] | None:
    """What an event adds to its user's seen set: (item_id, event time) of an interaction, else None."""
    return (event.item_id, event.ts) if event.type.is_interaction else None


def update_seen(seen: dict[str, int], entry: tuple[str, int], spec: FeatureSpec) -> dict[str, int]:
    """A user's seen set, item_id -> newest interaction time, with `entry` added: at most
    `spec.seen_capacity` items, those with the newest (time, item_id). The result is the same in
    any order of entries, which lets the stream leave the set to Redis (REDIS_FORMAT.md, `user_seen`)."""
    item_id, ts = entry
    updated = dict(seen)
    updated[item_id] = max(ts, seen.get(item_id, ts))
    if len(updated) > spec.seen_capacity:
        del updated[min(updated, key=lambda item: (updated[item], item))]  # str order is UTF-8 byte order, as Redis's
    return updated


def unique_events(events: Iterable[Event]) -> Iterable[Event]:
    """The first event of every event_id, as the stream's deduplication keeps it."""
    seen: set[str] = set()
    for event in events:
        if event.event_id not in seen:
            seen.add(event.event_id)
            yield event
