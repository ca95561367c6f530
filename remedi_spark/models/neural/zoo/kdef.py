"""KDEF (seed 003): K sub-networks on one shared embedding, trained with examination-weighted
teacher distillation and mutual distillation; the teacher is σ(mean_k z_k). See
../shared/notes/method.md "KDEF" for the loss this module implements exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Batch, RemediModel, log_odds
from ..layers import CompressedInteractionNet, CrossNet, FieldEmbedding, FMInteraction, MLPBlock


def kdef_loss(logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """KDEF loss of sub-network logits (B, K) for labels (B,).

    S_k = mean_b(1 − |y − p_k|) (examination score, not detached); λ = softmin(S);
    μ_k,l = softmax over l ≠ k of (S_l − S_k). loss = mean_k BCE(p_k, y)
    + Σ_k λ_k MSE(p_k, sg(p_T)) + (1/K) Σ_k Σ_{l≠k} μ_k,l MSE(p_k, sg(p_l)). No BCE on the ensemble.
    """
    k = logits.shape[1]
    p = torch.sigmoid(logits)
    teacher = torch.sigmoid(logits.mean(dim=1)).detach()
    y = label.unsqueeze(1).expand_as(p)
    exam = (1.0 - (y - p).abs()).mean(dim=0)  # (K,)
    ctr = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=0).mean()
    lam = torch.softmax(-exam, dim=0)
    kd = (lam * (p - teacher.unsqueeze(1)).pow(2).mean(dim=0)).sum()
    dml = logits.new_zeros(())
    if k > 1:
        pairwise = (p.unsqueeze(2) - p.detach().unsqueeze(1)).pow(2).mean(dim=0)  # [k, l] = MSE(p_k, sg p_l)
        gaps = exam.unsqueeze(0) - exam.unsqueeze(1)  # [k, l] = S_l − S_k
        gaps = gaps.masked_fill(torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf"))
        mu = torch.softmax(gaps, dim=1)
        dml = (mu * pairwise).sum() / k
    return {"loss": ctr + kd + dml, "ctr": ctr, "kd": kd, "dml": dml, "examination": exam.detach()}


@dataclass(frozen=True)
class KDEFConfig:
    emb_dim: int = 16
    subnets: list[str] = field(default_factory=lambda: ["mlp", "cross", "cin"])
    hidden: list[int] = field(default_factory=lambda: [400, 400, 400])
    cross_layers: int = 3
    cin_layers: list[int] = field(default_factory=lambda: [64, 64])
    dropout: float = 0.1


class _Head(nn.Module):
    """One sub-network over the shared fields (B, F, D) → logit (B,)."""

    def __init__(self, kind: str, num_fields: int, cfg: KDEFConfig):
        super().__init__()
        width = num_fields * cfg.emb_dim
        self.kind = kind
        if kind == "mlp":
            self.net = MLPBlock(width, cfg.hidden, cfg.dropout, output_dim=1)
        elif kind == "cross":
            self.net = nn.Sequential(CrossNet(width, cfg.cross_layers), nn.Linear(width, 1))
        elif kind == "cin":
            self.net = CompressedInteractionNet(num_fields, cfg.cin_layers)
        elif kind == "fm":
            self.fm, self.net = FMInteraction(), nn.Linear(width, 1)
        else:
            raise ValueError(f"KDEF: unknown sub-network {kind!r}; known: mlp, cross, cin, fm")

    def output_bias(self) -> torch.Tensor:
        """The bias of the linear layer that produces this head's logit."""
        if self.kind == "mlp":
            return self.net.net[-1].bias
        if self.kind == "cross":
            return self.net[-1].bias
        if self.kind == "cin":
            return self.net.fc.bias
        return self.net.bias  # fm: the linear term beside the FM interaction

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        if self.kind == "cin":
            return self.net(fields).squeeze(-1)
        out = self.net(fields.flatten(1)).squeeze(-1)
        return out + self.fm(fields).squeeze(-1) if self.kind == "fm" else out


class KDEF(RemediModel):
    """Shared embedding, K heads; ``logit`` is the teacher's (mean of the heads' logits)."""

    name = "kdef"
    Config = KDEFConfig

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: KDEFConfig):
        super().__init__()
        if not cfg.subnets:
            raise ValueError("KDEF needs at least one sub-network")
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, cfg.emb_dim)
        self.heads = nn.ModuleList(_Head(kind, self.embedding.num_fields, cfg) for kind in cfg.subnets)

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """Every head starts at the base rate, so the teacher σ(mean_k z_k) does too."""
        return [(head.output_bias(), log_odds(base_rate)) for head in self.heads]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        fields = self.embedding(batch.dense, batch.cat_ids)
        logits = torch.stack([head(fields) for head in self.heads], dim=1)  # (B, K)
        return {"logit": logits.mean(dim=1), "logits": logits}

    def compute_loss(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        return kdef_loss(out["logits"], batch.label)
