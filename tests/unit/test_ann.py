"""The Faiss item index behind index()/search()."""

import numpy as np
import pytest

from schemas.runtime.ann import ItemIndex


def normalised(rng, rows: int, dimension: int = 8) -> np.ndarray:
    vectors = rng.normal(size=(rows, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_exact_index_returns_the_brute_force_top_k_with_ids_and_scores(tmp_path):
    rng = np.random.default_rng(1)
    items, queries = normalised(rng, 200), normalised(rng, 5)
    ids = [f"i{n}" for n in range(200)]

    index = ItemIndex(exact_max_items=1000).index(items, ids)
    scores, found = index.search(queries, 10)

    expected = np.argsort(-(queries @ items.T), axis=1)[:, :10]
    assert index.kind == "exact"
    assert found.tolist() == [[ids[n] for n in row] for row in expected]
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ items.T, expected, axis=1), rtol=1e-5)

    index.save(tmp_path / "items.faiss", tmp_path / "ids.json")
    loaded = ItemIndex.load(tmp_path / "items.faiss", tmp_path / "ids.json", 1000)
    assert loaded.search(queries, 10)[1].tolist() == found.tolist()


def test_large_catalogues_get_hnsw_with_high_recall():
    rng = np.random.default_rng(2)
    items, queries = normalised(rng, 3000), normalised(rng, 50)

    index = ItemIndex(exact_max_items=1000).index(items, [str(n) for n in range(3000)])
    _, found = index.search(queries, 20)

    exact = np.argsort(-(queries @ items.T), axis=1)[:, :20]
    recall = np.mean([len({str(n) for n in row} & set(hits)) / 20 for row, hits in zip(exact, found, strict=True)])
    assert index.kind == "hnsw" and recall > 0.9


def test_fewer_items_than_k_leaves_empty_places():
    index = ItemIndex(10).index(np.eye(2, dtype=np.float32), ["a", "b"])

    scores, found = index.search(np.array([[1.0, 0.0]], np.float32), 3)

    assert found.tolist() == [["a", "b", None]] and scores[0, 2] == -np.inf


def test_embeddings_and_ids_must_match():
    with pytest.raises(ValueError, match="3 embeddings for 2 ids"):
        ItemIndex(10).index(np.zeros((3, 2), np.float32), ["a", "b"])


@pytest.mark.parametrize("items", [300, 3000], ids=["exact", "hnsw"])
def test_excluded_items_are_left_out_and_the_next_best_take_their_places(items):
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(items, 8)).astype(np.float32)
    ids = [f"i{n}" for n in range(items)]
    index = ItemIndex(exact_max_items=1000).index(embeddings, ids)
    queries = rng.normal(size=(2, 8)).astype(np.float32)
    best = np.argsort(-(queries @ embeddings.T), axis=1)
    excluded = [{ids[n] for n in best[0, :5]} | {"not-in-the-catalogue"}, set()]

    _, found = index.search(queries, 10, excluded)

    assert found[0].tolist() == [ids[n] for n in best[0, 5:15]]  # brute force without the excluded five
    assert found[1].tolist() == [ids[n] for n in best[1, :10]]


@pytest.mark.parametrize("exact_max_items", [1000, 100], ids=["exact", "hnsw"])
def test_items_added_are_found_by_search_and_the_index_they_were_added_to_is_unchanged(exact_max_items, tmp_path):
    rng = np.random.default_rng(3)
    items, added, queries = normalised(rng, 300), normalised(rng, 4), normalised(rng, 6)
    index = ItemIndex(exact_max_items).index(items, [f"i{n}" for n in range(300)])
    before = index.search(queries, 5)[1].tolist()

    grown = index.with_items(added, ["new-0", "new-1", "new-2", "new-3"])

    assert grown.kind == index.kind and len(grown) == 304 and len(index) == 300
    assert grown.search(added, 1)[1][:, 0].tolist() == ["new-0", "new-1", "new-2", "new-3"]
    assert grown.search(added, 1, [{"new-0"}, (), (), ()])[1][0, 0] != "new-0"
    assert index.search(queries, 5)[1].tolist() == before
    with pytest.raises(ValueError, match="4 embeddings for 3 ids"):
        index.with_items(added, ["a", "b", "c"])
    grown.save(tmp_path / "items.faiss", tmp_path / "ids.json")
    loaded = ItemIndex.load(tmp_path / "items.faiss", tmp_path / "ids.json", exact_max_items)
    assert loaded.search(queries, 10)[1].tolist() == grown.search(queries, 10)[1].tolist() and len(loaded) == 304


@pytest.mark.parametrize("exact_max_items", [1000, 100], ids=["exact", "hnsw"])
def test_items_given_new_vectors_are_found_by_them_and_the_index_they_changed_in_is_unchanged(exact_max_items):
    rng = np.random.default_rng(5)
    items, queries = normalised(rng, 300), normalised(rng, 3)
    index = ItemIndex(exact_max_items).index(items, [f"i{n}" for n in range(300)])
    before = index.search(queries, 5)[1].tolist()

    changed = index.with_vectors(queries[:2], ["i7", "i8"])  # i7 and i8 now point where the first queries do

    assert changed.kind == index.kind and len(changed) == 300 and "i7" in changed and "new" not in changed
    assert changed.search(queries[:2], 1)[1][:, 0].tolist() == ["i7", "i8"]
    assert index.search(queries, 5)[1].tolist() == before
