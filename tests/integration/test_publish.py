"""`kingfisher publish` against the real broker: exactly what was sent can be read back."""

import re

import pytest

from schemas.catalogue import parse_catalogue_item
from schemas.events import parse_event
from schemas.runtime.sources import movielens, synthetic
from tests.conftest import Stack, consume_all
from tests.movielens_files import write_csv_layout

ML_LATEST_SMALL_RATINGS, ML_LATEST_SMALL_MOVIES = 100_836, 9_742


@pytest.fixture(scope="module")
def movielens_dir(tmp_path_factory):
    """ml-latest-small from ../shared/datasets when present; else a small dataset in the same layout."""
    if movielens.SHARED_DATASET.is_dir():
        return movielens.SHARED_DATASET
    rows = [
        f"{u},{m},{(u + m) % 10 / 2 + 0.5},{1_000_000_000 + u * 100 + m}" for u in range(1, 60) for m in range(1, 30)
    ]
    movies = [f"{m},Movie {m} ({1990 + m}),Drama|Comedy" for m in range(1, 30)]
    return write_csv_layout(tmp_path_factory.mktemp("ml-fallback"), rows, movies)


def published_count(output: str) -> int:
    return int(re.search(r"published ([\d,]+) of", output)[1].replace(",", ""))


def test_movielens_ratings_are_published_and_read_back_exactly(stack: Stack, new_topic: str, movielens_dir):
    expected = list(movielens.rating_events(movielens_dir, movielens.LoadReport()))

    result = stack.kingfisher("publish", "events", "movielens", "--path", str(movielens_dir), "--topic", new_topic,
                              "--no-progress")  # fmt: skip
    received = consume_all(stack, new_topic, expected=len(expected))

    assert result.returncode == 0, result.stderr
    assert published_count(result.stderr) == len(expected) == len(received)
    assert {parse_event(m.value()).event_id for m in received} == {e.event_id for e in expected}
    assert all(m.key() == parse_event(m.value()).user_id.encode() for m in received)
    if movielens_dir == movielens.SHARED_DATASET:
        assert len(received) == ML_LATEST_SMALL_RATINGS
        assert "ratings.csv:100838: movie 999999 is not listed" in " ".join(result.stderr.split())


def test_the_movielens_catalogue_is_published_keyed_by_item(stack: Stack, new_topic: str, movielens_dir):
    result = stack.kingfisher("publish", "catalogue", "movielens", "--path", str(movielens_dir), "--topic", new_topic,
                              "--no-progress")  # fmt: skip
    expected = published_count(result.stderr)
    items = [(m.key(), parse_catalogue_item(m.value())) for m in consume_all(stack, new_topic, expected=expected)]

    assert result.returncode == 0, result.stderr
    assert len(items) == expected
    assert all(key == item.item_id.encode() for key, item in items)
    if movielens_dir == movielens.SHARED_DATASET:
        assert expected == ML_LATEST_SMALL_MOVIES


def test_a_synthetic_stream_is_published_and_read_back_exactly(stack: Stack, new_topic: str):
    result = stack.kingfisher("publish", "events", "synthetic", "--limit", "20000", "--seed", "5", "--topic", new_topic,
                              "--no-progress")  # fmt: skip
    received = [parse_event(m.value()) for m in consume_all(stack, new_topic, expected=20_000)]
    expected = list(synthetic.SyntheticWorld(synthetic.WorldSpec(seed=5)).events(20_000))

    assert result.returncode == 0, result.stderr
    assert published_count(result.stderr) == len(received) == 20_000
    assert sorted(received, key=lambda e: e.event_id) == sorted(expected, key=lambda e: e.event_id)


def test_a_paced_publish_keeps_original_event_times(stack: Stack, new_topic: str):
    result = stack.kingfisher("publish", "events", "synthetic", "--limit", "300", "--speedup", "100000",
                              "--topic", new_topic, "--no-progress")  # fmt: skip
    received = [parse_event(m.value()) for m in consume_all(stack, new_topic, expected=300)]

    assert result.returncode == 0, result.stderr
    assert sorted(e.ts for e in received) == [e.ts for e in synthetic.SyntheticWorld(synthetic.WorldSpec()).events(300)]


def test_publishing_to_a_missing_dataset_fails_with_the_remedy(stack: Stack, tmp_path):
    result = stack.kingfisher("publish", "events", "movielens", "--path", str(tmp_path / "nope"), "--no-progress")

    assert result.returncode == 2
    assert "set KF_MOVIELENS_PATH or pass --path" in " ".join(result.stderr.split())
