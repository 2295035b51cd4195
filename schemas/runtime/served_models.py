"""The served models' forward passes in NumPy, from the arrays training exports (`served_models.npz`
in a bundle): the SASRec user tower and the DIN ranker of `training.models`, at inference.

The service runs these instead of TensorFlow: a TensorFlow call costs a fixed fraction of a
millisecond before any arithmetic and XLA keeps every loaded version's programs, while the work per
request is a few small matrix products. Where inference allows, work moves from the request to the
export, once per model version (README, Serving):
- Item embeddings (id, genres, year) are tables over the whole vocabulary.
- DIN's activation unit takes [q, k, q - k, q ⊙ k] into its first layer, which is
  q·W_q + k·W_k + (q ⊙ k)·W_p + b (the q - k block folds into W_q and W_k), plus the pair's
  co-visitation term. Per request row that is one product of [q, 1, pairs] [M, D + 1 + N] with a
  [D + 1 + N, N·H] matrix built from the behaviours (`DinRanker._hidden`).
- Dice's inference-time normalisation is folded into those weights, and its sigmoid gate is
  1 / (1 + exp(u)) of the layer's output u, so the unit's output layer becomes three
  matrix-vector products (see `DinRanker._weights`).

Items published after training (`with_items`) get rows built as the item embedding builds them,
from their genres and year (`new_item_rows`).

Shapes: B rows, L sequence length, M candidates, N the ranker's newest behaviours, D widths.
`tests/unit/test_served_models.py` checks both against the Keras models.
"""

import copy
from collections.abc import Mapping

import numpy as np

from schemas.runtime.growing import appended
from schemas.runtime.model_inputs import AGE_BUCKETS

LAYER_NORM_EPSILON = 1e-6
MASKED_LOGIT = -1e9


def age_buckets(seconds: np.ndarray) -> np.ndarray:
    """[...] float32 seconds (negative counts as 0) -> [...] int32: round(log2(1 + seconds)), clipped.
    The formula of `training.layers.age_buckets`, log(1 + x) rather than log1p (which NumPy also
    computes without a vector loop)."""
    buckets = np.round(np.log(np.maximum(seconds, np.float32(0)) + np.float32(1)) / np.float32(np.log(2.0)))
    return np.clip(buckets, 0, AGE_BUCKETS - 1).astype(np.int32)


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    # np.add.reduce, not x.mean: the method's bookkeeping costs more than these rows' arithmetic
    width = np.float32(x.shape[-1])
    centred = x - np.add.reduce(x, axis=-1, keepdims=True) / width
    variance = np.add.reduce(centred * centred, axis=-1, keepdims=True) / width
    return centred / np.sqrt(variance + np.float32(LAYER_NORM_EPSILON)) * gamma + beta


def content_rows(
    id_parts: np.ndarray,
    genre_embeddings: np.ndarray,
    year_embeddings: np.ndarray,
    genres: np.ndarray,
    years: np.ndarray,
) -> np.ndarray:
    """`training.layers.ItemEmbedding`'s output for N items: id_parts [N, I] (their id embeddings),
    genres [N, MAX_GENRES] (1-based genre indices, 0 pads) and years [N] (buckets), with the genre
    [genres + 1, G] and year [buckets, Y] embeddings -> [N, I + G + Y]: [id embedding | mean of the
    genres' embeddings (0 without genres) | the year's embedding]."""
    present = (genres > 0)[..., None].astype(np.float32)
    genre_mean = (genre_embeddings[genres] * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    return np.concatenate([id_parts, genre_mean, year_embeddings[years]], axis=1).astype(np.float32)


def id_width(arrays: Mapping[str, np.ndarray]) -> int:
    """Columns of a model's item table that hold the id embedding (the rest: the content's)."""
    return arrays["items"].shape[1] - arrays["content/genres"].shape[1] - arrays["content/years"].shape[1]


def new_item_rows(arrays: Mapping[str, np.ndarray], genres: np.ndarray, years: np.ndarray) -> np.ndarray:
    """Rows of a model's item table (`arrays["items"]` [V, D], unscaled) for new items of `genres`,
    `years`: their content, and zeros for the id embedding no training has seen (README, New items:
    zeros placed new items nearer their users than the never-trained unknown id's row or the mean of
    similar items' ids)."""
    return rows_with_content(arrays, np.zeros((len(years), id_width(arrays)), np.float32), genres, years)


def rows_with_content(
    arrays: Mapping[str, np.ndarray], id_parts: np.ndarray, genres: np.ndarray, years: np.ndarray
) -> np.ndarray:
    """Rows of a model's item table (unscaled) for items with id embeddings id_parts [N, I] and the
    content `genres` [N, MAX_GENRES], `years` [N]."""
    return content_rows(id_parts, arrays["content/genres"], arrays["content/years"], genres, years)


def _prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + alpha * np.minimum(x, 0)


class UserTower:
    """`SequentialRetrieval.user_vectors`: items, kinds [B, L] int32, ages [B, L] float32 -> [B, d]."""

    def __init__(self, arrays: Mapping[str, np.ndarray], heads: int):
        self.arrays = arrays
        self.items, self.kinds, self.positions = arrays["items"], arrays["kinds"], arrays["positions"]
        self.norm = arrays["norm/gamma"], arrays["norm/beta"]
        self.blocks = [
            {name[len(prefix) :]: array for name, array in arrays.items() if name.startswith(prefix)}
            for prefix in sorted({name.split("/")[0] + "/" for name in arrays if name.startswith("block_")})
        ]
        self.heads, self.length = heads, len(self.positions)
        self.causal = np.tril(np.ones((self.length, self.length), bool))
        self.scale = np.float32(np.sqrt(self.items.shape[1]))
        """The encoder scales item embeddings by sqrt(d): `items` holds them scaled, the retrieval vectors are not."""

    def with_items(self, genres: np.ndarray, years: np.ndarray) -> tuple["UserTower", np.ndarray]:
        """genres [N, MAX_GENRES], years [N] of new items -> (a tower whose item table has their rows
        after its own, their retrieval vectors [N, d]); this tower is unchanged."""
        vectors = new_item_rows(self.arrays, genres, years)
        grown = copy.copy(self)
        grown.items = appended(self.items, vectors * self.scale)
        return grown, vectors

    def content_differs(self, indices: np.ndarray, genres: np.ndarray, years: np.ndarray) -> np.ndarray:
        """indices [N] of items in the table, and their content now -> [N] bool: whether their rows
        were built from other content (an item changed since training, or since it was added)."""
        width = id_width(self.arrays)
        now = rows_with_content(self.arrays, np.zeros((len(indices), width), np.float32), genres, years)
        built = self.items[indices] / self.scale
        return ~np.isclose(built[:, width:], now[:, width:], rtol=1e-4, atol=1e-5).all(axis=1)

    def with_content(
        self, indices: np.ndarray, genres: np.ndarray, years: np.ndarray
    ) -> tuple["UserTower", np.ndarray]:
        """indices [N] of items in the table and their new content -> (a tower whose rows for them hold
        it beside their id embeddings, their new retrieval vectors [N, d]); this tower is unchanged."""
        ids = self.items[indices][:, : id_width(self.arrays)] / self.scale
        vectors = rows_with_content(self.arrays, ids, genres, years)
        changed = copy.copy(self)
        changed.items = self.items.copy()
        changed.items[indices] = vectors * self.scale
        return changed, vectors

    def __call__(self, items: np.ndarray, kinds: np.ndarray, ages: np.ndarray) -> np.ndarray:
        present = items > 0
        x = (self.items[items] + self.kinds[kinds] + self.positions) * present[..., None]
        moments = np.concatenate([ages[:, 1:], np.zeros_like(ages[:, :1])], axis=1)
        gaps = age_buckets(ages[:, None, :] - moments[:, :, None])  # [B, query L, key L]
        allowed = self.causal & present[:, None, :]
        for n, block in enumerate(self.blocks):
            queries = 1 if n == len(self.blocks) - 1 else self.length  # the last block: the newest position only
            x = self._block(block, x, allowed[:, -queries:], gaps[:, -queries:]) * present[:, -queries:, None]
        return layer_norm(x[:, -1], *self.norm)

    def _block(self, weights: dict, x: np.ndarray, allowed: np.ndarray, gaps: np.ndarray) -> np.ndarray:
        """`training.layers.CausalSelfAttention` at inference: x [B, L, d] -> [B, Q, d] for the last Q positions."""
        batch, length, dim = x.shape
        queries, width = allowed.shape[1], dim // self.heads
        normed = layer_norm(x, weights["norm_attention/gamma"], weights["norm_attention/beta"])
        mixed = normed @ weights["query_key_value/kernel"] + weights["query_key_value/bias"]
        heads = mixed.reshape(batch, length, 3, self.heads, width).transpose(2, 0, 3, 1, 4)  # [3, B, heads, L, w]
        query, key, value = heads[0][:, :, -queries:], heads[1], heads[2]
        logits = query @ key.transpose(0, 1, 3, 2) / np.float32(np.sqrt(width))
        logits += weights["gap_bias/embeddings"][gaps].transpose(0, 3, 1, 2)
        logits = np.where(allowed[:, None], logits, np.float32(MASKED_LOGIT))
        logits = np.exp(logits - logits.max(axis=-1, keepdims=True))
        attended = (logits / logits.sum(axis=-1, keepdims=True)) @ value  # [B, heads, Q, w]
        attended = attended.transpose(0, 2, 1, 3).reshape(batch, queries, dim)
        x = x[:, -queries:] + attended @ weights["project/kernel"] + weights["project/bias"]
        normed = layer_norm(x, weights["norm_feed_forward/gamma"], weights["norm_feed_forward/beta"])
        hidden = np.maximum(normed @ weights["feed_forward/kernel"] + weights["feed_forward/bias"], 0)
        return x + hidden @ weights["feed_forward_out/kernel"] + weights["feed_forward_out/bias"]


class DinRanker:
    """`Ranker.served_scores` of `training.models.DeepInterestNetwork`: sequences [B, L], candidates
    [B, M] int32, features [B, M, F], pairs [B, M, N] float32 -> (scores [B, M], attention [B, M, N])."""

    def __init__(self, arrays: Mapping[str, np.ndarray], behaviours: int, like_weight: float):
        self.arrays, self.behaviours, self.like_weight = arrays, behaviours, np.float32(like_weight)
        self.items, self.kinds, self.ages = arrays["items"], arrays["kinds"], arrays["ages"]
        self.mlp = [(arrays[f"mlp/dense_{n}/kernel"], arrays[f"mlp/dense_{n}/bias"], arrays[f"mlp/prelu_{n}/alpha"])
                    for n in range(sum(name.startswith("mlp/dense_") for name in arrays) // 2)]  # fmt: skip
        self.next_logit = arrays["next_logit/kernel"][:, 0], arrays["next_logit/bias"][0]
        self.like_logit = arrays["like_logit/kernel"][:, 0], arrays["like_logit/bias"][0]
        self.feature_mean, self.feature_std = arrays["standardise/mean"], arrays["standardise/std"]
        self._fold_attention_unit(arrays)

    def _fold_attention_unit(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The unit's first layer yields u = -z, z Dice's normalised input (z = (x - mean) · s, s =
        1 / sqrt(variance + ε)), so that Dice's gate is p = sigmoid(z) = 1 / (1 + exp(u)): NumPy's
        exp is several times faster than its tanh or a sigmoid built on either. Dice's output
        a = x·(alpha + (1 - alpha)·p), with x = mean - u / s, then enters the output layer w as
        Σ_h a_h·w_h = u·U + (u ⊙ p)·V + p·W + c (`_weights`)."""
        unit = {
            name.removeprefix("attention/"): array for name, array in arrays.items() if name.startswith("attention/")
        }
        scale = 1 / np.sqrt(unit["dice/normalise/moving_variance"] + np.float32(unit["dice/epsilon"]))
        mean, alpha, out = unit["dice/normalise/moving_mean"], unit["dice/alpha"], unit["weight/kernel"][:, 0]
        self.w_query, self.w_key = -unit["w_query"] * scale, -unit["w_key"] * scale
        self.w_product, self.w_pair = -unit["w_product"] * scale, -unit["w_pair"] * scale
        self.shift = (mean - unit["bias"]) * scale
        self.u_weight = -out * alpha / scale
        self.u_gate_weight = -out * (1 - alpha) / scale
        self.gate_weight = out * (1 - alpha) * mean
        self.constant = np.float32(out @ (alpha * mean) + unit["weight/bias"][0])
        self.queries = self._queries(self.items)

    @staticmethod
    def _queries(items: np.ndarray) -> np.ndarray:
        """The candidate table with a ones column, whose row in `_hidden`'s matrix carries k·W_k + b."""
        return np.concatenate([items, np.ones((len(items), 1), np.float32)], axis=1)

    def with_items(self, genres: np.ndarray, years: np.ndarray) -> "DinRanker":
        """genres [N, MAX_GENRES], years [N] of new items -> a ranker whose item table has their rows
        after its own; this ranker is unchanged."""
        rows = new_item_rows(self.arrays, genres, years)
        grown = copy.copy(self)
        grown.items = appended(self.items, rows)
        grown.queries = appended(self.queries, self._queries(rows))
        return grown

    def with_content(self, indices: np.ndarray, genres: np.ndarray, years: np.ndarray) -> "DinRanker":
        """indices [N] of items in the table and their new content -> a ranker whose rows for them hold
        it beside their id embeddings; this ranker is unchanged."""
        rows = rows_with_content(self.arrays, self.items[indices][:, : id_width(self.arrays)], genres, years)
        changed = copy.copy(self)
        changed.items, changed.queries = self.items.copy(), self.queries.copy()
        changed.items[indices], changed.queries[indices] = rows, self._queries(rows)
        return changed

    def __call__(self, items, kinds, ages, candidates, features, pairs) -> tuple[np.ndarray, np.ndarray]:
        items, kinds, ages = (array[:, -self.behaviours :] for array in (items, kinds, ages))
        keys = self.items[items] + self.kinds[kinds] + self.ages[age_buckets(ages)]  # [B, N, D]
        # Row by row: a row's [M, N, H] pairs stay in the cache through the unit's passes over them.
        unit = [self._weights(self._hidden(*row)) for row in zip(keys, candidates, pairs, strict=True)]
        weights = np.stack(unit) * (items > 0)[:, None, :]  # [B, M, N]
        interest = weights @ keys  # [B, M, D]
        query = self.items[candidates]
        hidden = np.concatenate(
            [interest, query, interest * query, (features - self.feature_mean) / self.feature_std], -1
        )
        for kernel, bias, alpha in self.mlp:
            hidden = _prelu(hidden @ kernel + bias, alpha)
        next_logits = hidden @ self.next_logit[0] + self.next_logit[1]
        like_logits = hidden @ self.like_logit[0] + self.like_logit[1]
        log_sigmoid = -np.logaddexp(np.float32(0), -like_logits)
        return next_logits + self.like_weight * log_sigmoid, weights

    def _hidden(self, keys: np.ndarray, candidates: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        """keys [N, D], candidates [M], pairs [M, N] of one row -> u [M, N, H], the folded first
        layer of the activation unit for every pair, as one product: [q, 1, pairs] [M, D + 1 + N]
        times [D + 1 + N, N·H], whose rows are k ⊙ W_p + W_q, then k·W_k + b, then w_pair on the
        diagonal blocks (pair l adds w_pair to behaviour l's block only)."""
        length, width = keys.shape
        hidden = self.w_key.shape[1]
        rows = np.zeros((width + 1 + length, length, hidden), np.float32)
        np.multiply(keys.T[:, :, None], self.w_product[:, None, :], out=rows[:width])
        rows[:width] += self.w_query[:, None, :]
        rows[width] = keys @ self.w_key + self.shift
        rows[width + 1 + np.arange(length), np.arange(length)] = self.w_pair
        inputs = np.concatenate([self.queries[candidates], pairs], axis=1)
        return (inputs @ rows.reshape(len(rows), length * hidden)).reshape(len(candidates), length, hidden)

    def _weights(self, u: np.ndarray) -> np.ndarray:
        """u [..., H] -> the unit's output [...]."""
        with np.errstate(over="ignore"):  # exp(u) = inf where the gate is closed: p = 0, as it should be
            gate = np.exp(u)
        gate += 1
        np.reciprocal(gate, out=gate)
        return u @ self.u_weight + (u * gate) @ self.u_gate_weight + gate @ self.gate_weight + self.constant
