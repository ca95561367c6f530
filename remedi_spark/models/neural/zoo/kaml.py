"""KAML (seed 001) for purchase horizons: one head per horizon T+1, T+2, T+3 on a shared trunk,
trained on every row although the newest months' later horizons are not observed yet.

How the paper's three parts map here (only the abstract and the method notes are at hand, so
this is our reading, stated so it can be checked):

* **Attribution-driven masking (ADM).** The paper's tasks are conversion types that an
  advertiser may not report; ours are the horizons y_h1..y_h3, and a horizon after the last
  observed month is unknown (NaN), not 0. Each head's BCE uses exactly the rows where its horizon
  is observed, averaged over the observed (row, horizon) entries, so a row of the newest month
  (nothing observed) adds no BCE at all and a row two months old trains only the T+1 head. The
  3-month union also gets a BCE term (``union_weight``), but only on rows whose three horizons
  are all observed: adding the union positives that an open window already shows (an observed
  y_h1 = 1) without its negatives would skew the union towards positives, which is the noise the
  paper warns the relaxed masking brings.
* **Hierarchical knowledge extraction (HKE).** The short horizon has the most labels, so the
  longer horizons build on it: head h reads the trunk output and head h−1's hidden state, and its
  logit is its own output plus a learned multiple (initially 1) of head h−1's logit.
  ``shared: false`` gives independent heads on the same trunk (the ablation).
* **Ranking loss on unlabeled rows.** A row whose horizon h is unknown is still information: it
  is a draw from the population (positive at the base rate, ~0.2% per month here), so a row that
  is known positive for h should score above it. Per head, every (positive, unknown) pair of the
  batch adds the pairwise logistic loss −log σ(z_pos − z_unknown) (RankNet/BPR); the term is the
  mean over the heads that have such pairs, weighted by ``rank_weight``. Ranking unknown rows
  above known negatives would be wrong for ~99.8% of the pairs, so negatives are not paired.

``forward`` returns ``logit`` = logit of the union 1 − Π_h(1 − σ(z_h)) (what scoring, validation
and the OOF table use) and ``horizon_logits`` (B, H).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..base import Batch, RemediModel, log_odds
from ..layers import FieldEmbedding, MLPBlock

HORIZONS = 3
_LN2 = 0.6931471805599453


def union_logit(horizon_logits: torch.Tensor) -> torch.Tensor:
    """logit of 1 − Π_h (1 − σ(z_h)) for logits (B, H), computed in log space.

    log(1 − p) = Σ_h log σ(−z_h) = S ≤ 0, so logit(p) = log(1 − e^S) − S; S is capped just below 0
    so that heads with very negative logits give a very negative, finite union logit.
    """
    s = (-F.softplus(horizon_logits)).sum(dim=1).clamp(max=-1e-30)
    near_zero, far = s.clamp(min=-_LN2), s.clamp(max=-_LN2)  # each branch finite, so are its gradients
    log_p = torch.where(s > -_LN2, torch.log(-torch.expm1(near_zero)), torch.log1p(-torch.exp(far)))
    return log_p - s


def masked_horizon_bce(horizon_logits: torch.Tensor, horizons: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the observed (row, horizon) entries; NaN labels contribute nothing (0 if none)."""
    observed = ~torch.isnan(horizons)
    target = torch.nan_to_num(horizons, nan=0.0)
    bce = F.binary_cross_entropy_with_logits(horizon_logits, target, reduction="none")
    return (bce * observed).sum() / observed.sum().clamp_min(1)


def complete_union_bce(logit: torch.Tensor, horizons: torch.Tensor) -> torch.Tensor:
    """BCE of the union logit on the rows whose horizons are all observed (0 if there are none)."""
    complete = ~torch.isnan(horizons).any(dim=1)
    if not complete.any():
        return logit.new_zeros(())
    y = horizons[complete].max(dim=1).values
    return F.binary_cross_entropy_with_logits(logit[complete], y)


def unlabeled_rank_loss(horizon_logits: torch.Tensor, horizons: torch.Tensor) -> torch.Tensor:
    """Per head, mean of −log σ(z_pos − z_unknown) over (known positive, unknown) row pairs of the
    batch; averaged over the heads that have at least one pair (0 if none has)."""
    terms = []
    for h in range(horizons.shape[1]):
        z, y = horizon_logits[:, h], horizons[:, h]
        pos, unknown = z[y == 1], z[torch.isnan(y)]
        if len(pos) and len(unknown):
            terms.append(F.softplus(unknown.unsqueeze(0) - pos.unsqueeze(1)).mean())
    return torch.stack(terms).mean() if terms else horizon_logits.new_zeros(())


@dataclass(frozen=True)
class KAMLConfig:
    emb_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [200, 200])  # shared trunk
    tower_hidden: list[int] = field(default_factory=lambda: [64])  # each horizon head
    dropout: float = 0.1
    shared: bool = True  # hierarchical heads (HKE); false = independent heads on the trunk
    rank_weight: float = 0.1  # pairwise ranking loss on unlabeled rows; 0 = off
    union_weight: float = 1.0  # BCE of the union on fully observed rows


class _HorizonHead(nn.Module):
    """One horizon's tower: (B, input_dim) → hidden (B, W) and logit (B,)."""

    def __init__(self, input_dim: int, hidden: list[int], dropout: float):
        super().__init__()
        self.tower = MLPBlock(input_dim, hidden, dropout)
        self.out = nn.Linear(self.tower.output_dim, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.tower(x)
        return hidden, self.out(hidden).squeeze(-1)


class KAML(RemediModel):
    """Shared trunk (field embeddings → MLP), one head per horizon, union of the heads as ``logit``.

    Example::

        m = KAML([4], num_numeric=3, cfg=KAMLConfig(emb_dim=4, hidden=[8], tower_hidden=[4]))
        out = m(Batch(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long)))
        out["horizon_logits"].shape  # (2, 3); out["logit"].shape == (2,)
    """

    name = "kaml"
    Config = KAMLConfig
    needs_horizons = True

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: KAMLConfig):
        super().__init__()
        if not cfg.tower_hidden:
            raise ValueError("KAML: tower_hidden needs at least one layer (the hidden state shared between heads)")
        if cfg.rank_weight < 0 or cfg.union_weight < 0:
            raise ValueError(f"KAML: rank_weight and union_weight must be >= 0, got {cfg.rank_weight}, "
                             f"{cfg.union_weight}")
        self.cfg = cfg
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, cfg.emb_dim)
        self.trunk = MLPBlock(self.embedding.num_fields * cfg.emb_dim, cfg.hidden, cfg.dropout)
        width = self.trunk.output_dim
        carry = cfg.tower_hidden[-1] if cfg.shared else 0
        self.heads = nn.ModuleList(_HorizonHead(width + (carry if h else 0), cfg.tower_hidden, cfg.dropout)
                                   for h in range(HORIZONS))
        self.carry = nn.Parameter(torch.ones(HORIZONS - 1)) if cfg.shared else None
        self.init_output_bias(0.01)  # until the trainer sets the training base rate

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """Each horizon starts at the monthly rate q with 1 − (1 − q)^H = ``base_rate`` (``y`` is the
        union of the H horizons), so the union logit starts at the base rate. With ``carry`` (initially
        1) a later head adds the earlier head's logit, so only the first head's bias holds logit(q)."""
        z = log_odds(1.0 - (1.0 - base_rate) ** (1.0 / HORIZONS))
        return [(head.out.bias, z if h == 0 or self.carry is None else 0.0) for h, head in enumerate(self.heads)]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        trunk = self.trunk(self.embedding(batch.dense, batch.cat_ids).flatten(1))
        logits, hidden, previous = [], None, None
        for h, head in enumerate(self.heads):
            x = trunk if hidden is None or self.carry is None else torch.cat([trunk, hidden], dim=1)
            hidden, z = head(x)
            if previous is not None and self.carry is not None:
                z = z + self.carry[h - 1] * previous
            logits.append(z)
            previous = z
        horizon_logits = torch.stack(logits, dim=1)
        return {"logit": union_logit(horizon_logits), "horizon_logits": horizon_logits}

    def compute_loss(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Masked horizon BCE + union BCE on complete rows + ranking loss on unknown horizons."""
        if batch.horizons is None:
            raise ValueError("KAML needs Batch.horizons (y_h1..y_h3, NaN = not observed)")
        z, h = out["horizon_logits"], batch.horizons
        horizon = masked_horizon_bce(z, h)
        union = complete_union_bce(out["logit"], h)
        rank = unlabeled_rank_loss(z, h)
        total = horizon + self.cfg.union_weight * union + self.cfg.rank_weight * rank
        return {"loss": total, "horizon_bce": horizon, "union_bce": union, "rank": rank}
