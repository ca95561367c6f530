from __future__ import annotations

import torch
from torch import nn


class CrossNet(nn.Module):
    """DCN cross layers: x_{l+1} = x₀ · (w_lᵀ x_l) + b_l + x_l, same width as the input.

    Example::

        CrossNet(6, num_layers=2)(torch.randn(3, 6)).shape  # (3, 6)
    """

    def __init__(self, input_dim: int, num_layers: int):
        super().__init__()
        self.weights = nn.ModuleList(nn.Linear(input_dim, 1, bias=False) for _ in range(num_layers))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(input_dim)) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weights, self.biases):
            x = x0 * w(x) + b + x
        return x
