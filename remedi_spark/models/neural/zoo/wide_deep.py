from __future__ import annotations

import torch
from torch import nn

from ..base import Batch, RemediModel, log_odds
from ..layers import CompressedInteractionNet, FieldEmbedding, MLPBlock


class FirstOrderInteractionDeep(RemediModel):
    """bias + first-order term + an interaction arch over the field embeddings + a deep MLP.

    DeepFM and xDeepFM are this model with a different ``inter`` arch (FM, CIN), built by the
    subclass from the number of fields and passed in (torchrec style).
    """

    def __init__(self, vocab_sizes: list[int], num_numeric: int, emb_dim: int, hidden: list[int], dropout: float):
        super().__init__()
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, emb_dim)
        self.first_order = FieldEmbedding(vocab_sizes, num_numeric, 1)
        self.inter = self.interaction_arch(self.embedding.num_fields)
        self.over = MLPBlock(self.embedding.num_fields * emb_dim, hidden, dropout, output_dim=1)
        self.bias = nn.Parameter(torch.zeros(1))

    def interaction_arch(self, num_fields: int) -> nn.Module:
        """(B, F, D) → (B, 1)."""
        raise NotImplementedError

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """The global ``bias`` carries the base rate; the deep MLP's and the CIN's output biases start at 0."""
        zeros = [self.over.net[-1].bias]
        if isinstance(self.inter, CompressedInteractionNet):
            zeros.append(self.inter.fc.bias)
        return [(self.bias, log_odds(base_rate)), *((b, 0.0) for b in zeros)]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fields = self.embedding(batch.dense, batch.cat_ids)
        linear = self.first_order(batch.dense, batch.cat_ids).sum(dim=(1, 2))
        logit = self.bias + linear + self.inter(fields).squeeze(-1) + self.over(fields.flatten(1)).squeeze(-1)
        return {"logit": logit}
