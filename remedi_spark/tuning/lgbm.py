"""One inner fold of one LightGBM trial, and batches of them as Spark tasks or on the driver.

A fold job fits on the training rows outside fold ``k`` whose owners are outside the early-stopping
share, stops early on that share's rows (as train-base's ``_fit``), predicts fold ``k`` and scores it
against the 0/1 label. Params come from :meth:`NativeLightGBM.training_setup`, so a trial fits what
train-base would with those params (objective, focal loss, imbalance, init score).

Parallelism (``tuning.parallelism``): ``tasks`` runs a batch of trials' fold jobs as one Spark job,
one task per job with LightGBM on one thread, over rows broadcast once per model; ``driver`` runs
the jobs one after another on the driver with LightGBM's own threads. Which is faster here is
measured by bench/tuning.py (see docs/tuning.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from ..metrics import k_for, precision_at_k
from .data import TrialData


@dataclass
class FoldJob:
    """What one task fits: trial ``trial``'s params on the rows outside fold ``fold``."""

    trial: int
    fold: int
    params: dict[str, Any]
    feval: Any
    rounds: int
    init: float | None
    regression: bool  # mse student: the raw output clipped to [0, 1] is the probability


def score(metric: str, label: np.ndarray, p: np.ndarray, k_fraction: float) -> float:
    """``logloss`` (probabilities clipped to [1e-7, 1 - 1e-7]) or ``precision_at_k`` (K = k_fraction
    of the rows) of ``p`` against the 0/1 ``label``."""
    if metric == "precision_at_k":
        return float(precision_at_k(label.astype(int), p, k_for(len(label), k_fraction)))
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(label * np.log(q) + (1 - label) * np.log(1 - q)))


def fit_fold(data: TrialData, job: FoldJob, early_stopping: int, metric: str, k_fraction: float) -> dict[str, Any]:
    """Fit, predict and score one fold job; an exception (e.g. parameters LightGBM refuses) is
    returned as ``error`` so one bad trial does not fail the batch's Spark job."""
    started = time.perf_counter()
    try:
        outside = data.fold != job.fold
        fit, stop, held = outside & ~data.early_stop, outside & data.early_stop, ~outside

        def dataset(mask: np.ndarray, reference: lgb.Dataset | None = None) -> lgb.Dataset:
            init = None if job.init is None else np.full(int(mask.sum()), job.init)
            return lgb.Dataset(data.x[mask], label=data.target[mask], init_score=init, feature_name=data.columns,
                               categorical_feature=data.categorical, reference=reference, free_raw_data=False,
                               params={"verbosity": -1})

        train_set = dataset(fit)
        booster = lgb.train(job.params, train_set, num_boost_round=job.rounds,
                            valid_sets=[dataset(stop, reference=train_set)], feval=job.feval,
                            callbacks=[lgb.early_stopping(early_stopping, first_metric_only=True, verbose=False)])
        best = booster.best_iteration or booster.current_iteration()
        z = booster.predict(data.x[held], raw_score=True, num_iteration=best) + (job.init or 0.0)
        p = np.clip(z, 0.0, 1.0) if job.regression else 1.0 / (1.0 + np.exp(-z))
        value = score(metric, data.label[held], p, k_fraction)
        return {"trial": job.trial, "fold": job.fold, "value": value, "best_iteration": int(best),
                "seconds": time.perf_counter() - started, "error": None}
    except Exception as exc:  # reported per trial (state fail), never hidden
        return {"trial": job.trial, "fold": job.fold, "value": None, "best_iteration": None,
                "seconds": time.perf_counter() - started, "error": f"{type(exc).__name__}: {exc}"}


class FoldRunner:
    """Runs fold jobs over one model's rows: as Spark tasks (``tasks``) or on the driver (``driver``)."""

    def __init__(self, spark: Any, data: TrialData, mode: str, early_stopping: int, metric: str, k_fraction: float):
        self.mode, self.data = mode, data
        self.args = (early_stopping, metric, k_fraction)
        self.spark = spark
        self.shared = spark.sparkContext.broadcast(data) if mode == "tasks" else None
        self.slots = max(1, spark.sparkContext.defaultParallelism) if mode == "tasks" else 1

    def run(self, jobs: list[FoldJob]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        if self.mode == "driver":
            return [fit_fold(self.data, job, *self.args) for job in jobs]
        shared, args = self.shared, self.args
        for job in jobs:  # one thread per task: the tasks are the parallelism
            job.params = {**job.params, "num_threads": 1}
        return self.spark.sparkContext.parallelize(jobs, len(jobs)) \
            .map(lambda job: fit_fold(shared.value, job, *args)).collect()

    def close(self) -> None:
        if self.shared is not None:
            self.shared.unpersist()
            self.shared = None
