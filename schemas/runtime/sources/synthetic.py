"""A synthetic world with known user preferences, as Kingfisher events and catalogue items.

Items have one or two genres, a latent quality and a Zipf-distributed popularity. Each user has
a few genre interests that drift: after each session one interest may move to another genre.
Sessions arrive one after another in event time; in each, the user is shown slates of items
(one `impression` per item, linked by `context.request_id`), clicks each with the probability
`click_probability` gives, and may play, like or buy what was clicked. Because that probability
is known, ranking quality can be measured against ground truth. The same seed gives the same
world and the same events; events are generated lazily, so 10M of them need no more memory than 10.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from schemas.catalogue import CatalogueItem, validate_catalogue_item
from schemas.events import Event, EventType, validate_event

GENRES = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "Western",
)  # fmt: skip
SECOND_MS = 1000


@dataclass(frozen=True)
class WorldSpec:
    """The shape of a synthetic world; all defaults give a small world that trains in seconds."""

    users: int = 1000
    items: int = 500
    genres: int = 12
    interests_per_user: int = 3
    popularity_exponent: float = 1.1
    """Zipf exponent: the item of popularity rank r is sampled with weight r ** -exponent."""
    slate_size: int = 10
    slates_per_session: int = 3
    interest_share: float = 0.5
    """Share of each slate drawn from the user's interest genres; the rest by popularity."""
    drift_probability: float = 0.1
    """Chance that one of a user's interests moves to another genre after a session."""
    mean_session_gap_ms: int = 60 * SECOND_MS
    start_ts: int = 1_735_689_600_000  # 2025-01-01T00:00:00Z
    seed: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.genres <= len(GENRES):
            raise ValueError(f"genres must be from 1 to {len(GENRES)}")
        if not 1 <= self.interests_per_user <= self.genres:
            raise ValueError("interests_per_user must be from 1 to genres")
        if self.slate_size > self.items:
            raise ValueError("slate_size must not exceed items")


class SyntheticWorld:
    """Users, items and the preference model that generates their behaviour."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        rng = self.rng
        self.item_genres = np.zeros((spec.items, spec.genres), dtype=np.float32)
        for item in range(spec.items):
            self.item_genres[item, rng.choice(spec.genres, size=rng.integers(1, 3), replace=False)] = 1.0
        self.item_quality = rng.normal(0.0, 0.5, spec.items)
        self.item_year = rng.integers(1950, 2025, spec.items)
        weights = np.arange(1, spec.items + 1, dtype=np.float64) ** -spec.popularity_exponent
        self.item_popularity = rng.permutation(weights / weights.sum())
        self.popularity_cdf = np.cumsum(self.item_popularity)
        self.user_interests = np.array(
            [rng.choice(spec.genres, size=spec.interests_per_user, replace=False) for _ in range(spec.users)]
        )
        self._initial_interests = self.user_interests.copy()
        self._drifts: list[tuple[int, int, int, int]] = []
        """(time, user, slot, genre) of every drift so far, in time order."""
        activity = np.arange(1, spec.users + 1, dtype=np.float64) ** -1.0
        self.activity_cdf = np.cumsum(rng.permutation(activity / activity.sum()))

    def interests_at(self, user: int, ts: int | None = None) -> np.ndarray:
        """The user's interest genres just before event time `ts` (None: now, after the events generated so far)."""
        if ts is None:
            return self.user_interests[user]
        interests = self._initial_interests[user].copy()
        for when, who, slot, genre in self._drifts:
            if when >= ts:
                break
            if who == user:
                interests[slot] = genre
        return interests

    def affinity(self, user: int, items: np.ndarray, ts: int | None = None) -> np.ndarray:
        """How many of the user's interests (at `ts`) each item's genres share, plus the item's quality.
        Shape: (len(items),)."""
        return self.item_genres[items][:, self.interests_at(user, ts)].sum(axis=1) + self.item_quality[items]

    def click_probability(self, user: int, items: np.ndarray, positions: np.ndarray, ts: int | None = None):
        """The ground truth: P(click | shown at position), a logistic model of affinity and position bias."""
        logits = 2.0 * self.affinity(user, items, ts) - 0.15 * positions - 2.5
        return 1.0 / (1.0 + np.exp(-logits))

    @staticmethod
    def user_index(user: str) -> int:
        return int(user.removeprefix("u"))

    @staticmethod
    def item_index(item: str) -> int:
        return int(item.removeprefix("i"))

    @staticmethod
    def item_id_of(index: int) -> str:
        return item_id(index)

    def catalogue(self, updated_at: int) -> Iterator[CatalogueItem]:
        for item in range(self.spec.items):
            yield validate_catalogue_item(
                {
                    "item_id": item_id(item),
                    "title": f"Synthetic item {item}",
                    "genres": [GENRES[g] for g in np.flatnonzero(self.item_genres[item])],
                    "year": int(self.item_year[item]),
                    "updated_at": updated_at,
                }
            )

    def _slate(self, user: int) -> np.ndarray:
        spec, rng = self.spec, self.rng
        from_interests = round(spec.slate_size * spec.interest_share)
        liked = np.flatnonzero(self.item_genres[:, self.user_interests[user]].any(axis=1))
        picks = rng.choice(liked, size=min(from_interests, len(liked)), replace=False) if len(liked) else []
        slate = list(dict.fromkeys(int(i) for i in picks))
        while len(slate) < spec.slate_size:
            candidate = sample_index(self.popularity_cdf, rng)
            if candidate not in slate:
                slate.append(candidate)
        return np.array(slate)

    def _drift(self, user: int, ts: int) -> None:
        if self.rng.random() < self.spec.drift_probability:
            others = np.setdiff1d(np.arange(self.spec.genres), self.user_interests[user])
            if len(others):
                genre = int(self.rng.choice(others))  # drawn before the slot, as ever: the same seed, the same events
                slot = int(self.rng.integers(self.spec.interests_per_user))
                self.user_interests[user, slot] = genre
                self._drifts.append((ts, user, slot, genre))

    def _session(self, session: int, user: int, start: int) -> Iterator[dict]:
        rng, ts = self.rng, start
        for slate_number in range(self.spec.slates_per_session):
            request_id = f"w{self.spec.seed}-s{session}-r{slate_number}"
            slate = self._slate(user)
            clicked = rng.random(len(slate)) < self.click_probability(user, slate, np.arange(len(slate)))
            for position, item in enumerate(slate):
                context = {"request_id": request_id, "position": position}
                yield _payload(f"{request_id}-p{position}-imp", user, item, EventType.IMPRESSION, ts, context)
            for position in np.flatnonzero(clicked):
                ts += int(rng.integers(2, 20)) * SECOND_MS
                item, context = slate[position], {"request_id": request_id, "position": int(position)}
                yield _payload(f"{request_id}-p{position}-clk", user, item, EventType.CLICK, ts, context)
                follow_up = rng.random()
                if follow_up < 0.5:
                    seconds = float(rng.integers(30, 3600))
                    yield _payload(f"{request_id}-p{position}-ply", user, item, EventType.PLAY, ts + 1, value=seconds)
                elif follow_up < 0.6:
                    yield _payload(f"{request_id}-p{position}-buy", user, item, EventType.PURCHASE, ts + 1)
            ts += int(rng.integers(20, 60)) * SECOND_MS

    def events(self, limit: int) -> Iterator[Event]:
        """The first `limit` events of the world, in event-time order."""
        produced, session, ts = 0, 0, self.spec.start_ts
        while True:
            user = sample_index(self.activity_cdf, self.rng)
            last_ts = ts
            for payload in self._session(session, user, ts):
                if produced >= limit:
                    return
                produced += 1
                last_ts = payload["ts"]
                yield validate_event(payload)
            self._drift(user, last_ts)
            session += 1
            ts = last_ts + 1 + int(self.rng.exponential(self.spec.mean_session_gap_ms))


def sample_index(cdf: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with the probabilities whose cumulative sums are `cdf`."""
    return min(int(np.searchsorted(cdf, rng.random(), side="right")), len(cdf) - 1)


def item_id(index: int) -> str:
    return f"i{index}"


def user_id(index: int) -> str:
    return f"u{index}"


def _payload(event_id, user, item, kind, ts, context=None, value=None) -> dict:
    payload = {
        "event_id": f"syn:{event_id}",
        "user_id": user_id(user),
        "item_id": item_id(int(item)),
        "type": kind.value,
        "ts": ts,
        "context": context,
        "value": value,
    }
    return {key: field for key, field in payload.items() if field is not None}
