"""Sample rows, the splits and their queries, next-item windows, trending at a moment, and the
training counts with each user's own interactions left out."""

import numpy as np

from schemas.catalogue import validate_catalogue_item
from schemas.events import EventType
from schemas.features import FeatureSpec, SequenceEntry, UserEvent, UserFeatures
from schemas.runtime.model_inputs import FIRST_ITEM, Vocabulary
from schemas.runtime.samples import SampleRow, sample_rows
from schemas.runtime.sources.synthetic import SyntheticWorld, WorldSpec
from training.counts import TrainingCounts
from training.data import (
    Histories,
    bootstrap_rows,
    fresh_split,
    last_n_split,
    time_split,
    trending_before,
    windows,
)
from training.evaluate import CoOccurrence, Ease, intervals
from training.previous import labels, like_rows

VOCABULARY = Vocabulary.of(
    validate_catalogue_item({"item_id": i, "title": i, "updated_at": 1_700_000_000_000}) for i in "abcdefghij"
)


def row(event_id, user, item, kind, ts, value=None, request=None, sequence=()):
    entries = tuple(SequenceEntry(f"s{n}", i, EventType(k), t, v) for n, (i, k, t, v) in enumerate(sequence))
    event = UserEvent(event_id, user, item, EventType(kind), value, ts, request, None)
    return SampleRow(event, entries, UserFeatures())


def history(user: str, items: str, start: int = 0, step: int = 1) -> list[SampleRow]:
    """A user clicking `items` in turn, each row with the point-in-time sequence before it."""
    rows, sequence = [], []
    for n, item in enumerate(items):
        ts = start + n * step
        rows.append(row(f"{user}{n}", user, item, "click", ts, sequence=list(sequence)))
        sequence.append((item, "click", ts, None))
    return rows


def test_a_query_excludes_what_was_seen_and_expects_the_next_unseen_items():
    rows = history("u", "abacd")  # a again at the third click

    queries = Histories(rows).queries("u", future=2)

    assert [sorted(q.relevant) for q in queries] == [["a", "b"], ["b", "c"], ["c", "d"], ["c", "d"], ["d"]]
    assert [sorted(q.seen) for q in queries] == [[], ["a"], ["a", "b"], ["a", "b"], ["a", "b", "c"]]


def test_the_time_split_trains_before_its_holdout_and_keeps_each_halfs_answers_inside_it():
    rows = sorted(history("u", "abcdefghij") + history("v", "jihgfedcba", start=1), key=lambda r: r.order)

    split = time_split(rows, holdout_fraction=0.4, future=3, limit=100, seed=0)

    validate_from, test_from = min(q.row.event.ts for q in split.validation), min(q.row.event.ts for q in split.test)
    assert max(r.event.ts for r in split.train) < validate_from < test_from
    assert all(q.row.event.ts < test_from for q in split.validation)
    times = {(r.event.user_id, r.event.item_id): r.event.ts for r in rows}
    assert all(times[q.user_id, item] < test_from for q in split.validation for item in q.relevant)


def test_the_fresh_split_trains_on_all_rows_before_the_newest_part_of_those_after_since():
    rows = sorted(history("u", "abcdefghij") + history("v", "jihgfedcba", start=1), key=lambda r: r.order)

    # After ts 5 (not at it): u's g..j at 6..9 and v's e..a at 6..10, nine times [6 6 7 7 8 8 9 9 10];
    # their 0.75 quantile is the 7th, 9: rows from ts 9 on are held out.
    split = fresh_split(rows, since=5, holdout_fraction=0.25, future=3, limit=100, seed=0)

    assert [r.event.ts for r in split.train] == sorted([*range(0, 9), *range(1, 9)])
    assert sorted((q.user_id, q.row.event.item_id) for q in split.validation) == [("u", "j"), ("v", "a"), ("v", "b")]
    assert [sorted(q.seen) for q in split.validation if q.user_id == "u"] == [list("abcdefghi")]
    assert split.test == [] and fresh_split(rows, since=10, holdout_fraction=0.5, future=3, limit=9, seed=0).train == []


def test_the_last_n_split_holds_out_each_users_newest_n_and_the_n_before_for_validation():
    rows = history("u", "abcdefghij") + history("short", "abc")

    split = last_n_split(rows, 3)

    [validation], [test] = split.validation, split.test
    assert (validation.relevant, test.relevant) == (frozenset("efg"), frozenset("hij"))
    assert {r.event.item_id for r in split.train if r.event.user_id == "u"} == set("abcd")
    assert test.seen == frozenset("abcdefg")  # the validation items were there before the test's moment
    assert sum(r.event.user_id == "short" for r in split.train) == 3  # too short to hold out: all trains


def test_windows_predict_the_next_item_at_every_position_and_the_rows_own_item_last():
    rows = history("u", "abcd", step=1000)

    built = windows(rows, VOCABULARY, length=3)

    index = dict(zip("abcd", VOCABULARY.item_indices("abcd"), strict=True))
    assert len(built) == 1  # a window at the newest row and each `length` rows before, if it has a sequence
    assert built.items[0].tolist() == [index["a"], index["b"], index["c"]]
    assert built.targets[0].tolist() == [index["b"], index["c"], index["d"]]
    assert built.ages[0].tolist() == [3.0, 2.0, 1.0]  # seconds before the row's event


def test_a_repeat_of_the_same_item_is_no_target():
    rows = history("u", "aab")

    built = windows(rows, VOCABULARY, length=2)

    assert built.targets[0, 0] == 0 and built.targets[0, 1] == VOCABULARY.item_indices(["b"])[0]


def test_trending_at_a_moment_counts_only_earlier_events():
    rows = [row("x", "u", "a", "click", 1), row("y", "v", "b", "click", 2), row("z", "w", "b", "click", 3)]

    trending = trending_before(rows, rows, FeatureSpec(), size=5)

    assert trending[rows[0].order] == ()
    assert [item for item, _ in trending[rows[1].order]] == ["a"]
    assert [item for item, _ in trending[rows[2].order]] == ["b", "a"]  # one event each: the newer is more popular


def test_training_counts_at_a_moment_count_only_what_came_before_it():
    rows = history("u", "ab", start=0) + history("v", "ab", start=10) + history("w", "ac", start=20)
    counts = TrainingCounts.of(rows, VOCABULARY)
    a, b, c = VOCABULARY.item_indices("abc")
    behaviours, candidates = np.array([[0, a]] * 3), np.array([[b, c]] * 3)
    moments = np.array([1, 11, 100])  # at u's b (its own a -> b not yet done), at v's b, after all

    assert counts.covisitation.pair_counts(behaviours[:1], candidates[:1])[0, :, 1].tolist() == [2, 1]
    assert counts.pair_counts(moments, behaviours, candidates)[:, :, 1].tolist() == [[0, 0], [1, 0], [2, 1]]
    assert counts.pair_counts(moments, behaviours, candidates)[:, :, 0].tolist() == [[0, 0]] * 3  # padding
    assert counts.popularity[[a, b, c]].tolist() == [3, 2, 1] and counts.popularity[:FIRST_ITEM].tolist() == [0, 0]
    assert counts.interactions(moments, candidates).tolist() == [[0, 0], [1, 0], [2, 1]]


def test_the_previous_designs_labels_and_like_rows():
    rows = [
        row("e1", "u1", "a", "impression", 1, request="r1"),
        row("e2", "u1", "b", "impression", 2, request="r1"),
        row("e3", "u1", "a", "click", 3, request="r1"),
        row("e4", "u2", "c", "rating", 4, value=4.0),
        row("e5", "u2", "d", "rating", 5, value=3.0),
        row("e6", "u2", "e", "purchase", 6, request="r9"),
    ]

    assert labels(rows, threshold=3.5).tolist() == [1, 0, 1, 1, 0, 1]
    chosen, chosen_labels = like_rows(rows, labels(rows, 3.5), list("abcde"), np.random.default_rng(0))
    assert [(r.event.type, r.event.item_id) for r in chosen[:5]] == [
        ("impression", "a"), ("impression", "b"), ("rating", "c"), ("rating", "d"), ("purchase", "e"),
    ]  # fmt: skip
    assert chosen_labels.tolist() == [1, 0, 1, 0, 1, 0]  # the click e3 is explained by its impression


def test_bootstrap_rows_are_the_sample_rows_of_the_events_in_time_order():
    events = list(SyntheticWorld(WorldSpec(users=5, items=20, seed=3)).events(300))

    rows = bootstrap_rows(reversed(events), FeatureSpec())

    assert sorted(r.event.event_id for r in rows) == sorted(
        r.event.event_id for r in sample_rows(reversed(events), FeatureSpec())
    )
    assert [r.event.ts for r in rows] == sorted(r.event.ts for r in rows)


def test_ease_weights_are_the_hand_computed_closed_form():
    train = history("u1", "ab") + history("u2", "a")
    popularity = np.zeros(VOCABULARY.size)
    popularity[VOCABULARY.item_indices("ab")] = [2, 1]
    # X = [[1, 1], [1, 0]] over (a, b): XᵀX + I = [[3, 1], [1, 2]], P = [[2, -1], [-1, 3]] / 5 and
    # B_ij = -P_ij / P_jj: b from a 1/3, a from b 1/2.
    ease = Ease(train, VOCABULARY, popularity).fit(1.0)

    np.testing.assert_allclose(ease.weights, [[0.0, 1 / 3], [1 / 2, 0.0]], rtol=1e-6)


def test_tuned_ease_keeps_the_weights_of_the_lambda_its_score_prefers():
    train = history("u1", "abc") + history("u2", "ab") + history("u3", "ca")
    popularity = np.zeros(VOCABULARY.size)
    popularity[VOCABULARY.item_indices("abc")] = [3, 2, 2]

    tuned = Ease(train, VOCABULARY, popularity).tune([1.0, 10.0, 100.0], lambda model: -abs(model.regularisation - 10))

    assert tuned.regularisation == 10.0
    np.testing.assert_allclose(tuned.weights, Ease(train, VOCABULARY, popularity).fit(10.0).weights)


def test_co_occurrence_plain_and_weighted_rank_as_computed_by_hand():
    train = [row for n in range(3) for row in history(f"a{n}", "eh")] + [
        row for n in range(2) for row in history(f"b{n}", "fi")
    ]
    popularity = np.zeros(VOCABULARY.size)
    popularity[VOCABULARY.item_indices("ehfi")] = [3, 5, 2, 2]
    query = Histories(history("u", "efg")).queries("u", future=1)[2]  # behaviours e, then f (the newest)
    cooccurrence = CoOccurrence(train, VOCABULARY, popularity)

    # Sums of what followed e and f: h 3 (after e), i 2 (after f); nothing else followed them.
    assert cooccurrence.lists([query], 2) == [["h", "i"]]
    # e one step older at decay 0.5: h 1.5, i 2.
    assert cooccurrence.weighted(20, 0.5, 0.0).lists([query], 2) == [["i", "h"]]
    # Divided by sqrt(popularity + 1): h 3 / sqrt(6) = 1.22, i 2 / sqrt(3) = 1.15 (by popularity + 1,
    # i would lead: 0.5 against 0.67); with the decay too, h 0.61.
    assert cooccurrence.weighted(20, 1.0, 0.5).lists([query], 2) == [["h", "i"]]
    assert cooccurrence.weighted(20, 0.5, 0.5).lists([query], 2) == [["i", "h"]]


def test_intervals_draw_each_user_with_all_of_their_queries_and_pair_the_served_list_with_each():
    # u asks three times (relevant: a; b; c), v once (relevant: x). The served lists catch every
    # relevant item first (NDCG@10 1.0); the other catches only v's. Per user, served minus other is
    # 1 for u and 0 for v: a resample of users means 1 (u twice), 0.75 (u and v: three queries of
    # four) or 0 (v twice), so the paired interval is [0, 1], where queries drawn one by one would
    # give about [0.25, 1].
    queries = Histories(history("u", "abcd") + history("v", "xy")).queries("u", future=1)[:3]
    queries += Histories(history("v", "xy")).queries("v", future=1)[:1]
    served = [[*sorted(q.relevant)] for q in queries]
    other = [["z"], ["z"], ["z"], ["x"]]

    found = intervals({"served": served, "other": other}, queries, "served")

    assert [sorted(q.relevant) for q in queries] == [["a"], ["b"], ["c"], ["x"]]
    assert found["served"] == {"ndcg@10": [1.0, 1.0], "hitrate@10": [1.0, 1.0]}
    assert found["other"]["minus_ndcg@10"] == [0.0, 1.0] and found["other"]["minus_hitrate@10"] == [0.0, 1.0]
    assert found["other"]["ndcg@10"] == [0.0, 1.0]
