"""Exported serving signatures (TensorFlow SavedModels, no Python code needed to load them).

user_tower.embed(items [B, L] int32, kinds [B, L] int32, ages [B, L] float32) -> {"embedding": [B, d]}
ranker.score(items, kinds, ages, candidates [B, M] int32, features [B, M, F] float32, pairs [B, M, N] float32)
    -> {"score": [B, M] the served score, "attention": [B, M, N] DIN weights over the newest N behaviours}
with N = min(the ranker's behaviours, L)
"""

from pathlib import Path

import keras
import tensorflow as tf

from schemas.logic.model_inputs import RANKER_FEATURES
from training.models import Ranker, SequentialRetrieval


def _sequence_specs(length: int) -> list[tf.TensorSpec]:
    return [
        tf.TensorSpec([None, length], tf.int32, name="items"),
        tf.TensorSpec([None, length], tf.int32, name="kinds"),
        tf.TensorSpec([None, length], tf.float32, name="ages"),
    ]


def export_user_tower(model: SequentialRetrieval, path: Path, length: int) -> None:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "embed",
        lambda items, kinds, ages: {"embedding": model.user_vectors(items, kinds, ages)},
        input_signature=_sequence_specs(length),
    )
    archive.write_out(str(path), verbose=False)


def export_ranker(model: Ranker, path: Path, length: int) -> None:
    behaviours = min(model.behaviours, length)

    def score(items, kinds, ages, candidates, features, pairs):
        scores, attention = model.served_scores(items, kinds, ages, candidates, features, pairs)
        if attention is None:
            attention = tf.zeros(tf.concat([tf.shape(candidates), [behaviours]], 0))
        return {"score": scores, "attention": attention}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "score",
        score,
        input_signature=[
            *_sequence_specs(length),
            tf.TensorSpec([None, None], tf.int32, name="candidates"),
            tf.TensorSpec([None, None, len(RANKER_FEATURES)], tf.float32, name="features"),
            tf.TensorSpec([None, None, behaviours], tf.float32, name="pairs"),
        ],
    )
    archive.write_out(str(path), verbose=False)
