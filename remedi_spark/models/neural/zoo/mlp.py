from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..base import Batch, RemediModel, log_odds
from ..layers import FieldEmbedding, MLPBlock


@dataclass(frozen=True)
class MLPConfig:
    emb_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = 0.1


class MLP(RemediModel):
    """Embeddings of all fields, flattened, through an MLP to one logit."""

    name = "mlp"
    Config = MLPConfig

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: MLPConfig):
        super().__init__()
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, cfg.emb_dim)
        self.over = MLPBlock(self.embedding.num_fields * cfg.emb_dim, cfg.hidden, cfg.dropout, output_dim=1)

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """The last linear layer's bias makes the logit."""
        return [(self.over.net[-1].bias, log_odds(base_rate))]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fields = self.embedding(batch.dense, batch.cat_ids)
        return {"logit": self.over(fields.flatten(1)).squeeze(-1)}
