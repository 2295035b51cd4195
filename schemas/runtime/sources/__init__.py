"""Data sources as contract records: MovieLens and a synthetic world with known preferences."""
