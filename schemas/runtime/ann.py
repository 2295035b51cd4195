"""The retrieval index: item embeddings in Faiss, searched by inner product.

Training builds and saves it into the model bundle; serving loads and searches it.
"""

from collections.abc import Collection, Sequence
from functools import cached_property
from itertools import repeat
from pathlib import Path

import faiss
import numpy as np
import orjson

from schemas.runtime.growing import appended
from schemas.runtime.top_k import top_k

HNSW_NEIGHBOURS = 32
HNSW_SEARCH_DEPTH = 128


class ItemIndex:
    """Exact (flat) inner-product search up to `exact_max_items` items, HNSW above."""

    def __init__(self, exact_max_items: int):
        self.exact_max_items = exact_max_items
        self._index: faiss.Index | None = None
        self._ids = np.empty(0, dtype=object)
        self._vectors = np.empty((0, 0), np.float32)
        """[N, d] float32 of an exact index: row i is item ids[i]'s vector."""

    @property
    def kind(self) -> str:
        return "hnsw" if isinstance(self._index, faiss.IndexHNSWFlat) else "exact"

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._rows

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
        self._vectors = vectors
        self.__dict__.pop("_rows", None)
        return self

    def with_items(self, embeddings: np.ndarray, ids: list[str]) -> "ItemIndex":
        """A copy that also holds `ids` (embeddings [N, d], row i is item ids[i]); this index is
        unchanged, so searches in flight on it go on. The kind stays: an exact index grows its
        vectors in place (`schemas.runtime.growing`), an HNSW one is cloned and added to."""
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(vectors) != len(ids):
            raise ValueError(f"{len(vectors)} embeddings for {len(ids)} ids")
        grown = ItemIndex(self.exact_max_items)
        if self.kind == "exact":  # searched in NumPy: the Faiss index is only what `save` writes
            grown._index, grown._vectors = self._index, appended(self._vectors, vectors)
        else:
            grown._index, grown._vectors = faiss.clone_index(self._index), self._vectors
            grown._index.add(vectors)
        grown._ids = appended(self._ids, np.array(ids, dtype=object))
        # its row lookup from this one's, now rather than in the first search to need it
        grown.__dict__["_rows"] = self._rows | dict(zip(ids, range(len(self), len(grown)), strict=True))
        return grown

    def with_vectors(self, embeddings: np.ndarray, ids: list[str]) -> "ItemIndex":
        """A copy in which the held items `ids` have new vectors (embeddings [N, d], row i is item
        ids[i]); this index is unchanged. HNSW cannot move a vector: it is built again."""
        vectors = self._vectors.copy() if self.kind == "exact" else self._index.reconstruct_n(0, self._index.ntotal)
        vectors[[self._rows[item_id] for item_id in ids]] = embeddings
        changed = ItemIndex(self.exact_max_items)
        if self.kind == "exact":  # searched in NumPy, as in `with_items`
            changed._index, changed._vectors, changed._ids = self._index, vectors, self._ids
            changed.__dict__["_rows"] = self._rows
            return changed
        return changed.index(vectors, list(self._ids))

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """queries: [B, d] float32 -> (scores [B, k] float32, ids [B, k] object), best first; row b
        leaves out the items of exclude[b]. Fewer than k items: the missing places have score -inf
        and id None."""
        if self._index is None:
            raise RuntimeError("search before index")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        excluded = [self._positions(items) for items in exclude or [()] * len(queries)]
        if self.kind == "exact":
            scores, rows = self._exact_search(queries, k, excluded)
        else:
            scores, rows = self._selected_search(queries, k, excluded)
        ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], None)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), ids

    def _positions(self, items: Collection[str]) -> np.ndarray:
        """The rows of `items`, those not in the index left out (a heavy user's seen set: thousands)."""
        rows = np.fromiter(map(self._rows.get, items, repeat(-1)), np.int64, len(items))
        return rows[rows >= 0]

    def _exact_search(self, queries, k: int, excluded: list[np.ndarray]):
        """Every item's score in one matrix product, the excluded ones masked, the top k picked out
        (`top_k`; ties: the lower row first). Faiss's flat search would have to go k + |excluded|
        deep and sort all of that, and a heavy user has seen thousands of items."""
        scores = queries @ self._vectors.T
        best_scores = np.full((len(queries), k), -np.inf, np.float32)
        best_rows = np.full((len(queries), k), -1, np.int64)
        for row, positions in enumerate(excluded):
            scores[row, positions] = -np.inf
            top = top_k(scores[row], k)
            found = top[np.isfinite(scores[row, top])]
            best_scores[row, : len(found)], best_rows[row, : len(found)] = scores[row, found], found
        return best_scores, best_rows

    def _selected_search(self, queries, k: int, excluded: list[np.ndarray]):
        """HNSW would lose recall searching deeper: rows with exclusions search again with a selector."""
        scores, rows = self._index.search(queries, k)
        for row, positions in enumerate(excluded):
            if len(positions):
                # Faiss's selectors and parameters hold plain pointers to each other: all three stay
                # referenced here until the search has returned.
                chosen = faiss.IDSelectorBatch(positions)
                others = faiss.IDSelectorNot(chosen)
                parameters = faiss.SearchParametersHNSW(sel=others, efSearch=HNSW_SEARCH_DEPTH)
                found_scores, found_rows = self._index.search(queries[row : row + 1], k, params=parameters)
                scores[row], rows[row] = found_scores[0], found_rows[0]
        return scores, rows

    @cached_property
    def _rows(self) -> dict[str, int]:
        return {item_id: row for row, item_id in enumerate(self._ids)}

    def save(self, index_path: Path, ids_path: Path) -> None:
        if self.kind == "exact":  # the vectors are what an exact index holds (`with_items` grows them alone)
            exact = faiss.IndexFlatIP(self._vectors.shape[1])
            exact.add(self._vectors)
            faiss.write_index(exact, str(index_path))
        else:
            faiss.write_index(self._index, str(index_path))
        ids_path.write_bytes(orjson.dumps(self._ids.tolist()))

    @classmethod
    def load(cls, index_path: Path, ids_path: Path, exact_max_items: int) -> "ItemIndex":
        loaded = cls(exact_max_items)
        loaded._index = faiss.read_index(str(index_path))
        loaded._ids = np.array(orjson.loads(ids_path.read_bytes()), dtype=object)
        if loaded.kind == "exact":
            loaded._vectors = loaded._index.reconstruct_n(0, loaded._index.ntotal)
        return loaded
