"""Training loops with progress bars, and warm starts from the previous version's weights."""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from schemas.model_inputs import FIRST_ITEM, Vocabulary
from training.data import Examples
from training.models import Ranker, TwoTower, ranking_loss

log = logging.getLogger("kingfisher.training")
ITEM_ID_TABLE = "item_embedding/ids/embeddings"
CONSTANT_TABLES = ("genre_lookup", "year_lookup")
Batch = tuple[dict[str, np.ndarray], np.ndarray]
PATIENCE = 2
"""Epochs without a better validation score before training stops."""


def progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


@dataclass(frozen=True)
class Schedule:
    batch_size: int
    max_epochs: int
    seed: int

    def batches(self, examples: Examples) -> Callable[[int], Iterator[Batch]]:
        return lambda epoch: examples.batches(self.batch_size, np.random.default_rng([self.seed, epoch]))


@dataclass
class History:
    losses: list[float] = field(default_factory=list)
    """Mean training loss of each epoch."""
    validation: list[float] = field(default_factory=list)
    """Validation metric after each epoch (higher is better)."""
    best_epoch: int = 0
    """1-based epoch whose weights the model kept."""


def fit(
    model: keras.Model,
    loss: Callable[[dict, tf.Tensor], tf.Tensor],
    batches: Callable[[int], Iterator[Batch]],
    steps_per_epoch: int,
    max_epochs: int,
    learning_rate: float,
    validate: Callable[[], float],
    name: str,
    progress: Progress,
) -> History:
    """Adam on `loss` over `batches(epoch)`, keeping the weights of the epoch with the best `validate()`
    (early stopping on the validation part of the time split: small data overfits within a few epochs)."""
    optimizer = keras.optimizers.Adam(learning_rate)

    @tf.function(reduce_retracing=True)
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            value = loss(inputs, labels)
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return value

    task = progress.add_task(name, total=steps_per_epoch * max_epochs, loss=float("nan"))
    history, best_weights = History(), None
    for epoch in range(1, max_epochs + 1):
        losses = []
        for inputs, labels in batches(epoch):
            losses.append(float(step(inputs, labels)))
            progress.update(task, advance=1, loss=losses[-1])
        history.losses.append(float(np.mean(losses)) if losses else float("nan"))
        history.validation.append(validate())
        log.info(
            "%s epoch %d/%d: loss %.4f, validation %.4f",
            name,
            epoch,
            max_epochs,
            history.losses[-1],
            history.validation[-1],
        )
        if history.validation[-1] >= max(history.validation):
            history.best_epoch, best_weights = epoch, model.get_weights()
        elif epoch - history.best_epoch >= PATIENCE:
            break
    progress.update(task, completed=steps_per_epoch * max_epochs)
    model.set_weights(best_weights)
    log.info("%s keeps epoch %d (validation %.4f)", name, history.best_epoch, max(history.validation))
    return history


def fit_retrieval(
    model: TwoTower,
    examples: Examples,
    log_q: np.ndarray,
    logq_weight: float,
    schedule: Schedule,
    validate: Callable[[], float],
    progress: Progress,
) -> History:
    """log_q: [vocabulary size] log sampling probability of each item index among training positives."""
    table = tf.constant(log_q, dtype=tf.float32)

    def loss(inputs, _labels):
        return model.in_batch_loss(
            inputs["sequence"],
            inputs["kinds"],
            inputs["user_features"],
            inputs["item"],
            tf.gather(table, inputs["item"]),
            logq_weight,
        )

    return fit(
        model,
        loss,
        schedule.batches(examples),
        len(examples) // schedule.batch_size,
        schedule.max_epochs,
        3e-3,
        validate,
        "retrieval (two-tower)",
        progress,
    )


def fit_ranker(
    model: Ranker, examples: Examples, schedule: Schedule, validate: Callable[[], float], name: str, progress: Progress
) -> History:
    return fit(
        model,
        lambda inputs, labels: ranking_loss(model, inputs, labels),
        schedule.batches(examples),
        len(examples) // schedule.batch_size,
        schedule.max_epochs,
        1e-3,
        validate,
        name,
        progress,
    )


def build(model: keras.Model, examples: Examples) -> keras.Model:
    """Create the model's variables with one small call."""
    model(examples.inputs(slice(0, 2)))
    return model


def warm_start(
    model: keras.Model, previous: keras.Model, vocabulary: Vocabulary, previous_vocabulary: Vocabulary
) -> int:
    """Start `model` from `previous`: item-id embeddings row by row for the items both know, every
    other variable whose shape still fits. The catalogue tables stay new. Returns the variables copied."""
    old = {variable.path: variable for variable in previous.weights}
    copied = 0
    for variable in model.weights:
        source = old.get(variable.path)
        if source is None or variable.path.endswith(CONSTANT_TABLES):
            continue
        if variable.path.endswith(ITEM_ID_TABLE):
            variable.assign(_remap_rows(variable.numpy(), source.numpy(), vocabulary, previous_vocabulary))
        elif tuple(variable.shape) == tuple(source.shape):
            variable.assign(source.numpy())
        else:
            continue
        copied += 1
    return copied


def _remap_rows(new: np.ndarray, old: np.ndarray, vocabulary: Vocabulary, previous: Vocabulary) -> np.ndarray:
    rows = new.copy()
    rows[:FIRST_ITEM] = old[:FIRST_ITEM]
    old_rows = previous.item_indices(vocabulary.item_ids)
    known = old_rows >= FIRST_ITEM
    rows[FIRST_ITEM:][known] = old[old_rows[known]]
    return rows
