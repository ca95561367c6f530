from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..layers import FMInteraction
from .wide_deep import FirstOrderInteractionDeep


@dataclass(frozen=True)
class DeepFMConfig:
    emb_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = 0.1


class DeepFM(FirstOrderInteractionDeep):
    """First-order term + FM interaction + deep MLP over the shared field embeddings."""

    name = "deepfm"
    Config = DeepFMConfig

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: DeepFMConfig):
        super().__init__(vocab_sizes, num_numeric, cfg.emb_dim, cfg.hidden, cfg.dropout)

    def interaction_arch(self, num_fields: int) -> nn.Module:
        return FMInteraction()
