"""Sample rows, labels, the time split and the bootstrap path."""

import numpy as np

from schemas.catalogue import validate_catalogue_item
from schemas.events import EventType
from schemas.features import FeatureSpec, SequenceEntry, UserEvent, UserFeatures
from schemas.model_inputs import Vocabulary
from schemas.samples import SampleRow, sample_rows
from schemas.sources.synthetic import SyntheticWorld, WorldSpec
from training.data import (
    TimeSplit,
    bootstrap_rows,
    encode,
    evaluation_queries,
    labels,
    positive_popularity,
    ranking_rows,
)


def row(event_id, user, item, kind, ts, value=None, request=None, sequence=()):
    entries = tuple(SequenceEntry(f"s{n}", i, EventType(k), t, v) for n, (i, k, t, v) in enumerate(sequence))
    event = UserEvent(event_id, user, item, EventType(kind), value, ts, request, None)
    return SampleRow(event, entries, UserFeatures())


ROWS = [
    row("e1", "u1", "a", "impression", 1, request="r1"),
    row("e2", "u1", "b", "impression", 2, request="r1"),
    row("e3", "u1", "a", "click", 3, request="r1"),
    row("e4", "u2", "c", "rating", 4, value=4.0),
    row("e5", "u2", "d", "rating", 5, value=3.0),
    row("e6", "u2", "e", "purchase", 6, request="r9"),
]


def test_labels_clicked_impressions_good_ratings_and_purchases_are_positive():
    assert labels(ROWS, threshold=3.5).tolist() == [1, 0, 1, 1, 0, 1]


def test_ranking_rows_keep_impressions_and_ratings_and_pair_unexplained_positives_with_a_negative():
    rng = np.random.default_rng(0)
    chosen, chosen_labels = ranking_rows(
        ROWS, labels(ROWS, 3.5), ["a", "b", "c", "d", "e"], positive_popularity(ROWS, labels(ROWS, 3.5)), rng
    )

    kinds = [(r.event.type, r.event.item_id) for r in chosen]
    assert kinds[:4] == [("impression", "a"), ("impression", "b"), ("rating", "c"), ("rating", "d")]
    assert kinds[4] == ("purchase", "e") and chosen[5].event.type == "purchase" and chosen[5].event.event_id == "e6"
    assert chosen_labels.tolist() == [1, 0, 1, 0, 1, 0]  # the click e3 is explained by its impression


def test_time_split_has_no_training_row_at_or_after_the_holdout():
    rows = [row(f"e{n}", "u", "a", "click", n) for n in range(100)]

    split = TimeSplit.of(rows, holdout_fraction=0.2)
    train, validate, test = split.parts(rows)

    assert max(r.event.ts for r in train) < split.validate_from <= min(r.event.ts for r in validate)
    assert max(r.event.ts for r in validate) < split.test_from <= min(r.event.ts for r in test)
    assert len(train) + len(validate) + len(test) == 100 and 8 <= len(validate) <= 12 and 8 <= len(test) <= 12


def test_evaluation_queries_hold_the_next_positives_of_the_user():
    rows = [row(f"e{n}", "u", f"i{n}", "click", n) for n in range(5)] + [
        row("x", "v", "j", "impression", 9, request="q")
    ]

    queries = evaluation_queries(rows, labels(rows, 3.5), future=2, limit=10, rng=np.random.default_rng(0))

    assert [sorted(q.relevant) for q in queries] == [["i0", "i1"], ["i1", "i2"], ["i2", "i3"], ["i3", "i4"], ["i4"]]


def test_bootstrap_rows_are_the_sample_rows_of_the_events_in_time_order():
    events = list(SyntheticWorld(WorldSpec(users=5, items=20, seed=3)).events(300))

    rows = bootstrap_rows(reversed(events), FeatureSpec())

    assert sorted(r.event.event_id for r in rows) == sorted(
        r.event.event_id for r in sample_rows(reversed(events), FeatureSpec())
    )
    assert [r.event.ts for r in rows] == sorted(r.event.ts for r in rows)
    assert all({entry.item_id for entry in r.sequence} <= {e.item_id for e in events} for r in rows)


def test_encode_gives_aligned_arrays():
    catalogue = [validate_catalogue_item({"item_id": i, "title": i, "updated_at": 1_700_000_000_000}) for i in "abcde"]
    vocabulary = Vocabulary.of(catalogue)
    rows = [row("e1", "u", "b", "rating", 3_600_000, value=5.0, sequence=[("a", "rating", 1, 4.0)])]

    examples = encode(rows, np.array([1.0]), vocabulary, length=3)

    assert examples.sequence.tolist() == [[0, 0, 2]] and examples.item.tolist() == [3]
    assert examples.kinds[0, 2] > 0 and examples.hour.tolist() == [1] and examples.user_ids == ["u"]
