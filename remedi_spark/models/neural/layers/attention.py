from __future__ import annotations

import torch
from torch import nn


class FieldSelfAttention(nn.Module):
    """AutoInt's interacting layer: multi-head self-attention across the fields of one row.

    Per head h, every field m attends to every field k with weight softmax_k(⟨W_Q^h e_m, W_K^h e_k⟩)
    and takes the weighted sum of W_V^h e_k; the heads' outputs are concatenated, the residual
    W_Res e_m added (``residual``) and passed through ReLU (Song et al. 2019, eqs. 5–8). The scores
    are divided by √``attention_dim`` (scaled dot product) so deeper stacks stay out of softmax
    saturation at initialisation.

    Args:
        input_dim: D, width of each field vector.
        attention_dim: d', width of each head's query, key and value.
        heads: H, attention heads; the output width is H · d'.
        residual: add the projected input (W_Res, D → H · d').

    Example::

        att = FieldSelfAttention(input_dim=8, attention_dim=4, heads=2)
        att(torch.randn(3, 5, 8)).shape  # (3, 5, 8): 5 fields, 2 heads × 4
    """

    def __init__(self, input_dim: int, attention_dim: int, heads: int, residual: bool = True):
        super().__init__()
        if attention_dim < 1 or heads < 1:
            raise ValueError(f"attention_dim and heads must be >= 1, got {attention_dim} and {heads}")
        self.heads, self.attention_dim = heads, attention_dim
        width = heads * attention_dim
        self.query = nn.Linear(input_dim, width, bias=False)
        self.key = nn.Linear(input_dim, width, bias=False)
        self.value = nn.Linear(input_dim, width, bias=False)
        self.residual = nn.Linear(input_dim, width, bias=False) if residual else None
        self.output_dim = width

    def attention_weights(self, fields: torch.Tensor) -> torch.Tensor:
        """fields (B, F, D) → attention (B, H, F, F); each row (last axis) sums to 1."""
        q, k = (self._split(proj(fields)) for proj in (self.query, self.key))
        return torch.softmax(q @ k.transpose(-1, -2) / self.attention_dim ** 0.5, dim=-1)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """fields (B, F, D) → (B, F, H · d')."""
        batch, num_fields, _ = fields.shape
        mixed = self.attention_weights(fields) @ self._split(self.value(fields))  # (B, H, F, d')
        out = mixed.transpose(1, 2).reshape(batch, num_fields, self.output_dim)
        if self.residual is not None:
            out = out + self.residual(fields)
        return torch.relu(out)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F, H · d') → (B, H, F, d')."""
        batch, num_fields, _ = x.shape
        return x.view(batch, num_fields, self.heads, self.attention_dim).transpose(1, 2)
