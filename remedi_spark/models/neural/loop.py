"""The epoch loop every neural model trains with, in one process or as one DDP rank.

Adam, embedding L2, gradient clipping, a linear learning-rate warm-up over the first
``warmup_steps`` steps, validation log loss and AUC after every epoch, learning rate × 0.1 when the
validation log loss has not improved for ``lr_patience`` epochs, early stopping on the validation
AUC or log loss (``stop_metric``) with ``patience`` and the best epoch's weights kept. The caller supplies
the batches and how the validation metrics are agreed on: in one process they are simply computed;
under DDP rank 0 computes them and broadcasts them (see :mod:`.distributed`), so every rank takes
the same decisions and stops at the same epoch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Batch, RemediModel

Validate = Callable[[RemediModel], dict[str, float]]  # model → {"auc", "logloss"} on the validation rows


def embedding_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of squared weights of every field-embedding table (numeric field vectors included)."""
    from .layers import FieldEmbedding

    terms = [p.pow(2).sum() for m in model.modules() if isinstance(m, FieldEmbedding) for p in m.parameters()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def predict_logits(model: RemediModel, dense: np.ndarray, ids: np.ndarray, chunk: int = 1024,
                   key: str = "logit") -> np.ndarray:
    """``model``'s output ``key`` for many rows, ``chunk`` rows at a time (interaction layers such as
    CIN hold B × F × F × D activations: one pass over a whole validation set would not fit)."""
    return predict_outputs(model, dense, ids, (key,), chunk)[key]


def predict_outputs(model: RemediModel, dense: np.ndarray, ids: np.ndarray, keys: tuple[str, ...],
                    chunk: int = 1024) -> dict[str, np.ndarray]:
    """Several outputs of ``model``'s forward dict for many rows in one pass, ``chunk`` rows at a time."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with torch.no_grad():
        for start in range(0, len(dense), chunk):
            batch = Batch(torch.from_numpy(dense[start:start + chunk]), torch.from_numpy(ids[start:start + chunk]))
            out = model(batch)
            missing = [k for k in keys if k not in out]
            if missing:
                raise KeyError(f"model {model.name!r} has no outputs {missing}; it returns {sorted(out)}")
            for k in keys:
                parts[k].append(out[k].numpy())
    result = {}
    for k, arrays in parts.items():
        width = arrays[0].shape[1:] if arrays else ()
        result[k] = np.concatenate(arrays) if arrays else np.zeros((0, *width), dtype=np.float32)
    return result


def validation_metrics(model: RemediModel, valid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    """``{"auc", "logloss"}`` of ``model`` on (dense, cat_ids, y); AUC is NaN when ``y`` has one class."""
    dense, ids, y = valid
    return logit_metrics(predict_logits(model, dense, ids), y)


def logit_metrics(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``{"auc", "logloss"}`` of logits ``z`` against labels ``y``; AUC is NaN when ``y`` has one class."""
    from sklearn.metrics import roc_auc_score

    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    # BCE from the logit: log(1 + e^z) − y z, exact where σ(z) rounds to 0 or 1
    logloss = float(np.mean(np.logaddexp(0.0, z) - y * z)) if len(y) else float("nan")
    auc = float(roc_auc_score(y, z)) if 0 < y.sum() < len(y) else float("nan")
    return {"auc": auc, "logloss": logloss}


STOP_METRICS = ("auc", "logloss")


def check_stop_metric(stop_metric: str) -> str:
    """``stop_metric`` itself when early stopping knows it (:data:`STOP_METRICS`); a ValueError otherwise."""
    if stop_metric not in STOP_METRICS:
        raise ValueError(f"stop_metric must be one of {STOP_METRICS}, got {stop_metric!r}")
    return stop_metric


def stopping_score(metrics: dict[str, float], stop_metric: str = "logloss") -> float:
    """What early stopping maximises: minus the validation log loss, or (``stop_metric="auc"``) the
    validation AUC (minus the log loss when AUC is undefined)."""
    if check_stop_metric(stop_metric) == "auc" and math.isfinite(metrics["auc"]):
        return metrics["auc"]
    return -metrics["logloss"]


def warmup_length(params: dict[str, Any], steps_per_epoch: int) -> int:
    """Steps of the linear learning-rate warm-up: ``warmup_steps``, or half an epoch when it is None."""
    steps = params.get("warmup_steps")
    return max(1, steps_per_epoch // 2) if steps is None else int(steps)


def fit_epochs(model: RemediModel, forward: Callable[[Batch], dict[str, torch.Tensor]], batches: Iterator[Batch],
               steps_per_epoch: int, params: dict[str, Any], validate: Validate) -> dict[str, Any]:
    """Train ``model`` for up to ``params["epochs"]`` epochs of ``steps_per_epoch`` batches.

    ``forward`` is the model itself or its DDP wrapper; ``validate`` returns ``{"auc", "logloss"}``.
    The learning rate rises linearly from lr / warm-up to ``lr`` over the first
    :func:`warmup_length` steps; after warm-up it is multiplied by 0.1 once the validation log loss
    has not improved for ``lr_patience`` epochs in a row (default 2: one flat epoch never cuts it).
    Training stops after ``patience`` epochs without a better validation ``stop_metric``
    (``"logloss"``, the default, or ``"auc"``) and keeps the best epoch's weights. Returns that
    epoch's ``state`` (a state_dict), ``valid_auc`` and ``valid_logloss``, ``best_epoch`` (1-based),
    ``epochs`` run, the seconds of each epoch's training and ``curve``: per epoch
    ``{"epoch", "lr", "train_loss", "valid_logloss", "valid_auc"}``.
    """
    peak_lr = params["lr"]
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr)
    lr_patience = int(params.get("lr_patience", 2))
    stop_metric = check_stop_metric(params.get("stop_metric", "logloss"))  # before any epoch
    if lr_patience < 1:
        raise ValueError(f"lr_patience must be >= 1 (epochs without a better validation log loss), got {lr_patience}")
    # torch counts the epochs *beyond* patience: lr_patience flat epochs in a row = patience lr_patience − 1
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1, patience=lr_patience - 1)
    warmup, step = warmup_length(params, steps_per_epoch), 0
    l2 = params.get("embedding_l2", 0.0)
    best, best_state, best_metrics, best_epoch, stale, epochs_run = -float("inf"), None, None, 0, 0, 0
    epoch_seconds, curve = [], []
    for epoch in range(params["epochs"]):
        model.train()
        start, losses = time.perf_counter(), []
        for _ in range(steps_per_epoch):
            if step < warmup:
                for group in optimizer.param_groups:
                    group["lr"] = peak_lr * (step + 1) / warmup
            batch = next(batches)
            loss = model.compute_loss(forward(batch), batch)["loss"]
            if l2:
                loss = loss + l2 * embedding_penalty(model)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), params["grad_clip"])
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
        epoch_seconds.append(time.perf_counter() - start)
        epochs_run = epoch + 1
        metrics = validate(model)
        curve.append({"epoch": epochs_run, "lr": optimizer.param_groups[0]["lr"],
                      "train_loss": float(np.mean(losses)) if losses else float("nan"),
                      "valid_logloss": metrics["logloss"], "valid_auc": metrics["auc"]})
        if step >= warmup and math.isfinite(metrics["logloss"]):  # a plateau only counts at the full rate
            plateau.step(metrics["logloss"])
        score = stopping_score(metrics, stop_metric)
        if score > best:
            best, best_metrics, best_epoch, stale = score, metrics, epochs_run, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= params["patience"]:
                break
    if best_state is None:  # no epoch, or every epoch's score was NaN: keep the last weights
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        last = curve[-1] if curve else {"valid_auc": float("nan"), "valid_logloss": float("nan")}
        best_metrics, best_epoch = {"auc": last["valid_auc"], "logloss": last["valid_logloss"]}, epochs_run
    return {"state": best_state, "valid_auc": best_metrics["auc"], "valid_logloss": best_metrics["logloss"],
            "best_epoch": best_epoch, "epochs": epochs_run, "epoch_seconds": epoch_seconds, "curve": curve}


def epoch_batch_size(rows: int, params: dict[str, Any], world: int = 1) -> int:
    """``batch_size``, made smaller when needed so an epoch over ``rows`` split across ``world`` ranks
    has at least ``min_steps_per_epoch`` optimiser steps per rank (a small table would otherwise get
    one or two steps an epoch at the batch sizes that suit 800k owners)."""
    size = params["batch_size"]
    need = params.get("min_steps_per_epoch", 0)
    if need > 0:
        size = min(size, max(1, rows // (world * need)))
    return size


def array_batches(dense: np.ndarray, ids: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                  horizons: np.ndarray | None = None, aux: np.ndarray | None = None) -> Iterator[Batch]:
    """Endless shuffled mini-batches over in-memory arrays (a fresh permutation every pass);
    ``horizons`` (N, H) with NaN = not observed, for models that need them; ``aux`` (N, A) the
    auxiliary labels (NaN = unknown) of models that declare ``aux_labels``."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if n == 0:
        raise ValueError("array_batches: no rows to train on")
    while True:
        order = rng.permutation(n)
        # full batches only, so every step weighs the same; fewer rows than one batch: one short batch
        for start in range(0, max(n - batch_size, 0) + 1, batch_size):
            i = order[start:start + batch_size]
            yield Batch(torch.from_numpy(dense[i]), torch.from_numpy(ids[i]), torch.from_numpy(y[i]),
                        None if horizons is None else torch.from_numpy(horizons[i]),
                        None if aux is None else torch.from_numpy(aux[i]))


def base_rate(y: np.ndarray) -> float:
    """Share of positives among the known labels of ``y`` (NaN = unknown, e.g. an open label window)."""
    y = np.asarray(y, dtype=np.float64)
    known = y[~np.isnan(y)]
    if not len(known):
        raise ValueError("base_rate: no known labels")
    return float(known.mean())


def make_module(family: str, model_cfg: dict, vocab_sizes: list[int], num_numeric: int,
                seed: int | None = None, base_rate: float | None = None) -> RemediModel:
    """A zoo model from its conf; seeded first when ``seed`` is given, so every rank starts equal.
    With ``base_rate`` (the training labels' rate) its output starts at that rate's log-odds
    (:meth:`RemediModel.init_output_bias`); without it (a model about to load trained weights) it
    keeps its construction-time biases."""
    from .base import build_config
    from .zoo import MODELS

    if seed is not None:
        torch.manual_seed(seed)
    cls = MODELS[family]
    model = cls(vocab_sizes, num_numeric, build_config(cls.Config, model_cfg))
    if base_rate is not None:
        model.init_output_bias(base_rate)
    return model


def train_in_process(model: RemediModel, train: tuple[np.ndarray, ...], params: dict[str, Any],
                     valid: tuple[np.ndarray, np.ndarray, np.ndarray], aux: np.ndarray | None = None,
                     init_bias: bool = True) -> dict[str, Any]:
    """The same loop without Spark: one process over in-memory arrays (benchmarks, the KDEF, KAML and
    HM3 studies). ``train`` is (dense, cat_ids, y) or (dense, cat_ids, y, horizons) for models that
    need the horizon labels; ``aux`` (N, A) holds the columns of ``model.aux_labels`` (NaN =
    unknown) for models that have them; ``valid`` is fully labelled (dense, cat_ids, y).

    Build ``model`` with :func:`make_module` and a seed for a reproducible run. Unless
    ``init_bias`` is False (a model that already learnt something), its output bias is first set to
    the base rate of ``train``'s labels. The result is :func:`fit_epochs`'s plus ``steps_per_epoch``,
    ``batch_size`` and ``base_rate``.
    """
    if len(train) not in (3, 4):
        raise ValueError(f"train must be (dense, cat_ids, y[, horizons]), got {len(train)} arrays")
    if model.needs_horizons and len(train) != 4:
        raise ValueError(f"model {model.name!r} trains on the horizon labels: pass (dense, cat_ids, y, horizons)")
    if model.aux_labels and (aux is None or aux.shape != (len(train[2]), len(model.aux_labels))):
        raise ValueError(f"model {model.name!r} trains on the auxiliary labels {list(model.aux_labels)}: "
                         f"pass aux with shape ({len(train[2])}, {len(model.aux_labels)})")
    rate = base_rate(train[2])
    if init_bias:
        model.init_output_bias(rate)
    batch_size = epoch_batch_size(len(train[2]), params)
    steps = max(1, len(train[2]) // batch_size)
    batches = array_batches(*train[:3], batch_size=batch_size, seed=params["seed"],
                            horizons=train[3] if len(train) == 4 else None,
                            aux=aux if model.aux_labels else None)
    result = fit_epochs(model, model, batches, steps, params, lambda m: validation_metrics(m, valid))
    result.update(steps_per_epoch=steps, batch_size=batch_size, base_rate=rate)
    return result
