"""The aiohttp recommendation service."""

import os

# A request's numpy products are small (its user's scores over the catalogue): OpenBLAS's threads
# would spin on both cores for each one, costing more CPU than the product. Set before numpy loads
# (`python -m serving` imports this package first); an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
