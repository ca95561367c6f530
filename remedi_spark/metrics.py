"""Lead-list metrics (REMEDI §3.2) on arrays of labels and scores.

* Precision@K = buyers among the top K / K.
* Business Recall@K = buyers among the top K / (all buyers / 3): the denominator is the average
  number of buyers per month of the three-month window.
* Lift@K = Precision@K / base rate. AUC and LogLoss come from scikit-learn.

K defaults to ``k_fraction`` (7.5%, i.e. 60,000 of 800,000) of the population. Ties at the
cut-off are broken by a stable sort on the score (the first-listed row wins), so results are
deterministic. A K larger than the population means the whole population is contacted: the
list holds ``min(K, n)`` owners and precision is taken over those.

The curve functions (:func:`ranked_curves`) give the same numbers at many K at once, for the
report's cumulative gains, lift and precision/recall-at-K plots.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def _cumulative_hits(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positives among the top 1, 2, ..., n scores (stable sort: ties keep the input order)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    return np.cumsum(np.asarray(y, dtype=np.int64)[order])


def top_k_hits(y: np.ndarray, score: np.ndarray, k: int) -> int:
    """Number of positives among the ``k`` highest scores (``k`` larger than the population: all)."""
    k = min(max(int(k), 0), len(y))
    return int(_cumulative_hits(y, score)[k - 1]) if k else 0


def precision_at_k(y: np.ndarray, score: np.ndarray, k: int) -> float:
    """Positives among the top ``k`` / the list length ``min(k, n)``."""
    n = min(max(int(k), 0), len(y))
    return top_k_hits(y, score, k) / n if n else float("nan")


def business_recall_at_k(y: np.ndarray, score: np.ndarray, k: int) -> float:
    """Positives among the top ``k`` / (all positives / 3): REMEDI's monthly-normalized recall."""
    positives = int(np.asarray(y).sum())
    return top_k_hits(y, score, k) / (positives / 3.0) if positives else float("nan")


def curve_ks(n_rows: int, points: int, extra: tuple[int, ...] = ()) -> np.ndarray:
    """About ``points`` list lengths from 1 to ``n_rows`` (half evenly, half log spaced so the top
    of the list, where lead lists live, is resolved too), plus any ``extra`` K."""
    half = max(2, points // 2)
    grid = np.concatenate([np.linspace(1, n_rows, num=half), np.geomspace(1, max(n_rows, 1), num=half)])
    ks = np.unique(grid.round().astype(np.int64))
    extra_ks = [min(max(int(k), 1), n_rows) for k in extra]
    return np.unique(np.concatenate([ks, np.asarray(extra_ks, dtype=np.int64)]))


def ranked_curves(y: np.ndarray, score: np.ndarray, ks: np.ndarray) -> dict[str, np.ndarray]:
    """At each list length K in ``ks`` (1..n): hits, precision, business recall, the cumulative
    gain (share of all positives in the list), the contacted share, and lift (precision / base rate)."""
    y = np.asarray(y, dtype=np.int64)
    n, positives = len(y), int(y.sum())
    ks = np.asarray(ks, dtype=np.int64)
    if n == 0 or ks.min() < 1 or ks.max() > n:
        raise ValueError(f"list lengths must lie in 1..{n}, got {ks.min() if len(ks) else None}..{ks.max() if len(ks) else None}")
    hits = _cumulative_hits(y, score)[ks - 1].astype(float)
    precision = hits / ks
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"k": ks, "hits": hits, "precision": precision,
                "business_recall": hits / (positives / 3.0) if positives else np.full(len(ks), np.nan),
                "gain": hits / positives if positives else np.full(len(ks), np.nan),
                "contacted": ks / n,
                "lift": precision / (positives / n) if positives else np.full(len(ks), np.nan)}


def k_for(n_rows: int, k_fraction: float) -> int:
    """K scaled to the population: ``round(k_fraction * n_rows)``, at least 1."""
    return max(1, int(round(k_fraction * n_rows)))


def lead_metrics(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, float]:
    """P@K, Business Recall@K, Lift@K, AUC and LogLoss of probabilities ``p`` for labels ``y``."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    positives = int(y.sum())
    precision = precision_at_k(y, p, k)
    base_rate = positives / len(y) if len(y) else 0.0
    both = positives > 0 and positives < len(y)
    return {
        "rows": float(len(y)), "positives": float(positives), "k": float(k), "hits_at_k": float(top_k_hits(y, p, k)),
        "precision_at_k": precision,
        "business_recall_at_k": business_recall_at_k(y, p, k),
        "lift_at_k": precision / base_rate if base_rate else float("nan"),
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
    }
