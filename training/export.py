"""The served models as arrays: what `schemas.runtime.served_models` runs (no TensorFlow needed to serve).

`served_models(retrieval, ranker)` -> {USER_TOWER: {name: array}, RANKER: {name: array}}, which
`schemas.runtime.loaded_bundle.write_served_models` saves in a bundle. Item embeddings are exported as tables over the
whole vocabulary [items + reserved, D]: the user tower's already scaled as its encoder scales them.
"""

import keras
import numpy as np

from schemas.bundle import RANKER, USER_TOWER
from training.models import DeepInterestNetwork, SequentialRetrieval


def _values(pairs: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(keras.ops.convert_to_numpy(value), np.float32) for name, value in pairs.items()}


def _dense(prefix: str, layer) -> dict:
    return {f"{prefix}/kernel": layer.kernel, f"{prefix}/bias": layer.bias}


def _norm(prefix: str, layer) -> dict:
    return {f"{prefix}/gamma": layer.gamma, f"{prefix}/beta": layer.beta}


def _content(items) -> dict:
    """The item embedding's genre and year tables, from which the service embeds items newer than the models."""
    return {"content/genres": items.genres.embeddings, "content/years": items.years.embeddings}


def user_tower_arrays(model: SequentialRetrieval) -> dict[str, np.ndarray]:
    arrays = {
        "items": model.items(np.arange(model.items.vocabulary_size)) * np.sqrt(model.dim),
        **_content(model.items),
        "kinds": model.kinds.embeddings,
        "positions": model.positions.embeddings,
        **_norm("norm", model.norm),
    }
    for n, block in enumerate(model.blocks):
        arrays |= _norm(f"block_{n}/norm_attention", block.norm_attention)
        arrays |= _norm(f"block_{n}/norm_feed_forward", block.norm_feed_forward)
        for name in ("query_key_value", "project", "feed_forward", "feed_forward_out"):
            arrays |= _dense(f"block_{n}/{name}", getattr(block, name))
        arrays[f"block_{n}/gap_bias/embeddings"] = block.gap_bias.embeddings
    return _values(arrays)


def ranker_arrays(model: DeepInterestNetwork) -> dict[str, np.ndarray]:
    unit = model.attention
    arrays = {
        "items": model.items(np.arange(model.items.vocabulary_size)),
        **_content(model.items),
        "kinds": model.kinds.embeddings,
        "ages": model.ages.embeddings,
        "standardise/mean": model.standardise.mean,
        "standardise/std": model.standardise.std,
        **_dense("next_logit", model.next_logit),
        **_dense("like_logit", model.like_logit),
        **{f"attention/{name}": getattr(unit, name) for name in ("w_query", "w_key", "w_product", "bias", "w_pair")},
        "attention/dice/alpha": unit.activation.alpha,
        "attention/dice/normalise/moving_mean": unit.activation.normalise.moving_mean,
        "attention/dice/normalise/moving_variance": unit.activation.normalise.moving_variance,
        "attention/dice/epsilon": np.float32(unit.activation.normalise.epsilon),
        **_dense("attention/weight", unit.out),
    }
    for layer in model.mlp.layers:
        if isinstance(layer, keras.layers.Dense):
            arrays |= _dense(f"mlp/{layer.name}", layer)
        else:
            arrays[f"mlp/{layer.name}/alpha"] = layer.alpha
    return _values(arrays)


def served_models(retrieval: SequentialRetrieval, ranker: DeepInterestNetwork) -> dict[str, dict[str, np.ndarray]]:
    return {USER_TOWER: user_tower_arrays(retrieval), RANKER: ranker_arrays(ranker)}
