"""Training loops with progress bars: Adam over shuffled batches, keeping the epoch with the best
validation score (early stopping on the validation queries: small data overfits within a few epochs)."""

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("kingfisher.training")
Batch = dict[str, np.ndarray]


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
    """How one model trains: batch size, most epochs, Adam's learning rate, epochs without a better
    validation score before it stops, and the seed of its shuffles."""

    batch_size: int
    max_epochs: int
    learning_rate: float
    patience: int
    seed: int

    def batches(self, arrays: Batch, epoch: int) -> Iterator[Batch]:
        """Shuffled batches of whole size (a short last batch would skew a softmax over the batch),
        or one batch of everything when there are fewer rows than a batch."""
        count = len(next(iter(arrays.values())))
        order = np.random.default_rng([self.seed, epoch]).permutation(count)
        size = self.size_for(count)
        for start in range(0, count - size + 1, size):
            chosen = order[start : start + size]
            yield {name: array[chosen] for name, array in arrays.items()}

    def size_for(self, count: int) -> int:
        return max(min(self.batch_size, count), 1)

    def steps(self, arrays: Batch) -> int:
        count = len(next(iter(arrays.values())))
        return count // self.size_for(count)


@dataclass
class History:
    losses: list[float] = field(default_factory=list)
    """Mean training loss of each epoch."""
    validation: list[float] = field(default_factory=list)
    """Validation metric after each epoch (higher is better)."""
    best_epoch: int = 0
    """1-based epoch whose weights the model kept (0: the weights it started with)."""


def fit(
    model: keras.Model,
    loss: Callable[[Batch], tf.Tensor],
    arrays: Batch | tuple[Callable[[int], Iterator[Batch]], int],
    schedule: Schedule,
    validate: Callable[[], float],
    name: str,
    progress: Progress,
) -> History:
    """Adam on `loss` over shuffled batches of `arrays` (or over `(batches of an epoch, steps per
    epoch)`), keeping the weights of the epoch with the best `validate()`. Every variable `loss`
    trains must exist before (call the model once): Adam's slots are built for them here."""
    if isinstance(arrays, tuple):
        batches, steps = arrays
    else:
        batches, steps = (lambda epoch: schedule.batches(arrays, epoch)), schedule.steps(arrays)
    optimizer = keras.optimizers.Adam(schedule.learning_rate)
    # Its slots built here, not in `step`'s first call: a tf.function that creates variables is
    # traced twice, and tracing is most of a small model's training time.
    optimizer.build(model.trainable_variables)

    @tf.function(reduce_retracing=True, autograph=False)
    def step(batch):
        with tf.GradientTape() as tape:
            value = loss(batch)
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return value

    task = progress.add_task(name, total=steps * schedule.max_epochs, loss=float("nan"))
    history, best_weights = History(), model.get_weights()
    for epoch in range(1, schedule.max_epochs + 1):
        losses = []
        for batch in batches(epoch):
            losses.append(float(step(batch)))
            progress.update(task, advance=1, loss=losses[-1])
        history.losses.append(float(np.mean(losses)) if losses else float("nan"))
        history.validation.append(validate())
        log.info(
            "%s epoch %d/%d: loss %.4f, validation %.4f",
            name,
            epoch,
            schedule.max_epochs,
            history.losses[-1],
            history.validation[-1],
        )
        if history.validation[-1] >= max(history.validation):
            history.best_epoch, best_weights = epoch, model.get_weights()
        elif epoch - history.best_epoch >= schedule.patience:
            break
    progress.update(task, completed=steps * schedule.max_epochs)
    model.set_weights(best_weights)
    log.info("%s keeps epoch %d (validation %.4f)", name, history.best_epoch, max(history.validation))
    return history
