"""Training data: sample rows (from the stream's log, or from a dataset through the same feature
functions), labels, the time split, and the model-input arrays.

A row is a `schemas.samples.SampleRow`: the event, and the user's sequence and features just before
it (point in time). Everything here is ordered by event time.
"""

import gc
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas import sample_log
from schemas.catalogue import CatalogueItem
from schemas.events import Event, EventType
from schemas.features import FeatureSpec
from schemas.model_inputs import Behaviour, Vocabulary, hour_of_day, sequence_arrays, user_feature_matrix
from schemas.samples import SampleRow, sample_rows

log = logging.getLogger("kingfisher.training")
Row = SampleRow
POSITIVE_TYPES = frozenset({EventType.CLICK, EventType.PURCHASE})
NEGATIVE_SAMPLING_EXPONENT = 0.75
"""Sampled negatives follow popularity ** 0.75 (word2vec's choice): popular enough to be hard, not only the head."""


def read_sample_log(directory: Path, window_days: int, max_rows: int) -> list[Row]:
    """The rows of the sample log's newest `window_days` days, at most the newest `max_rows`."""
    gc.disable()  # a fold allocates millions of objects that all stay alive: collections only slow it
    try:
        rows, report, files = sample_log.read_window(directory, window_days)
    finally:
        gc.enable()
    log.info("read %d sample rows from %d files of the newest %d days under %s (%s)",
             len(rows), files, window_days, directory, report)  # fmt: skip
    if report.gaps or report.mismatched_snapshots:
        log.warning("the sample log is not whole: %d lines missing, %d snapshots differ from the fold",
                    report.gaps, report.mismatched_snapshots)  # fmt: skip
    return in_time_order(rows)[-max_rows:]


def bootstrap_rows(events: Iterable[Event], spec: FeatureSpec) -> list[Row]:
    """The rows the stream's log holds for `events`: the bootstrap path from a dataset."""
    return in_time_order(sample_rows(events, spec))


def in_time_order(rows: Iterable[Row]) -> list[Row]:
    """By event time, then event_id: the one order of rows whichever path they came by."""
    return sorted(rows, key=lambda row: row.order)


def labels(rows: list[Row], threshold: float) -> np.ndarray:
    """[N] float32: a rating >= threshold, a click or a purchase is 1; an impression is 1 only if a
    click with the same request_id and item_id was logged; anything else is 0."""
    clicked = {(row.event.request_id, row.event.item_id) for row in rows if row.event.type is EventType.CLICK}
    values = np.zeros(len(rows), dtype=np.float32)
    for n, row in enumerate(rows):
        kind = row.event.type
        if kind is EventType.RATING:
            values[n] = row.event.value >= threshold
        elif kind is EventType.IMPRESSION:
            values[n] = (row.event.request_id, row.event.item_id) in clicked
        else:
            values[n] = kind in POSITIVE_TYPES
    return values


@dataclass(frozen=True)
class TimeSplit:
    """Train before `validate_from`; validate until `test_from`; test after."""

    validate_from: int
    test_from: int

    @classmethod
    def of(cls, rows: list[Row], holdout_fraction: float) -> "TimeSplit":
        ts = np.array([row.event.ts for row in rows], dtype=np.int64)
        validate_from, test_from = np.quantile(ts, [1 - holdout_fraction, 1 - holdout_fraction / 2])
        return cls(int(validate_from), int(test_from))

    def parts(self, rows: list[Row]) -> tuple[list[Row], list[Row], list[Row]]:
        train = [row for row in rows if row.event.ts < self.validate_from]
        validate = [row for row in rows if self.validate_from <= row.event.ts < self.test_from]
        test = [row for row in rows if row.event.ts >= self.test_from]
        return train, validate, test


@dataclass
class Examples:
    """Model-input arrays: sequence and kinds [N, L] int32, user_features [N, F] float32, hour [N] int32,
    item [N] int32, label [N] float32, and the user of each row (for GAUC)."""

    sequence: np.ndarray
    kinds: np.ndarray
    user_features: np.ndarray
    hour: np.ndarray
    item: np.ndarray
    label: np.ndarray
    user_ids: list[str]

    def __len__(self) -> int:
        return len(self.item)

    def inputs(self, rows: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
        return {
            "sequence": self.sequence[rows],
            "kinds": self.kinds[rows],
            "user_features": self.user_features[rows],
            "hour": self.hour[rows],
            "item": self.item[rows],
        }

    def batches(self, size: int, rng: np.random.Generator) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Shuffled batches of whole size (a short last batch would skew the in-batch softmax)."""
        order = rng.permutation(len(self))
        for start in range(0, len(order) - size + 1, size):
            chosen = order[start : start + size]
            yield self.inputs(chosen), self.label[chosen]


def sequence_item_ids(row: Row) -> list[str]:
    return [entry.item_id for entry in row.sequence]


def behaviours(row: Row) -> list[Behaviour]:
    """A sample row's sequence entries as model behaviours."""
    return [(entry.item_id, entry.type, entry.value) for entry in row.sequence]


def encode(rows: list[Row], row_labels: np.ndarray, vocabulary: Vocabulary, length: int) -> Examples:
    sequence, kinds = sequence_arrays(vocabulary, [behaviours(row) for row in rows], length)
    return Examples(
        sequence=sequence,
        kinds=kinds,
        user_features=user_feature_matrix([row.features for row in rows]),
        hour=hour_of_day(row.event.ts for row in rows),
        item=vocabulary.item_indices(row.event.item_id for row in rows),
        label=row_labels.astype(np.float32),
        user_ids=[row.event.user_id for row in rows],
    )


def ranking_rows(
    rows: list[Row], row_labels: np.ndarray, catalogue_ids: list[str], popularity: Counter, rng: np.random.Generator
) -> tuple[list[Row], np.ndarray]:
    """Rows a ranker learns from: impressions (labelled by clicks) and ratings carry both labels;
    a click or purchase that no logged impression explains is a positive, paired with one negative
    item sampled by popularity ** 0.75 at the same moment."""
    shown = {(row.event.request_id, row.event.item_id) for row in rows if row.event.type is EventType.IMPRESSION}
    chosen, chosen_labels, unexplained = [], [], []
    for row, label in zip(rows, row_labels, strict=True):
        if row.event.type in (EventType.IMPRESSION, EventType.RATING):
            chosen.append(row)
            chosen_labels.append(label)
        elif (row.event.request_id, row.event.item_id) not in shown:
            unexplained.append(row)
    negatives = sample_items(catalogue_ids, popularity, len(unexplained), rng)
    for row, negative in zip(unexplained, negatives, strict=True):
        chosen += [row, row._replace(event=row.event._replace(item_id=negative))]
        chosen_labels += [1.0, 0.0]
    return chosen, np.array(chosen_labels, dtype=np.float32)


def sample_items(catalogue_ids: list[str], popularity: Counter, count: int, rng: np.random.Generator) -> list[str]:
    weights = np.array([popularity.get(item_id, 0) + 1.0 for item_id in catalogue_ids]) ** NEGATIVE_SAMPLING_EXPONENT
    return [catalogue_ids[n] for n in rng.choice(len(catalogue_ids), size=count, p=weights / weights.sum())]


def positive_popularity(rows: list[Row], row_labels: np.ndarray) -> Counter:
    return Counter(row.event.item_id for row, label in zip(rows, row_labels, strict=True) if label > 0)


@dataclass(frozen=True)
class Query:
    """One moment of the pipeline evaluation: a user's point-in-time state and the positives that follow."""

    row: Row
    relevant: frozenset[str]


def evaluation_queries(
    test_rows: list[Row], test_labels: np.ndarray, future: int, limit: int, rng: np.random.Generator
) -> list[Query]:
    """At each positive test event: the user's state just before it, and that item with the user's
    next `future` - 1 positives (what a list shown then could have caught). At most `limit`, sampled."""
    positives_by_user: dict[str, list[Row]] = defaultdict(list)
    for row, label in zip(test_rows, test_labels, strict=True):
        if label > 0:
            positives_by_user[row.event.user_id].append(row)
    queries = [
        Query(row, frozenset(later.event.item_id for later in rows[n : n + future]))
        for rows in positives_by_user.values()
        for n, row in enumerate(rows)
    ]
    if len(queries) > limit:
        queries = [queries[n] for n in sorted(rng.choice(len(queries), size=limit, replace=False))]
    return queries


def catalogue_by_id(items: Iterable[CatalogueItem]) -> dict[str, CatalogueItem]:
    return {item.item_id: item for item in items}
