"""Training data: sample rows (from the stream's log, or from a dataset through the same feature
functions), the two splits models are measured on, their queries, and the sequences retrieval learns from.

A row is a `schemas.runtime.samples.SampleRow`: the event, and the user's sequence and features just before
it (point in time). Everything here is ordered by event time.
"""

import gc
import logging
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from schemas.catalogue import CatalogueItem
from schemas.events import Event
from schemas.features import FeatureSpec, ItemEvent, ItemState, TrendingState
from schemas.runtime import samples
from schemas.runtime.model_inputs import Vocabulary, behaviour_kind
from schemas.runtime.pipeline import RankRequest
from schemas.runtime.samples import SampleRow, sample_rows
from schemas.runtime.streaming import TrendingUpdate, apply_item_event, apply_trending_update, trending_list

log = logging.getLogger("kingfisher.training")
Row = SampleRow


class FeatureSpecsMixed(ValueError):
    """The sample log's window holds rows the stream built with different feature specs."""


def read_sample_log(directory: Path, window_days: int, max_rows: int) -> tuple[list[Row], FeatureSpec | None]:
    """The rows of the sample log's newest `window_days` days, at most the newest `max_rows`, and
    the feature spec the stream built them with (None: the window is empty)."""
    gc.disable()  # a fold allocates millions of objects that all stay alive: collections only slow it
    try:
        rows, report, files = samples.read_window(directory, window_days)
    finally:
        gc.enable()
    log.info(
        "read %d sample rows from %d files of the newest %d days under %s (%s)",
        len(rows),
        files,
        window_days,
        directory,
        report,
    )
    if report.gaps or report.mismatched_snapshots:
        log.warning(
            "the sample log is not whole: %d lines missing, %d snapshots differ from the fold",
            report.gaps,
            report.mismatched_snapshots,
        )
    if len(report.feature_specs) > 1:
        first, *others = report.feature_specs
        raise FeatureSpecsMixed(
            f"the sample log's newest {window_days} days under {directory} were written with "
            f"{len(report.feature_specs)} feature specs ({'; '.join(first.differences(o) for o in others)}): "
            "train once the window holds one (KF_TRAINING_WINDOW_DAYS), or from a dataset"
        )
    return in_time_order(rows)[-max_rows:], next(iter(report.feature_specs), None)


def bootstrap_rows(events: Iterable[Event], spec: FeatureSpec) -> list[Row]:
    """The rows the stream's log holds for `events`: the bootstrap path from a dataset."""
    return in_time_order(sample_rows(events, spec))


def in_time_order(rows: Iterable[Row]) -> list[Row]:
    """By event time, then event_id: the one order of rows whichever path they came by."""
    return sorted(rows, key=lambda row: row.order)


def catalogue_by_id(items: Iterable[CatalogueItem]) -> dict[str, CatalogueItem]:
    return {item.item_id: item for item in items}


def is_interaction(row: Row) -> bool:
    return row.event.type.is_interaction


class Query:
    """One moment of a user: the row of the event that comes next, the items the user had
    interacted with before it (`seen`: what the service's exclude_seen leaves out), and the items a
    list shown then could catch (`relevant`: the next interactions' items, none of them seen)."""

    __slots__ = ("_cut", "_items", "_seen", "relevant", "row")

    def __init__(self, row: Row, items: list[str], cut: int, relevant: frozenset[str]):
        self.row, self.relevant = row, relevant
        self._items, self._cut = items, cut
        """The items of the user's interaction rows (one list shared by the user's queries); the
        first `cut` came before this one."""
        self._seen: frozenset[str] | None = None

    @property
    def seen(self) -> frozenset[str]:
        if self._seen is None:  # built when asked: most queries of a long history never are
            self._seen = frozenset(self._items[: self._cut]).union(entry.item_id for entry in self.row.sequence)
        return self._seen

    @property
    def user_id(self) -> str:
        return self.row.event.user_id


class Histories:
    """Each user's rows in time order, with the items seen before each interaction row."""

    def __init__(self, rows: Sequence[Row]):
        self.rows: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            self.rows[row.event.user_id].append(row)

    def interactions(self, user_id: str) -> list[Row]:
        return [row for row in self.rows[user_id] if is_interaction(row)]

    def queries(self, user_id: str, future: int) -> list[Query]:
        """A query at each of the user's interaction rows: seen before it, and the next `future`
        unseen items (this one first) as relevant."""
        rows, seen, queries = self.interactions(user_id), set(), []
        items = [row.event.item_id for row in rows]
        for n, row in enumerate(rows):
            before = {entry.item_id for entry in row.sequence}
            upcoming: list[str] = []
            for item in items[n:]:
                if len(upcoming) == future:
                    break
                if item not in seen and item not in before and item not in upcoming:
                    upcoming.append(item)
            queries.append(Query(row, items, n, frozenset(upcoming)))
            seen.add(row.event.item_id)
        return queries


@dataclass(frozen=True)
class Split:
    """What a model of one split learns from and is measured on: `train` rows (time order), and
    queries whose relevant items all come after every training row of their user."""

    name: str
    train: list[Row]
    validation: list[Query]
    test: list[Query]


def time_split(rows: list[Row], holdout_fraction: float, future: int, limit: int, seed: int) -> Split:
    """Train before the newest `holdout_fraction` of rows by time; validate on the first half of the
    rest, test on the second. A query's relevant items come from its own half only."""
    times = np.array([row.event.ts for row in rows], dtype=np.int64)
    validate_from, test_from = (int(t) for t in np.quantile(times, [1 - holdout_fraction, 1 - holdout_fraction / 2]))
    validation, test = queries_between(rows, [(validate_from, test_from), (test_from, _NEVER)], future)
    rng = np.random.default_rng(seed)
    train = [row for row in rows if row.event.ts < validate_from]
    return Split("time", train, _sample(validation, limit, rng), _sample(test, limit, rng))


def fresh_split(rows: list[Row], since: int, holdout_fraction: float, future: int, limit: int, seed: int) -> Split:
    """An incremental retraining's split of the rows after `since` (event time, ms): train on every
    row before the newest `holdout_fraction` of those, validate on the rest; no test queries (the
    models continue ones measured on their from-scratch run's test split)."""
    times = np.array([row.event.ts for row in rows if row.event.ts > since], dtype=np.int64)
    if not len(times):
        return Split("fresh", [], [], [])
    validate_from = int(np.quantile(times, 1 - holdout_fraction))
    [validation] = queries_between(rows, [(validate_from, _NEVER)], future)
    train = [row for row in rows if row.event.ts < validate_from]
    return Split("fresh", train, _sample(validation, limit, np.random.default_rng(seed)), [])


_NEVER = np.iinfo(np.int64).max


def queries_between(rows: list[Row], parts: list[tuple[int, int]], future: int) -> list[list[Query]]:
    """For each (start, end) of event time: the queries at interactions inside it whose relevant
    items come before `end`, with each user's whole history before them as seen."""
    histories, queries = Histories(rows), [[] for _ in parts]
    for user_id in histories.rows:
        for part, (start, end) in zip(queries, parts, strict=True):
            inside = Histories([row for row in histories.rows[user_id] if row.event.ts < end])
            part += [
                query for query in inside.queries(user_id, future) if query.row.event.ts >= start and query.relevant
            ]
    return queries


def last_n_split(rows: list[Row], n: int) -> Split:
    """Per user with at least 2n + 1 interactions: the newest n are the test query's relevant items,
    the n before them the validation query's; training takes the user's rows before those 2n."""
    histories, train, validation, test = Histories(rows), [], [], []
    for user_id, user_rows in histories.rows.items():
        interactions = histories.interactions(user_id)
        if len(interactions) < 2 * n + 1:
            train += user_rows
            continue
        queries = histories.queries(user_id, n)
        validation.append(queries[-2 * n])
        test.append(queries[-n])
        cut = interactions[-2 * n].order
        train += [row for row in user_rows if row.order < cut]
    return Split(f"last-{n}", in_time_order(train), validation, test)


def _sample(queries: list[Query], limit: int, rng: np.random.Generator) -> list[Query]:
    if len(queries) <= limit:
        return queries
    return [queries[n] for n in sorted(rng.choice(len(queries), size=limit, replace=False))]


def fold_of(user_id: str, folds: int) -> int:
    """The fold a user belongs to (crc32, so every run and process agrees)."""
    return zlib.crc32(user_id.encode()) % folds


class Windows(NamedTuple):
    """Sequences for next-item training: items, kinds [N, L] int32, ages [N, L] float32 (seconds to
    the moment of the window's last target) and targets [N, L] int32, the item index that followed
    each position (0: none, or the same item again)."""

    items: np.ndarray
    kinds: np.ndarray
    ages: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


def windows(rows: Sequence[Row], vocabulary: Vocabulary, length: int) -> Windows:
    """Every user's interaction rows cut into windows: the row's sequence (what came before it) as
    input and, at each position, the next item as target, the row's own item after the newest. A
    window every `length` interaction rows per user (and one at the newest), so each next item is
    learnt about once or twice per epoch."""
    histories = Histories(rows)
    chosen = []
    for user_id in histories.rows:
        interactions = histories.interactions(user_id)
        chosen += [
            row for n, row in enumerate(interactions) if (len(interactions) - 1 - n) % length == 0 and row.sequence
        ]
    items = np.zeros((len(chosen), length), np.int32)
    kinds, targets = np.zeros_like(items), np.zeros_like(items)
    ages = np.zeros((len(chosen), length), np.float32)
    for n, row in enumerate(chosen):
        entries = row.sequence[-length:]
        first = length - len(entries)
        items[n, first:] = vocabulary.item_indices(entry.item_id for entry in entries)
        kinds[n, first:] = [behaviour_kind(entry.type, entry.value) for entry in entries]
        ages[n, first:] = [max(row.event.ts - entry.ts, 0) / 1000 for entry in entries]
        following = np.append(items[n, first + 1 :], vocabulary.item_indices([row.event.item_id]))
        targets[n, first:] = np.where(following != items[n, first:], following, 0)
    return Windows(items, kinds, ages, targets)


Trending = tuple[tuple[str, float], ...]


def trending_before(rows: Sequence[Row], moments: Iterable[Row], spec: FeatureSpec, size: int) -> dict[tuple, Trending]:
    """The stream's trending list (its first `size` items, with their popularity) just before each
    of `moments`, keyed by row order: the rows' events (in time order) folded with the stream's own
    functions. The log holds labelled events only, so plays and likes do not count here."""
    wanted = iter(sorted({row.order for row in moments}))
    upcoming, lists = next(wanted, None), {}
    items: dict[str, ItemState] = {}
    state, current, changed = TrendingState(), (), False

    def listed() -> Trending:
        nonlocal current, changed
        if changed:
            current, changed = trending_list(state, spec).items[:size], False
        return current

    for row in rows:
        while upcoming is not None and upcoming <= row.order:
            lists[upcoming], upcoming = listed(), next(wanted, None)
        event = ItemEvent(row.event.item_id, row.event.type, row.event.ts, row.event.value)
        item = items[event.item_id] = apply_item_event(items.get(event.item_id, ItemState()), event, spec)
        state, changed = apply_trending_update(state, TrendingUpdate.of(event.item_id, item.features, spec), spec), True
    while upcoming is not None:
        lists[upcoming], upcoming = listed(), next(wanted, None)
    return lists


def request_of(
    query: Query, trending: Sequence[tuple[str, float]], k: int, candidates: int, explain: int = 0, covisited: int = 0
) -> RankRequest:
    """The request the service would get at the query's moment, with exclude_seen, and reasons for
    the top `explain`."""
    row = query.row
    return RankRequest(
        row.event.user_id, row.sequence, row.features, row.event.ts, trending, set(query.seen), k, candidates, explain,
        covisited=covisited,
    )  # fmt: skip
