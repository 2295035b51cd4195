"""Retraining of the retrieval model and the DIN ranker, evaluation and gated publishing."""

import os

# Before TensorFlow starts: its default CPU allocator leaves large tensors (the retrieval loss's
# logits over the whole catalogue) to malloc, which maps and unmaps them at every step, and the
# kernel zeroes their pages again each time; the BFC allocator keeps its regions and reuses them.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
