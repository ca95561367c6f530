from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..base import Batch, RemediModel
from ..layers import CompressedInteractionNet, FieldEmbedding, MLPBlock


@dataclass(frozen=True)
class XDeepFMConfig:
    emb_dim: int = 16
    cin_layers: list[int] = field(default_factory=lambda: [64, 64])
    hidden: list[int] = field(default_factory=lambda: [400, 400])
    dropout: float = 0.1


class XDeepFM(RemediModel):
    """First-order term + CIN (explicit vector-wise interactions) + deep MLP."""

    name = "xdeepfm"
    Config = XDeepFMConfig

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: XDeepFMConfig):
        super().__init__()
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, cfg.emb_dim)
        self.first_order = FieldEmbedding(vocab_sizes, num_numeric, 1)
        self.inter = CompressedInteractionNet(self.embedding.num_fields, cfg.cin_layers)
        self.over = MLPBlock(self.embedding.num_fields * cfg.emb_dim, cfg.hidden, cfg.dropout, output_dim=1)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fields = self.embedding(batch.dense, batch.cat_ids)
        linear = self.first_order(batch.dense, batch.cat_ids).sum(dim=(1, 2))
        logit = self.bias + linear + self.inter(fields).squeeze(-1) + self.over(fields.flatten(1)).squeeze(-1)
        return {"logit": logit}
