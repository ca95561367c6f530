"""Meta-models that fuse the M base predictions into one probability (REMEDI §3.4 and baselines).

All of them share one small contract: ``fit(X, y, groups)`` on the out-of-fold meta-feature
matrix (columns in Algorithm 1's order, see :mod:`.meta_features`) and ``predict(X)`` returning
probabilities. The meta data is small (one row per owner-month, 4M + 6 numbers), so meta-models
train in one process on the driver; scoring a month runs them inside a pandas UDF.

* :class:`HybridExpert` — the teacher head: raw branch MLP over p_1..p_M, relative branch MLP over
  the other 3M + 6 columns, concatenated into an output MLP (``NoHybrid`` = one MLP over all).
* :class:`SimpleAverage`, :class:`WeightedAverage` (non-negative weights summing to 1, fitted
  by minimising OOF log loss), :class:`StackingLogistic` (logistic regression on logit p),
  :class:`StackingGBDT` (LightGBM on raw p only).
"""
from __future__ import annotations

import io
import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..models.neural.layers import MLPBlock

EPS = 1e-7


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def holdout_mask(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded per-group (owner) hold-out for early stopping: a group's rows are all in or all out."""
    unique = np.unique(groups)
    rng = np.random.default_rng(seed)
    chosen = unique[rng.random(len(unique)) < fraction]
    return np.isin(groups, chosen)


class MetaModel(ABC):
    """A fusion strategy over the meta-feature matrix of M base models."""

    name: ClassVar[str]

    def __init__(self, m: int):
        self.m = m

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> "MetaModel":
        """Fit on meta-features ``x`` (N, 4M + 6), labels ``y`` and owner ids ``groups``."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N,)."""

    def raw(self, x: np.ndarray) -> np.ndarray:
        return x[:, : self.m]


class SimpleAverage(MetaModel):
    name = "simple_average"

    def fit(self, x, y, groups):
        return self

    def predict(self, x):
        return self.raw(x).mean(axis=1)


class WeightedAverage(MetaModel):
    """Σ w_j p_j with w = softmax(θ): non-negative and summing to 1 by construction."""

    name = "weighted_average"

    def fit(self, x, y, groups):
        from scipy.optimize import minimize

        p = self.raw(x)

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = np.exp(theta - theta.max())
            w /= w.sum()
            q = np.clip(p @ w, EPS, 1 - EPS)
            dq = (q - y) / (q * (1 - q)) / len(y)  # d logloss / d q
            grad_w = p.T @ dq
            return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))), w * (grad_w - w @ grad_w)

        theta = minimize(loss, np.zeros(self.m), jac=True, method="L-BFGS-B").x
        self.weights = np.exp(theta - theta.max()) / np.exp(theta - theta.max()).sum()
        return self

    def predict(self, x):
        return self.raw(x) @ self.weights


class StackingLogistic(MetaModel):
    """Logistic regression on the base models' logits (standardised)."""

    name = "stacking_lr"

    def fit(self, x, y, groups):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        self.model.fit(_logit(self.raw(x)), y)
        return self

    def predict(self, x):
        return self.model.predict_proba(_logit(self.raw(x)))[:, 1]


class StackingGBDT(MetaModel):
    """LightGBM on the raw predictions only, early-stopped on an owner-grouped hold-out."""

    name = "stacking_gbdt"
    params: ClassVar[dict[str, Any]] = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15,
                                        "min_data_in_leaf": 200, "lambda_l2": 1.0, "verbosity": -1,
                                        "num_threads": 2, "seed": 7}

    def fit(self, x, y, groups):
        import lightgbm as lgb

        hold = holdout_mask(groups, 0.1, seed=7)
        train = lgb.Dataset(self.raw(x)[~hold], y[~hold])
        valid = lgb.Dataset(self.raw(x)[hold], y[hold], reference=train)
        self.booster = lgb.train(self.params, train, num_boost_round=400, valid_sets=[valid],
                                 callbacks=[lgb.early_stopping(30, verbose=False)])
        return self

    def predict(self, x):
        return self.booster.predict(self.raw(x), num_iteration=self.booster.best_iteration)


@dataclass(frozen=True)
class ExpertConfig:
    """Hybrid-expert / No-Hybrid network and training knobs (``fusion.meta_model`` in conf)."""

    raw_hidden: list[int] = field(default_factory=lambda: [16])
    relative_hidden: list[int] = field(default_factory=lambda: [64, 32])
    output_hidden: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.1
    batch_norm: bool = False
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 2048
    lr: float = 1e-3
    patience: int = 3
    valid_fraction: float = 0.1
    seed: int = 7


class ExpertNet(nn.Module):
    """hybrid=True: raw branch over the first ``m`` inputs, relative branch over the rest, concatenated,
    output MLP → logit. hybrid=False: one MLP over all inputs (the No-Hybrid ablation)."""

    def __init__(self, m: int, width: int, cfg: ExpertConfig, hybrid: bool):
        super().__init__()
        self.m, self.hybrid = m, hybrid
        if hybrid:
            self.raw = MLPBlock(m, cfg.raw_hidden, cfg.dropout, batch_norm=cfg.batch_norm)
            self.relative = MLPBlock(width - m, cfg.relative_hidden, cfg.dropout, batch_norm=cfg.batch_norm)
            joined = self.raw.output_dim + self.relative.output_dim
        else:
            self.all = MLPBlock(width, cfg.relative_hidden, cfg.dropout, batch_norm=cfg.batch_norm)
            joined = self.all.output_dim
        self.over = MLPBlock(joined, cfg.output_hidden, cfg.dropout, output_dim=1, batch_norm=cfg.batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.raw(x[:, : self.m]), self.relative(x[:, self.m:])], dim=1) if self.hybrid else self.all(x)
        return self.over(h).squeeze(-1)


class HybridExpert(MetaModel):
    """The REMEDI teacher head, trained with BCE; inputs standardised with the training statistics
    (raw p as logits, so tiny probabilities are not flattened near zero)."""

    name = "hybrid_expert"
    hybrid = True

    def __init__(self, m: int, cfg: ExpertConfig | None = None):
        super().__init__(m)
        self.cfg = cfg or ExpertConfig()

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        z = np.concatenate([_logit(self.raw(x)), x[:, self.m:]], axis=1)
        return ((z - self.mean) / self.std).astype(np.float32)

    def fit(self, x, y, groups):
        from sklearn.metrics import roc_auc_score

        cfg = self.cfg
        z = np.concatenate([_logit(self.raw(x)), x[:, self.m:]], axis=1)
        self.mean, self.std = z.mean(axis=0), z.std(axis=0)
        self.std[self.std == 0] = 1.0
        inputs = self._inputs(x)
        hold = holdout_mask(groups, cfg.valid_fraction, cfg.seed)
        xt, yt = torch.from_numpy(inputs[~hold]), torch.from_numpy(y[~hold].astype(np.float32))
        xv, yv = torch.from_numpy(inputs[hold]), y[hold]
        torch.manual_seed(cfg.seed)
        self.net = ExpertNet(self.m, inputs.shape[1], cfg, self.hybrid)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(cfg.seed)
        best, best_state, stale = -np.inf, None, 0
        self.history = []
        for _ in range(cfg.epochs):
            self.net.train()
            order = torch.from_numpy(rng.permutation(len(yt)))
            for start in range(0, len(yt) - cfg.batch_size + 1, cfg.batch_size):
                i = order[start:start + cfg.batch_size]
                loss = loss_fn(self.net(xt[i]), yt[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            self.net.eval()
            with torch.no_grad():
                auc = float(roc_auc_score(yv, self.net(xv).numpy())) if 0 < yv.sum() < len(yv) else 0.0
            self.history.append(auc)
            if auc > best:
                best, stale = auc, 0
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        self.net.load_state_dict(best_state)
        self.net.eval()
        self.valid_auc = best
        return self

    def predict(self, x):
        with torch.no_grad():
            logit = self.net(torch.from_numpy(self._inputs(x))).numpy().astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logit))

    def to_bytes(self, extra: dict[str, Any] | None = None) -> tuple[bytes, str]:
        """(state_dict bytes for torch.load(weights_only=True), JSON with config, input scaling, ``extra``)."""
        buffer = io.BytesIO()
        torch.save(self.net.state_dict(), buffer)
        meta = {"kind": self.name, "m": self.m, "width": int(len(self.mean)), "config": asdict(self.cfg),
                "mean": self.mean.tolist(), "std": self.std.tolist(), "valid_auc": self.valid_auc, **(extra or {})}
        return buffer.getvalue(), json.dumps(meta, indent=2)

    @classmethod
    def from_bytes(cls, state: bytes, meta_json: str) -> "HybridExpert":
        meta = json.loads(meta_json)
        kind = {c.name: c for c in (HybridExpert, NoHybrid)}[meta["kind"]]
        model = kind(meta["m"], ExpertConfig(**meta["config"]))
        model.mean, model.std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        model.valid_auc = meta["valid_auc"]
        model.net = ExpertNet(model.m, meta["width"], model.cfg, model.hybrid)
        model.net.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        model.net.eval()
        return model


class NoHybrid(HybridExpert):
    """Ablation: the same training, one MLP over all 4M + 6 meta-features."""

    name = "no_hybrid"
    hybrid = False


STRATEGIES: dict[str, type[MetaModel]] = {c.name: c for c in (
    SimpleAverage, WeightedAverage, StackingLogistic, StackingGBDT, NoHybrid, HybridExpert)}
