from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..layers import CompressedInteractionNet
from .wide_deep import FirstOrderInteractionDeep


@dataclass(frozen=True)
class XDeepFMConfig:
    emb_dim: int = 16
    cin_layers: list[int] = field(default_factory=lambda: [64, 64])
    hidden: list[int] = field(default_factory=lambda: [400, 400])
    dropout: float = 0.1


class XDeepFM(FirstOrderInteractionDeep):
    """First-order term + CIN (explicit vector-wise interactions) + deep MLP."""

    name = "xdeepfm"
    Config = XDeepFMConfig

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: XDeepFMConfig):
        self._cin_layers = cfg.cin_layers
        super().__init__(vocab_sizes, num_numeric, cfg.emb_dim, cfg.hidden, cfg.dropout)

    def interaction_arch(self, num_fields: int) -> nn.Module:
        return CompressedInteractionNet(num_fields, self._cin_layers)
