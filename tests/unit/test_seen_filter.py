from schemas.redis_format import seen_filter_holds, seen_filter_of
from schemas.runtime.seen_filter import SeenFilterIndex


def test_the_index_finds_the_items_the_filter_holds_as_one_by_one_tests_do():
    vocabulary = [f"v{n}" for n in range(3_000)]
    seen_filter = seen_filter_of([f"v{n}" for n in range(0, 3_000, 7)] + ["not-in-the-vocabulary"])

    held = SeenFilterIndex(vocabulary).held(seen_filter)

    assert set(held) >= {f"v{n}" for n in range(0, 3_000, 7)}
    assert held == [item for item in vocabulary if seen_filter_holds(seen_filter, item)]


def test_a_grown_index_tests_the_new_items_too_and_the_old_index_is_unchanged():
    index = SeenFilterIndex(["a", "b"])
    grown = index.with_items(["c"])

    assert grown.held(seen_filter_of(["b", "c"])) == ["b", "c"]
    assert index.held(seen_filter_of(["b", "c"])) == ["b"]
    assert grown.held(b"") == []
