"""Retraining of the retrieval model and the DIN ranker, evaluation and gated publishing."""
