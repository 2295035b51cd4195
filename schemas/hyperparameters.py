"""The model hyper-parameters: settings of a training run, recorded in each bundle's manifest.

Every bundle says how its models were trained, so a later run can be compared knowing what
changed. The defaults are the values `make bench-train` measured (README, Training).
"""

from pydantic import BaseModel, ConfigDict, Field


class Hyperparameters(BaseModel):
    """Widths, schedules and the score mix of the retrieval model and the DIN ranker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_dim: int = Field(64, ge=16, description="Width of the retrieval model: item and user vectors.")
    retrieval_blocks: int = Field(2, ge=1, description="Causal self-attention blocks of the sequential user tower.")
    retrieval_heads: int = Field(2, ge=1, description="Attention heads per block (must divide KF_EMBEDDING_DIM).")
    retrieval_dropout: float = Field(0.2, ge=0, lt=1, description="Dropout of the user tower while it learns.")
    train_epochs: int = Field(
        10,
        ge=1,
        description="Most epochs of the retrieval model per split; each model keeps its best epoch on the "
        "validation queries.",
    )
    train_batch_size: int = Field(64, ge=2, description="Sequences per training batch of the retrieval model.")
    retrieval_learning_rate: float = Field(2e-3, gt=0, description="Adam's learning rate for the retrieval model.")
    retrieval_patience: int = Field(
        2, ge=1, description="Retrieval training stops after this many epochs without a better validation NDCG."
    )
    final_retrieval_epochs: int = Field(
        2, ge=0, description="Epochs the published retrieval model continues over every row, the holdout included."
    )
    final_learning_rate: float = Field(5e-4, gt=0, description="Learning rate of those final epochs.")
    ranker_width: int = Field(44, ge=4, description="Width of DIN's item, kind and age embeddings.")
    ranker_behaviours: int = Field(
        20,
        ge=1,
        description="DIN attends over the user's newest this many behaviours (the user tower reads the whole "
        "sequence): its work per candidate grows with them.",
    )
    ranker_attention_width: int = Field(
        12,
        ge=1,
        description="Hidden units of DIN's activation unit, which runs once per candidate-behaviour pair: the "
        "served work per candidate grows with them.",
    )
    ranker_epochs: int = Field(3, ge=1, description="Most epochs of the DIN ranker per split.")
    ranker_learning_rate: float = Field(1e-3, gt=0, description="Adam's learning rate for the DIN ranker.")
    ranker_batch_size: int = Field(128, ge=2, description="Queries (each with its candidate pool) per ranker batch.")
    ranker_patience: int = Field(
        1, ge=1, description="Ranker training stops after this many epochs without a better validation score."
    )
    ranker_queries: int = Field(
        25_000, ge=1, description="The ranker learns from the newest this many interactions of a split."
    )
    ranker_pool_candidates: int = Field(
        200,
        ge=1,
        description="Faiss candidates in each of the ranker's training pools, besides the trending ones: deeper "
        "than the service ranks (KF_CANDIDATES), since DIN trained on deeper pools ranks the served ones better.",
    )
    like_weight: float = Field(
        0.5,
        ge=0,
        description="The served score is log P(next) + this x log P(like): how much the like/rating "
        "objective moves the order.",
    )
