"""Focal loss for LightGBM as a custom objective (gradient and hessian in the raw score).

FL(p, y) = −α y (1−p)^γ log p − (1−α)(1−y) p^γ log(1−p),  p = σ(z).
With γ = 0 and α = ½ it is half the log loss. Hessians can be negative away from the optimum;
LightGBM needs them positive, so :func:`focal_objective` floors them at ``min_hessian``.
Early stopping of focal models uses the focal loss itself on the validation rows (:func:`focal_eval`):
LightGBM's built-in metrics do not know the link of a custom objective.
"""
from __future__ import annotations

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def focal_loss(z: np.ndarray, y: np.ndarray, alpha: float, gamma: float) -> np.ndarray:
    """Per-row focal loss of raw scores ``z``."""
    p = np.clip(_sigmoid(z), 1e-12, 1 - 1e-12)
    return -alpha * y * (1 - p) ** gamma * np.log(p) - (1 - alpha) * (1 - y) * p ** gamma * np.log(1 - p)


def focal_grad_hess(z: np.ndarray, y: np.ndarray, alpha: float, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """d FL / dz and d² FL / dz² (exact, may be negative)."""
    p = np.clip(_sigmoid(z), 1e-12, 1 - 1e-12)
    q = 1 - p
    dp = p * q
    log_p, log_q = np.log(p), np.log(q)
    # positives: g1 = α q^γ (γ p log p − q)
    g1 = alpha * q ** gamma * (gamma * p * log_p - q)
    dg1 = alpha * (-gamma * q ** (gamma - 1) * (gamma * p * log_p - q) + q ** gamma * (gamma * (log_p + 1) + 1))
    # negatives: g0 = (1−α) p^γ (p − γ q log q)
    g0 = (1 - alpha) * p ** gamma * (p - gamma * q * log_q)
    dg0 = (1 - alpha) * (gamma * p ** (gamma - 1) * (p - gamma * q * log_q) + p ** gamma * (1 + gamma * log_q + gamma))
    grad = np.where(y > 0, g1, g0)
    hess = np.where(y > 0, dg1, dg0) * dp
    return grad, hess


def focal_objective(alpha: float, gamma: float, min_hessian: float):
    """A LightGBM custom objective ``(preds, dataset) -> (grad, hess)`` for the focal loss.

    On rare positives the exact hessian of the (many) easy negatives is nearly zero, which makes
    Newton leaf values explode; the floor ``min_hessian`` (conf: base_models.focal.min_hessian)
    damps them. Re-checked on the demo's training owners only (fold 0 out of fold, 141 positives,
    ``bench/focal_floor.py``): log loss falls from 1e-3 to 1e-1 beyond its interval; 0.03 is the default.
    """
    def objective(preds: np.ndarray, dataset) -> tuple[np.ndarray, np.ndarray]:
        # LightGBM's scores already start from the dataset's init_score
        grad, hess = focal_grad_hess(preds, dataset.get_label(), alpha, gamma)
        return grad, np.maximum(hess, min_hessian)

    return objective


def focal_eval(alpha: float, gamma: float):
    """A LightGBM ``feval``: mean focal loss of the raw scores, for early stopping (lower is better)."""
    def evaluate(preds: np.ndarray, dataset) -> tuple[str, float, bool]:
        return "focal_loss", float(focal_loss(preds, dataset.get_label(), alpha, gamma).mean()), False

    return evaluate
