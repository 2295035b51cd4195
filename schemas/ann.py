"""The retrieval index: item embeddings in Faiss, searched by inner product.

Training builds and saves it into the model bundle; serving loads and searches it.
"""

from collections.abc import Collection, Sequence
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import orjson

HNSW_NEIGHBOURS = 32
HNSW_SEARCH_DEPTH = 128


class ItemIndex:
    """Exact (flat) inner-product search up to `exact_max_items` items, HNSW above."""

    def __init__(self, exact_max_items: int):
        self.exact_max_items = exact_max_items
        self._index: faiss.Index | None = None
        self._ids = np.empty(0, dtype=object)

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self._index, faiss.IndexHNSWFlat) else "exact"

    def __len__(self) -> int:
        return len(self._ids)

    def index(self, embeddings: np.ndarray, ids: list[str]) -> "ItemIndex":
        """embeddings: [N, d] float32, ids: N item ids (row i is item ids[i])."""
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} embeddings for {len(ids)} ids")
        dimension = vectors.shape[1]
        if len(ids) <= self.exact_max_items:
            self._index = faiss.IndexFlatIP(dimension)
        else:
            self._index = faiss.IndexHNSWFlat(dimension, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            self._index.hnsw.efSearch = HNSW_SEARCH_DEPTH
        self._index.add(vectors)
        self._ids = np.array(ids, dtype=object)
        return self

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries: [B, d] float32 -> (scores [B, k] float32, ids [B, k] object), best first; row b
        leaves out the items of exclude[b] (inside Faiss, so a user who has seen thousands of items
        costs no deeper search). Fewer than k items: the missing places have score -inf and id None."""
        if self._index is None:
            raise RuntimeError("search before index")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores, rows = self._index.search(queries, k)
        for row, excluded in enumerate(exclude or ()):
            if positions := [self._rows[item] for item in excluded if item in self._rows]:
                # Faiss's selectors and parameters hold plain pointers to each other: all three stay
                # referenced here until the search has returned.
                chosen = faiss.IDSelectorBatch(np.array(positions, dtype=np.int64))
                others = faiss.IDSelectorNot(chosen)
                parameters = self._parameters(others)
                found_scores, found_rows = self._index.search(queries[row : row + 1], k, params=parameters)
                scores[row], rows[row] = found_scores[0], found_rows[0]
        ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], None)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), ids

    def _parameters(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        if isinstance(self._index, faiss.IndexHNSWFlat):
            return faiss.SearchParametersHNSW(sel=selector, efSearch=HNSW_SEARCH_DEPTH)
        return faiss.SearchParameters(sel=selector)

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self._ids)}

    def save(self, index_path: Path, ids_path: Path) -> None:
        faiss.write_index(self._index, str(index_path))
        ids_path.write_bytes(orjson.dumps(self._ids.tolist()))

    @classmethod
    def load(cls, index_path: Path, ids_path: Path, exact_max_items: int) -> "ItemIndex":
        loaded = cls(exact_max_items)
        loaded._index = faiss.read_index(str(index_path))
        loaded._ids = np.array(orjson.loads(ids_path.read_bytes()), dtype=object)
        return loaded
