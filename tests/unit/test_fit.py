import numpy as np

from training.fit import Schedule


def schedule(batch_size: int) -> Schedule:
    return Schedule(batch_size=batch_size, max_epochs=1, learning_rate=1e-3, patience=1, seed=0)


def test_batches_are_whole_and_shuffled_and_a_remainder_waits_for_another_epoch():
    arrays = {"x": np.arange(5)}

    batches = list(schedule(2).batches(arrays, epoch=1))

    assert [len(batch["x"]) for batch in batches] == [2, 2] and schedule(2).steps(arrays) == 2
    assert len(set(np.concatenate([batch["x"] for batch in batches]).tolist())) == 4


def test_fewer_rows_than_a_batch_train_as_one_batch_instead_of_none():
    arrays = {"x": np.arange(3)}

    batches = list(schedule(8).batches(arrays, epoch=1))

    assert [sorted(batch["x"].tolist()) for batch in batches] == [[0, 1, 2]] and schedule(8).steps(arrays) == 1
