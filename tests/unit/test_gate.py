"""The gate's rule: a new model may trail the bar by the margin on each gated metric, not more."""

from hypothesis import given
from hypothesis import strategies as st

from training.gate import GATED, shortfalls

scores = st.floats(0.0, 1.0, allow_nan=False)
margins = st.floats(0.0, 0.1, allow_nan=False)


def test_hand_computed_cases():
    bar = {"ndcg@10": 0.10, "pool_auc": 0.70}

    assert shortfalls({"ndcg@10": 0.09, "pool_auc": 0.70}, bar, 0.01) == []  # trails by exactly the margin
    assert shortfalls({"ndcg@10": 0.0899, "pool_auc": 0.70}, bar, 0.01) == ["ndcg@10"]
    assert shortfalls({"ndcg@10": 0.20, "pool_auc": 0.68}, bar, 0.01) == ["pool_auc"]
    assert shortfalls({"ndcg@10": 0.05, "pool_auc": 0.5}, bar, 0.0) == ["ndcg@10", "pool_auc"]
    assert shortfalls({"ndcg@10": 0.05, "pool_auc": 0.5}, {"ndcg@10": 0.06}, 0.01) == []  # only the bar's metrics


@given(st.fixed_dictionaries({name: scores for name in GATED}), st.fixed_dictionaries({name: scores for name in GATED}),
       margins)  # fmt: skip
def test_a_metric_is_short_exactly_when_it_trails_by_more_than_the_margin(new, bar, margin):
    short = shortfalls(new, bar, margin)

    for name in GATED:
        if bar[name] - new[name] <= margin:
            assert name not in short
        elif bar[name] - new[name] > margin + 1e-6:
            assert name in short


@given(scores, margins, st.sampled_from(sorted(GATED)))
def test_at_the_boundary_a_model_passes_and_just_below_it_is_refused(bar_value, margin, name):
    bar = dict.fromkeys(GATED, 0.5) | {name: bar_value}
    at_margin = dict(bar) | {name: bar_value - margin}
    below = dict(bar) | {name: bar_value - margin - 1e-6}

    assert shortfalls(at_margin, bar, margin) == []
    assert shortfalls(below, bar, margin) == [name]
