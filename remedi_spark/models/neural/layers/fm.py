from __future__ import annotations

import torch
from torch import nn


class FMInteraction(nn.Module):
    """Second-order factorization-machine term: ½ Σ_d ((Σ_f e_fd)² − Σ_f e_fd²).

    Example::

        FMInteraction()(torch.ones(2, 3, 4))  # (2, 1): ½ · 4 · (9 − 3) = 12
    """

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """fields (B, F, D) → (B, 1)."""
        square_of_sum = fields.sum(dim=1).pow(2)
        sum_of_square = fields.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)
