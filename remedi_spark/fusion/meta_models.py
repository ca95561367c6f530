"""Meta-models that fuse the M base predictions into one probability (REMEDI §3.4 and baselines).

All of them share one small contract: ``fit(X, y, groups)`` on the out-of-fold meta-feature
matrix (columns in Algorithm 1's order, see :mod:`.meta_features`) and ``predict(X)`` returning
probabilities; ``fit(X, y, groups, rows)`` fits on rows ``rows`` of ``X`` without copying them out
(cross-fitting takes most of the rows of a matrix of GiBs at the paper's scale, several times). The
meta data is one row per owner-month, 4M + 6 numbers, so meta-models train in one process on the
driver; scoring a month runs them inside a pandas UDF.

* :class:`HybridExpert` — the teacher head: raw branch MLP over p_1..p_M, relative branch MLP over
  the other 3M + 6 columns, concatenated into an output MLP (``NoHybrid`` = one MLP over all).
  Two switches make it robust on small or weak stacks (see :class:`ExpertConfig`): a linear skip
  path from the raw logits, started at a stacked logistic regression, and bagging over seeds and
  hold-outs. Both off is the paper's head exactly.
* :class:`SimpleAverage`, :class:`WeightedAverage` (non-negative weights summing to 1, fitted
  by minimising OOF log loss), :class:`StackingLogistic` (logistic regression on logit p),
  :class:`StackingGBDT` (LightGBM on raw p only).

:func:`fit_strategy` fits any of them by name; :func:`to_bytes` / :func:`from_bytes` save and load
any fitted one without pickle (the teacher head can be whichever strategy the fusion stage chose).
"""
from __future__ import annotations

import copy
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..models.neural.layers import MLPBlock

EPS = 1e-7
_INPUT_ROWS = 65536  # rows per chunk when standardising a meta-feature matrix for the networks
_SCALE_COLUMNS = 8  # relative columns per block when computing their means and standard deviations


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: these networks are a few thousand weights, and torch's
    thread pool spinning against Spark's busy executors made a fit ~20x slower (13.6 s against
    0.7 s for 1,000 rows on 2 cores during a train-base run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


def _scale_of(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of ``z`` for standardising (a constant column keeps scale 1)."""
    mean, scale = z.mean(axis=0), z.std(axis=0)
    scale[scale == 0] = 1.0
    return mean, scale


class MetaModel(ABC):
    """A fusion strategy over the meta-feature matrix of M base models."""

    name: ClassVar[str]

    def __init__(self, m: int):
        self.m = m

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray, rows: np.ndarray | None = None) -> "MetaModel":
        """Fit on meta-features ``x`` (N, 4M + 6), labels ``y`` and owner ids ``groups``; with ``rows``,
        on those rows of ``x`` only (``y`` and ``groups`` are then theirs), the same as on ``x[rows]``
        but gathering only the columns or row chunks a step needs."""

    @abstractmethod
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N,)."""

    def raw(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """The base models' probabilities p_1..p_M: the first M columns (of ``rows`` only, when given)."""
        return x[:, : self.m] if rows is None else x[rows, : self.m]

    def state(self) -> tuple[bytes, dict[str, Any]]:
        """What a fitted model needs to predict again: (binary state, JSON-able metadata)."""
        return b"", {}

    @classmethod
    def from_state(cls, m: int, state: bytes, meta: dict[str, Any]) -> "MetaModel":
        return cls(m)


class SimpleAverage(MetaModel):
    name = "simple_average"

    def fit(self, x, y, groups, rows=None):
        return self

    def predict(self, x):
        return self.raw(x).mean(axis=1)


class WeightedAverage(MetaModel):
    """Σ w_j p_j with w = softmax(θ): non-negative and summing to 1 by construction."""

    name = "weighted_average"

    def fit(self, x, y, groups, rows=None):
        from scipy.optimize import minimize

        p = self.raw(x, rows)

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

    def state(self):
        return b"", {"weights": self.weights.tolist()}

    @classmethod
    def from_state(cls, m, state, meta):
        model = cls(m)
        model.weights = np.asarray(meta["weights"])
        return model


class StackingLogistic(MetaModel):
    """Logistic regression (C = 1) on the base models' logits, standardised with the fit rows' statistics."""

    name = "stacking_lr"

    def fit(self, x, y, groups, rows=None):
        from sklearn.linear_model import LogisticRegression

        z = _logit(self.raw(x, rows))
        self.mean, self.scale = _scale_of(z)
        lr = LogisticRegression(C=1.0, max_iter=2000).fit((z - self.mean) / self.scale, y)
        self.coef, self.intercept = lr.coef_[0], float(lr.intercept_[0])
        return self

    def predict(self, x):
        logit = ((_logit(self.raw(x)) - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logit))

    def state(self):
        return b"", {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                     "intercept": self.intercept}

    @classmethod
    def from_state(cls, m, state, meta):
        model = cls(m)
        model.mean, model.scale, model.coef = (np.asarray(meta[k]) for k in ("mean", "scale", "coef"))
        model.intercept = meta["intercept"]
        return model


class StackingGBDT(MetaModel):
    """LightGBM on the raw predictions only, early-stopped on an owner-grouped, label-stratified hold-out."""

    name = "stacking_gbdt"
    params: ClassVar[dict[str, Any]] = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15,
                                        "min_data_in_leaf": 200, "lambda_l2": 1.0, "verbosity": -1,
                                        "num_threads": 2, "seed": 7, "deterministic": True, "force_col_wise": True}

    def fit(self, x, y, groups, rows=None):
        import lightgbm as lgb

        hold = stratified_holdout(groups, y, 0.1, seed=7)
        # on small tables 200 rows per leaf would leave no split: at most a tenth of the fit rows
        params = {**self.params, "min_data_in_leaf": int(min(200, max(5, (~hold).sum() // 10)))}
        p = self.raw(x, rows)
        train = lgb.Dataset(p[~hold], y[~hold])
        valid = lgb.Dataset(p[hold], y[hold], reference=train)
        self.booster = lgb.train(params, train, num_boost_round=400, valid_sets=[valid],
                                 callbacks=[lgb.early_stopping(30, verbose=False)])
        return self

    def predict(self, x):
        return self.booster.predict(self.raw(x), num_iteration=self.booster.best_iteration)

    def state(self):
        return self.booster.model_to_string().encode(), {"best_iteration": int(self.booster.best_iteration)}

    @classmethod
    def from_state(cls, m, state, meta):
        import lightgbm as lgb

        model = cls(m)
        model.booster = lgb.Booster(model_str=state.decode())
        model.booster.best_iteration = meta["best_iteration"]
        return model


@dataclass(frozen=True)
class ExpertConfig:
    """Hybrid-expert / No-Hybrid network and training knobs (``fusion.meta_model`` in conf; the
    defaults here and there agree, a test checks it).

    Training does not depend on the row count: an epoch has at least ``min_steps_per_epoch``
    optimiser steps (the batch shrinks on small data), the output starts at the training base
    rate, and early stopping watches the log loss of an owner-grouped, label-stratified hold-out
    whose share grows (up to half the owners) until it expects ``min_valid_positives`` positives.
    ``linear_skip`` adds a linear path from the raw logits to the output logit, initialised at a
    stacked logistic regression, with the MLP's output layer at zero: the head starts as that
    stack and can fall back to it. ``bags`` > 1 averages the logits of that many networks, each
    with its own seed and hold-out. ``linear_skip: false, bags: 1`` is the paper's head exactly.
    """

    raw_hidden: list[int] = field(default_factory=lambda: [16])
    relative_hidden: list[int] = field(default_factory=lambda: [64, 32])
    output_hidden: list[int] = field(default_factory=lambda: [16])
    dropout: float = 0.1
    batch_norm: bool = False
    weight_decay: float = 0.01
    epochs: int = 30
    batch_size: int = 2048
    min_steps_per_epoch: int = 20
    lr: float = 1e-3
    patience: int = 3
    valid_fraction: float = 0.1
    min_valid_positives: int = 10
    linear_skip: bool = True
    bags: int = 3
    seed: int = 7

    def __post_init__(self) -> None:
        checks = {"epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
                  "min_steps_per_epoch": self.min_steps_per_epoch >= 1, "patience": self.patience >= 1,
                  "valid_fraction": 0 < self.valid_fraction < 1, "min_valid_positives": self.min_valid_positives >= 1,
                  "weight_decay": self.weight_decay >= 0, "bags": self.bags >= 1, "dropout": 0 <= self.dropout < 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ExpertConfig: invalid values for {bad}: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad))


class ExpertNet(nn.Module):
    """hybrid=True: raw branch over the first ``m`` inputs, relative branch over the rest, concatenated,
    output MLP → logit. hybrid=False: one MLP over all inputs (the No-Hybrid ablation). With
    ``linear_skip`` a linear map of the raw inputs is added to the output logit."""

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
        self.skip = nn.Linear(m, 1) if cfg.linear_skip else None

    @property
    def output_layer(self) -> nn.Linear:
        return self.over.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.raw(x[:, : self.m]), self.relative(x[:, self.m:])], dim=1) if self.hybrid else self.all(x)
        out = self.over(h).squeeze(-1)
        if self.skip is not None:
            out = out + self.skip(x[:, : self.m]).squeeze(-1)
        return out


def stratified_holdout(groups: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Owner-grouped hold-out stratified by label: ``fraction`` of the owners with a positive row
    and ``fraction`` of the others (rounded up), so the hold-out's positives do not depend on luck."""
    owners, inverse = np.unique(groups, return_inverse=True)
    positive = np.zeros(len(owners), dtype=bool)
    np.logical_or.at(positive, inverse, np.asarray(y) > 0.5)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(owners), dtype=bool)
    for stratum in (positive, ~positive):
        idx = np.flatnonzero(stratum)
        take = int(np.ceil(fraction * len(idx)))
        chosen[rng.permutation(idx)[:take]] = True
    return chosen[inverse]


class HybridExpert(MetaModel):
    """The REMEDI teacher head, trained with BCE; inputs standardised with the training statistics
    (raw p as logits, so tiny probabilities are not flattened near zero)."""

    name = "hybrid_expert"
    hybrid = True

    def __init__(self, m: int, cfg: ExpertConfig | None = None):
        super().__init__(m)
        self.cfg = cfg or ExpertConfig()

    def _unscaled(self, x: np.ndarray) -> np.ndarray:
        """The network's inputs before standardising: raw p as logits, then the relative columns."""
        return np.concatenate([_logit(self.raw(x)), x[:, self.m:]], axis=1)

    def _scale(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:func:`_scale_of` of :meth:`_unscaled` ``(x)`` (of ``x[rows]``), a few columns at a time: the same
        numbers (each column's mean and std are reductions over that column alone) without materialising
        the unscaled matrix and its centred copy (two float64 copies of the fit rows at 800k owners)."""
        relative = [slice(a, a + _SCALE_COLUMNS) for a in range(self.m, x.shape[1], _SCALE_COLUMNS)]
        blocks = [_logit(self.raw(x, rows))] + [x[:, c] if rows is None else x[rows, c] for c in relative]
        stats = [_scale_of(block) for block in blocks]
        return np.concatenate([mean for mean, _ in stats]), np.concatenate([scale for _, scale in stats])

    def _inputs(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Standardised float32 network inputs of ``x`` (of ``x[rows]``), built ``_INPUT_ROWS`` rows at a
        time (element-wise, so the same numbers as in one piece, with float64 temporaries of one chunk only)."""
        n = len(x) if rows is None else len(rows)
        out = np.empty((n, len(self.mean)), dtype=np.float32)
        for a in range(0, n, _INPUT_ROWS):
            z = self._unscaled(x[a:a + _INPUT_ROWS] if rows is None else x[rows[a:a + _INPUT_ROWS]])
            z -= self.mean
            z /= self.std
            out[a:a + _INPUT_ROWS] = z
        return out

    def _holdout(self, y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
        cfg = self.cfg
        positives = float(y.sum())
        wanted = 1.2 * cfg.min_valid_positives / positives if positives else 1.0
        hold = stratified_holdout(groups, y, min(0.5, max(cfg.valid_fraction, wanted)), seed)
        held = int(y[hold].sum())
        if held < cfg.min_valid_positives:
            raise ValueError(f"{self.name}: the early-stopping hold-out has {held} positives in {int(hold.sum()):,} rows "
                             f"(of {len(y):,} fit rows with {int(positives)} positives); at least "
                             f"{cfg.min_valid_positives} are needed to stop on its log loss: fit on more rows, or lower "
                             f"fusion.meta_model.min_valid_positives")
        if held == int(hold.sum()) or int(positives) - held == 0:
            raise ValueError(f"{self.name}: the hold-out leaves no negatives or no training positives "
                             f"({held} of {int(positives)} positives held out in {int(hold.sum()):,} rows)")
        return hold

    def _init_output(self, net: ExpertNet, raw_inputs: np.ndarray, y: np.ndarray) -> None:
        """Output at the base rate's log-odds; with the skip path, the skip at a stacked logistic
        regression on ``raw_inputs`` (the training rows' standardised raw logits: the first M input
        columns) and the MLP's output layer at zero."""
        layer = net.output_layer
        with torch.no_grad():
            if net.skip is None:
                rate = float(np.clip(y.mean(), EPS, 1 - EPS))
                layer.bias.fill_(float(np.log(rate / (1 - rate))))
                return
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1.0, max_iter=2000).fit(raw_inputs, y)
            net.skip.weight.copy_(torch.from_numpy(lr.coef_.astype(np.float32)))
            net.skip.bias.fill_(float(lr.intercept_[0]))
            layer.weight.zero_()
            layer.bias.zero_()

    def _fit_one(self, inputs: np.ndarray, y: np.ndarray, groups: np.ndarray, bag: int) -> tuple[ExpertNet, list[float]]:
        cfg = self.cfg
        seed = cfg.seed + 1000 * bag
        hold = self._holdout(y, groups, seed)
        # training batches are gathered from ``inputs`` by row number: no copy of the training rows
        train, yt = torch.from_numpy(np.flatnonzero(~hold)), torch.from_numpy(y[~hold].astype(np.float32))
        xall = torch.from_numpy(inputs)
        xv, yv = torch.from_numpy(inputs[hold]), torch.from_numpy(y[hold].astype(np.float32))
        torch.manual_seed(seed)
        net = ExpertNet(self.m, inputs.shape[1], cfg, self.hybrid)
        self._init_output(net, inputs[~hold, : self.m], y[~hold])
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        loss_fn = nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(seed)
        n = len(yt)
        steps = max(cfg.min_steps_per_epoch, -(-n // cfg.batch_size))  # ceil: the batch shrinks on small data
        bounds = np.linspace(0, n, steps + 1).round().astype(int)

        def valid_loss() -> float:
            net.eval()
            with torch.no_grad():
                return float(loss_fn(net(xv), yv))

        best = valid_loss()  # the starting point (base rate or the stacked LR) is a candidate too
        best_state, stale, history = copy.deepcopy(net.state_dict()), 0, [best]
        for _ in range(cfg.epochs):
            net.train()
            order = torch.from_numpy(rng.permutation(n))
            for a, b in zip(bounds[:-1], bounds[1:]):
                i = order[a:b]
                loss = loss_fn(net(xall[train[i]]), yt[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            history.append(valid_loss())
            if history[-1] < best - 1e-6:
                best, stale, best_state = history[-1], 0, copy.deepcopy(net.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        net.load_state_dict(best_state)
        net.eval()
        return net, history

    def fit(self, x, y, groups, rows=None):
        self.mean, self.std = self._scale(x, rows)
        inputs = self._inputs(x, rows)
        y = np.asarray(y, dtype=np.float64)
        with one_torch_thread():
            fitted = [self._fit_one(inputs, y, groups, bag) for bag in range(self.cfg.bags)]
        self.nets = nn.ModuleList([net for net, _ in fitted])
        self.history = [h for _, h in fitted]
        self.valid_logloss = float(np.mean([min(h) for h in self.history]))
        return self

    def predict(self, x):
        inputs = torch.from_numpy(self._inputs(x))
        # the bags' mean logit, a chunk of rows at a time: each row's numbers do not depend on the others,
        # and the networks' activations over every owner-month (GiBs at 800k owners) never coexist
        with torch.no_grad(), one_torch_thread():
            logit = torch.cat([torch.stack([net(part) for net in self.nets]).mean(dim=0)
                               for part in inputs.split(_INPUT_ROWS)]).numpy().astype(np.float64)
        return 1.0 / (1.0 + np.exp(-logit))

    def state(self) -> tuple[bytes, dict[str, Any]]:
        buffer = io.BytesIO()
        torch.save(self.nets.state_dict(), buffer)
        return buffer.getvalue(), {"width": int(len(self.mean)), "config": asdict(self.cfg), "mean": self.mean.tolist(),
                                   "std": self.std.tolist(), "valid_logloss": self.valid_logloss}

    @classmethod
    def from_state(cls, m: int, state: bytes, meta: dict[str, Any]) -> "HybridExpert":
        model = cls(m, ExpertConfig(**meta["config"]))
        model.mean, model.std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        model.valid_logloss = meta["valid_logloss"]
        model.nets = nn.ModuleList([ExpertNet(m, meta["width"], model.cfg, model.hybrid) for _ in range(model.cfg.bags)])
        model.nets.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        model.nets.eval()
        return model


class NoHybrid(HybridExpert):
    """Ablation: the same training, one MLP over all 4M + 6 meta-features."""

    name = "no_hybrid"
    hybrid = False


STRATEGIES: dict[str, type[MetaModel]] = {c.name: c for c in (
    SimpleAverage, WeightedAverage, StackingLogistic, StackingGBDT, NoHybrid, HybridExpert)}


def fit_strategy(name: str, m: int, x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                 expert: ExpertConfig, rows: np.ndarray | None = None) -> MetaModel:
    """The one entry point that fits a fusion strategy by name (``expert`` configures the networks);
    with ``rows``, on those rows of ``x`` (``y`` and ``groups`` being theirs), as on ``x[rows]``."""
    cls = STRATEGIES[name]
    model = cls(m, expert) if issubclass(cls, HybridExpert) else cls(m)
    return model.fit(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), np.asarray(groups),
                     None if rows is None else np.asarray(rows))


def to_bytes(model: MetaModel, extra: dict[str, Any] | None = None) -> tuple[bytes, str]:
    """A fitted strategy as (binary state, JSON with its kind, M and ``extra``): no pickle — torch
    state_dicts (read with weights_only), LightGBM model text, or plain numbers."""
    state, meta = model.state()
    return state, json.dumps({"kind": model.name, "m": model.m, **meta, **(extra or {})}, indent=2)


def from_bytes(state: bytes, meta_json: str) -> MetaModel:
    """The strategy :func:`to_bytes` saved."""
    meta = json.loads(meta_json)
    return STRATEGIES[meta["kind"]].from_state(meta["m"], state, meta)
