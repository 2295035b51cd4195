"""The service's model calls: XLA-compiled, one program per padded input shape.

DIN's attention (an einsum, Dice and a dense layer over every candidate-behaviour pair) fuses into
a few kernels under XLA, which the README's serving benchmark measures against the plain calls.
XLA compiles one program per input shape, so inputs are padded to few shapes (`compiled_shape`).
"""

from collections.abc import Callable

import numpy as np

from schemas.bundle import LoadedBundle

CANDIDATE_BUCKET = 64
EXACT_ROWS = 4


def compiled_shape(rows: int, candidates: int) -> tuple[int, int]:
    """The (rows, candidates) a compiled call with this many runs as: candidates up to a multiple of
    CANDIDATE_BUCKET, rows beyond EXACT_ROWS up to a power of two. Up to EXACT_ROWS (the service's
    default largest batch) rows run as they are: DIN's work grows with the rows, and padding a batch
    of 3 to 4 would add a third more of it exactly when the service is busiest."""
    padded_rows = rows if rows <= EXACT_ROWS else 1 << (rows - 1).bit_length()
    return padded_rows, -(-candidates // CANDIDATE_BUCKET) * CANDIDATE_BUCKET


class OneProgramPerShape:
    """A tf.function called through a concrete function per input shape, kept once made.

    The call goes straight to the program's flat inputs (`_call_flat`, private in TensorFlow 2.20,
    which requirements.lock pins): matching keyword arguments against the signature costs a sizeable
    share of a call, all of it holding the GIL the event loop needs. The integration tests compare
    these calls with the plain signatures."""

    def __init__(self, function):
        import tensorflow as tf  # here: the service imports this module before it loads TensorFlow's models

        self._function, self._programs, self._tf = function, {}, tf

    def __call__(self, **arrays: np.ndarray) -> dict:
        shape = tuple((name, array.shape, array.dtype.str) for name, array in arrays.items())
        made = self._programs.get(shape)
        if made is None:
            specs = {name: self._tf.TensorSpec(array.shape, array.dtype) for name, array in arrays.items()}
            program = self._function.get_concrete_function(**specs)
            made = self._programs[shape] = program, tuple(program.function_type.parameters)
        program, names = made
        return program._call_flat([self._tf.constant(arrays[name]) for name in names], program.captured_inputs)


class CompiledBundle(LoadedBundle):
    """A loaded bundle whose model calls are XLA-compiled; inputs are padded to `compiled_shape`,
    and each new padded shape costs one compilation."""

    def model_call(self, signature: Callable[..., dict]) -> Callable[..., dict]:
        import tensorflow as tf

        return OneProgramPerShape(tf.function(signature, jit_compile=True))

    def input_shape(self, rows: int, candidates: int) -> tuple[int, int]:
        return compiled_shape(rows, candidates)
