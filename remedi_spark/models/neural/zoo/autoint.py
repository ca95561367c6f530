"""AutoInt (Song et al. 2019, one of the REMEDI paper's single-model baselines): stacked multi-head
self-attention over the field embeddings learns which feature combinations matter; the last layer's
field vectors, flattened, give the logit. ``hidden`` non-empty adds a deep MLP over the raw field
embeddings whose logit is added (the paper's AutoInt+)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..base import Batch, RemediModel, log_odds
from ..layers import FieldEmbedding, FieldSelfAttention, MLPBlock


@dataclass(frozen=True)
class AutoIntConfig:
    emb_dim: int = 16
    attention_layers: int = 3  # interacting layers
    heads: int = 2
    attention_dim: int = 32  # d' per head: each layer's field vectors are heads × attention_dim wide
    residual: bool = True
    hidden: list[int] = field(default_factory=list)  # the optional deep MLP (AutoInt+); [] = none
    dropout: float = 0.1  # of the deep MLP


class AutoInt(RemediModel):
    """Field embeddings → ``attention_layers`` × :class:`FieldSelfAttention` → flatten → linear logit
    (+ the deep MLP's logit when ``hidden`` is given).

    Example::

        m = AutoInt([4], num_numeric=3, cfg=AutoIntConfig(emb_dim=4, attention_layers=1, attention_dim=2))
        m(Batch(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long)))["logit"].shape  # (2,)
    """

    name = "autoint"
    Config = AutoIntConfig

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: AutoIntConfig):
        super().__init__()
        if cfg.attention_layers < 1:
            raise ValueError(f"AutoInt: attention_layers must be >= 1, got {cfg.attention_layers}")
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, cfg.emb_dim)
        layers, width = [], cfg.emb_dim
        for _ in range(cfg.attention_layers):
            layers.append(FieldSelfAttention(width, cfg.attention_dim, cfg.heads, cfg.residual))
            width = layers[-1].output_dim
        self.attention = nn.Sequential(*layers)
        num_fields = self.embedding.num_fields
        self.out = nn.Linear(num_fields * width, 1)
        self.deep = MLPBlock(num_fields * cfg.emb_dim, cfg.hidden, cfg.dropout, output_dim=1) if cfg.hidden else None

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """The attention output's linear bias carries the base rate; the deep MLP's output bias starts at 0."""
        values = [(self.out.bias, log_odds(base_rate))]
        return values + ([(self.deep.net[-1].bias, 0.0)] if self.deep is not None else [])

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fields = self.embedding(batch.dense, batch.cat_ids)
        logit = self.out(self.attention(fields).flatten(1)).squeeze(-1)
        if self.deep is not None:
            logit = logit + self.deep(fields.flatten(1)).squeeze(-1)
        return {"logit": logit}
