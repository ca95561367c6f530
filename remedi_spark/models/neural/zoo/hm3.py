"""HM3 (seed 002) for the purchase funnel: engagement → dealer visit → purchase, one head per path.

The paper models micro behaviours (clicks on page components) and macro behaviours (cart,
favourite) between a click and a conversion as a graph, predicts one probability per sub-path
and combines them by the conditional-probability rule, with auxiliary losses on the observable
intermediate nodes. Here the graph is the car buyer's funnel over the window T+1..T+3 (labels
from raw activity, see :func:`remedi_spark.features.build.funnel_labels`):

* ``e`` = digital engagement surge (``y_engage``), ``v`` = shopping dealer visit (``y_visit``),
  ``b`` = purchase (``y``).
* Five heads on one shared trunk: P(e), P(v | e), P(v | ¬e), P(b | v), P(b | ¬v).
* The factorisation (exact under the one assumption b ⫫ e | v, x)::

      P(v) = P(e) P(v | e) + (1 − P(e)) P(v | ¬e)
      P(b) = P(v) P(b | v) + (1 − P(v)) P(b | ¬v)

  i.e. P(b | x) = Σ_v P(b | v, x) Σ_e P(v | e, x) P(e | x). Why this one: a car is bought at a
  dealer, so online engagement is taken to act on buying through the visit (given the owner's
  features); it needs five heads instead of the seven of the full tree P(b | v, e), and each head
  sees enough positives (the ¬v branch keeps buyers who never show a shopping visit, e.g. visits
  logged as service or missing feeds). The three labels share one window, so "e then v then b"
  is the funnel's order, not a check of timing.
* The loss is BCE(P(b), y) + ``aux_weight`` × (BCE(P(e), y_engage) + BCE(P(v), y_visit)), each
  auxiliary term masked to the rows whose label is known (NaN = unknown). ``aux_weight = 0`` is
  the ablation without auxiliary tasks.
* ``hierarchical: false`` is the flat ablation: three independent heads P(e), P(v), P(b) on the
  trunk, P(b) from its own head (the auxiliary tasks are then plain multi-task learning).

``forward`` returns ``logit`` = logit P(b) (computed in log space from the head logits), the
logits of P(e) and P(v), and the probabilities ``p_engage``, ``p_visit`` (plus the conditional
heads when hierarchical) for analysis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ....features.labels import FUNNEL_LABELS
from ..base import Batch, RemediModel, log_odds
from ..layers import FieldEmbedding, MLPBlock

AUX_LABELS = FUNNEL_LABELS  # Batch.aux columns, in this order: y_engage, y_visit
HIERARCHICAL_HEADS = ("engage", "visit_given_engage", "visit_given_no_engage", "buy_given_visit",
                      "buy_given_no_visit")
FLAT_HEADS = ("engage", "visit", "buy")
# starting logits of the engagement and visit heads (plausible funnel rates); the buy heads start
# from the training base rate (HM3.output_bias_values), buyers after a visit BUY_RATIO times as often
_START = {"engage": -1.4, "visit": -2.2, "visit_given_engage": -1.4, "visit_given_no_engage": -3.0}
BUY_RATIO = 10.0  # P(b | v) / P(b | ¬v) at the start


def mixture_log_probs(log_w: torch.Tensor, log_not_w: torch.Tensor, z_yes: torch.Tensor, z_no: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p, log(1 − p)) of p = w σ(z_yes) + (1 − w) σ(z_no), from log w, log(1 − w) and two logits.

    Both come from logsumexp of log-sigmoids, so neither underflows to log 0 at extreme logits;
    the step P(v) → P(b) feeds them back in as ``log_w, log_not_w``.
    """
    log_p = torch.logaddexp(log_w + F.logsigmoid(z_yes), log_not_w + F.logsigmoid(z_no))
    log_not_p = torch.logaddexp(log_w + F.logsigmoid(-z_yes), log_not_w + F.logsigmoid(-z_no))
    return log_p, log_not_p


def funnel_logits(heads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The conditional-probability rule on the five head logits (B,) of :data:`HIERARCHICAL_HEADS`:
    ``{"engage", "visit", "buy"}`` logits of P(e), P(v), P(b)."""
    z_e = heads["engage"]
    log_v, log_not_v = mixture_log_probs(F.logsigmoid(z_e), F.logsigmoid(-z_e),
                                         heads["visit_given_engage"], heads["visit_given_no_engage"])
    log_b, log_not_b = mixture_log_probs(log_v, log_not_v, heads["buy_given_visit"], heads["buy_given_no_visit"])
    return {"engage": z_e, "visit": log_v - log_not_v, "buy": log_b - log_not_b}


def masked_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the rows whose target is known (NaN = unknown); 0 when none is."""
    known = ~torch.isnan(target)
    bce = F.binary_cross_entropy_with_logits(logit, torch.nan_to_num(target, nan=0.0), reduction="none")
    return (bce * known).sum() / known.sum().clamp_min(1)


@dataclass(frozen=True)
class HM3Config:
    emb_dim: int = 16
    hidden: list[int] = field(default_factory=lambda: [200, 200])  # shared trunk
    tower_hidden: list[int] = field(default_factory=lambda: [32])  # each head ([] = a linear head)
    dropout: float = 0.1
    hierarchical: bool = True  # conditional heads combined by the rule; false = flat engage/visit/buy heads
    aux_weight: float = 0.5  # weight of each auxiliary BCE (engage, visit); 0 = no auxiliary tasks


class HM3(RemediModel):
    """Shared trunk (field embeddings → MLP), one small tower per funnel head, P(b) by the funnel rule.

    Example::

        m = HM3([4], num_numeric=3, cfg=HM3Config(emb_dim=4, hidden=[8], tower_hidden=[4]))
        out = m(Batch(torch.zeros(2, 3), torch.zeros(2, 1, dtype=torch.long)))
        out["logit"].shape, out["p_visit"].shape  # (2,), (2,)
    """

    name = "hm3"
    Config = HM3Config
    aux_labels = AUX_LABELS

    def __init__(self, vocab_sizes: list[int], num_numeric: int, cfg: HM3Config):
        super().__init__()
        if cfg.aux_weight < 0:
            raise ValueError(f"HM3: aux_weight must be >= 0, got {cfg.aux_weight}")
        self.cfg = cfg
        self.embedding = FieldEmbedding(vocab_sizes, num_numeric, cfg.emb_dim)
        self.trunk = MLPBlock(self.embedding.num_fields * cfg.emb_dim, cfg.hidden, cfg.dropout)
        names = HIERARCHICAL_HEADS if cfg.hierarchical else FLAT_HEADS
        self.heads = nn.ModuleDict({n: MLPBlock(self.trunk.output_dim, cfg.tower_hidden, cfg.dropout, output_dim=1)
                                    for n in names})
        self.init_output_bias(0.01)  # until the trainer sets the training base rate

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """Engagement and visit heads start at plausible funnel rates (:data:`_START`); the buy heads so
        that P(b) by the funnel rule equals ``base_rate``: P(b | v) = BUY_RATIO × P(b | ¬v) (capped
        below 1) with P(v) the visit rate the visit heads start at; flat: the buy head is logit(base_rate)."""
        if not self.cfg.hierarchical:
            starts = {"engage": _START["engage"], "visit": _START["visit"], "buy": log_odds(base_rate)}
        else:
            sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
            p_e = sig(_START["engage"])
            p_v = p_e * sig(_START["visit_given_engage"]) + (1 - p_e) * sig(_START["visit_given_no_engage"])
            no_visit = base_rate / (p_v * BUY_RATIO + 1 - p_v)
            visit = min(BUY_RATIO * no_visit, 1 - 1e-6)
            no_visit = (base_rate - p_v * visit) / (1 - p_v)
            starts = {**_START, "buy_given_visit": log_odds(visit), "buy_given_no_visit": log_odds(no_visit)}
        return [(head.net[-1].bias, starts[n]) for n, head in self.heads.items()]

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        trunk = self.trunk(self.embedding(batch.dense, batch.cat_ids).flatten(1))
        heads = {n: head(trunk).squeeze(-1) for n, head in self.heads.items()}
        z = funnel_logits(heads) if self.cfg.hierarchical else heads
        out = {"logit": z["buy"], "engage_logit": z["engage"], "visit_logit": z["visit"],
               "p_engage": torch.sigmoid(z["engage"]), "p_visit": torch.sigmoid(z["visit"])}
        if self.cfg.hierarchical:
            out.update({f"p_{n}": torch.sigmoid(heads[n]) for n in HIERARCHICAL_HEADS[1:]})
        return out

    def compute_loss(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """BCE of P(b) + ``aux_weight`` × (masked BCE of P(e) vs y_engage + of P(v) vs y_visit)."""
        buy = F.binary_cross_entropy_with_logits(out["logit"], batch.label)
        if self.cfg.aux_weight == 0:
            zero = buy.new_zeros(())
            return {"loss": buy, "buy_bce": buy, "engage_bce": zero, "visit_bce": zero}
        if batch.aux is None or batch.aux.shape[1] != len(AUX_LABELS):
            raise ValueError(f"HM3 with aux_weight > 0 needs Batch.aux with columns {list(AUX_LABELS)} "
                             "(NaN = not observed)")
        engage = masked_bce(out["engage_logit"], batch.aux[:, 0])
        visit = masked_bce(out["visit_logit"], batch.aux[:, 1])
        total = buy + self.cfg.aux_weight * (engage + visit)
        return {"loss": total, "buy_bce": buy, "engage_bce": engage, "visit_bce": visit}
