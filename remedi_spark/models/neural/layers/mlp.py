from __future__ import annotations

import torch
from torch import nn


class MLPBlock(nn.Module):
    """Linear → BatchNorm → ReLU → Dropout per hidden layer; optional final linear to ``output_dim``.

    Args:
        input_dim: width of the input (B, input_dim).
        hidden: hidden layer widths.
        dropout: dropout after each hidden layer.
        output_dim: add a last linear layer to this width (e.g. 1 for a logit), or None.
        batch_norm: BatchNorm after each hidden linear layer (off for meta-models: with a few
            hundred positives, batch statistics are mostly noise).

    Example::

        mlp = MLPBlock(16, [32, 32], dropout=0.1, output_dim=1)
        mlp(torch.zeros(4, 16)).shape  # (4, 1)
    """

    def __init__(self, input_dim: int, hidden: list[int], dropout: float = 0.0, output_dim: int | None = None,
                 batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for h in hidden:
            layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if batch_norm else []), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        self.net = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
