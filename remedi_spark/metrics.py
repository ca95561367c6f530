"""Lead-list metrics (REMEDI §3.2) on arrays of labels and scores.

* Precision@K = buyers among the top K / K.
* Business Recall@K = buyers among the top K / (all buyers / 3): the denominator is the average
  number of buyers per month of the three-month window.
* Lift@K = Precision@K / base rate. AUC and LogLoss come from scikit-learn.

K defaults to ``k_fraction`` (7.5%, i.e. 60,000 of 800,000) of the population. Ties at the
cut-off are broken by a stable sort on the score (the first-listed row wins), so results are
deterministic.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def top_k_hits(y: np.ndarray, score: np.ndarray, k: int) -> int:
    """Number of positives among the ``k`` highest scores (``k`` larger than the population: all)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    return int(np.asarray(y)[order[: max(int(k), 0)]].sum())


def k_for(n_rows: int, k_fraction: float) -> int:
    """K scaled to the population: ``round(k_fraction * n_rows)``, at least 1."""
    return max(1, int(round(k_fraction * n_rows)))


def lead_metrics(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, float]:
    """P@K, Business Recall@K, Lift@K, AUC and LogLoss of probabilities ``p`` for labels ``y``."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    positives = int(y.sum())
    hits = top_k_hits(y, p, k)
    precision = hits / k
    base_rate = positives / len(y) if len(y) else 0.0
    both = positives > 0 and positives < len(y)
    return {
        "rows": float(len(y)), "positives": float(positives), "k": float(k), "hits_at_k": float(hits),
        "precision_at_k": precision,
        "business_recall_at_k": hits / (positives / 3.0) if positives else float("nan"),
        "lift_at_k": precision / base_rate if base_rate else float("nan"),
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
    }
