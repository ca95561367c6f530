from __future__ import annotations

import torch
from torch import nn


class CompressedInteractionNet(nn.Module):
    """xDeepFM's CIN: each layer takes the outer product of the input fields X⁰ with the previous
    layer Xᵏ along the field axis, compresses it with a 1×1 convolution to ``layer_sizes[k]``
    feature maps, and sum-pools every layer over D; the pooled vectors go through a linear layer.

    Args:
        num_fields: F, fields of X⁰.
        layer_sizes: feature maps per layer (H₁, H₂, ...).
        output_dim: width of the output (1 for a logit).

    Example::

        cin = CompressedInteractionNet(num_fields=3, layer_sizes=[4, 4])
        cin(torch.randn(2, 3, 5)).shape  # (2, 1)
    """

    def __init__(self, num_fields: int, layer_sizes: list[int], output_dim: int = 1):
        super().__init__()
        self.convs = nn.ModuleList()
        prev = num_fields
        for h in layer_sizes:
            self.convs.append(nn.Conv1d(num_fields * prev, h, kernel_size=1))
            prev = h
        self.fc = nn.Linear(sum(layer_sizes), output_dim)

    def pooled(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 (B, F, D) → concatenated sum-pooled layer outputs (B, Σ H_k)."""
        batch, _, dim = x0.shape
        xk, pooled = x0, []
        for conv in self.convs:
            z = torch.einsum("bfd,bhd->bfhd", x0, xk).reshape(batch, -1, dim)  # (B, F·H_k, D)
            xk = conv(z)  # (B, H_{k+1}, D)
            pooled.append(xk.sum(dim=2))
        return torch.cat(pooled, dim=1)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(x0))
