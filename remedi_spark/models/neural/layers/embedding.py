from __future__ import annotations

import torch
from torch import nn


class FieldEmbedding(nn.Module):
    """Every feature as one field vector: categoricals by lookup, numerics as value × learned vector.

    Args:
        vocab_sizes: rows per categorical field (index 0 is the out-of-vocabulary bucket).
        num_numeric: number of numeric fields.
        dim: embedding dimension D.

    Example::

        emb = FieldEmbedding([5, 3], num_numeric=4, dim=8)
        fields = emb(torch.zeros(2, 4), torch.zeros(2, 2, dtype=torch.long))  # (2, 6, 8)
    """

    def __init__(self, vocab_sizes: list[int], num_numeric: int, dim: int):
        super().__init__()
        self.categorical = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)
        self.numeric = nn.Parameter(torch.randn(num_numeric, dim) * 0.01)
        for table in self.categorical:
            nn.init.normal_(table.weight, std=0.01)

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + self.numeric.shape[0]

    def forward(self, dense: torch.Tensor, cat_ids: torch.Tensor) -> torch.Tensor:
        """dense (B, F_num), cat_ids (B, F_cat) → fields (B, F_num + F_cat, D)."""
        numeric = dense.unsqueeze(-1) * self.numeric.unsqueeze(0)
        if not len(self.categorical):
            return numeric
        cats = torch.stack([table(cat_ids[:, i]) for i, table in enumerate(self.categorical)], dim=1)
        return torch.cat([numeric, cats], dim=1)
