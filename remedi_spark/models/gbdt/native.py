"""Native LightGBM trained inside Spark barrier tasks (data-parallel), scored with mapInPandas.

Training: the data is split into ``num_workers`` partitions and run as one barrier stage; each
task opens a port, the tasks exchange ``host:port`` with ``BarrierTaskContext.allGather`` and
call ``lightgbm.train`` with ``tree_learner=data`` and ``pre_partition=True`` on their own rows.
Every task sees the same (broadcast) early-stopping set, so all ranks stop at the same round.
This backend takes Python objectives (focal loss) and needs no JVM jar.
"""
from __future__ import annotations

import socket
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from pyspark import BarrierTaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ...spark import root_cause
from ..base import KEYS, LABEL, BaseModel, keyed_pandas, keyed_parts
from .focal import focal_eval, focal_objective

_BOOSTERS: dict[int, lgb.Booster] = {}  # per Python worker: parse each model once


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# what LightGBM's network layer says when the workers cannot reach each other (its socket and linker errors)
NETWORK_ERRORS = ("Socket send error", "Socket recv error", "Binding port", "Connecting to rank", "Connection reset",
                  "Connection refused", "Broken pipe")


def network_failure(exc: BaseException) -> bool:
    """True when ``exc`` (as raised through Spark) is LightGBM's workers losing their connection."""
    text = str(exc)  # a Spark-wrapped task error holds the worker's traceback and LightGBM's message
    return any(marker in text for marker in NETWORK_ERRORS)


def collect_with_retries(job: DataFrame, retries: int, what: str) -> list[Any]:
    """``job.collect()``, run again up to ``retries`` more times when it fails with a
    :func:`network_failure` (each run probes new ports); any other error is raised at once."""
    failures = 0
    while True:
        try:
            return job.collect()
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is a network failure with retries left
            if failures >= retries or not network_failure(exc):
                raise
            failures += 1
            warnings.warn(f"{what}: LightGBM's workers lost their connection ({root_cause(exc)}); training again "
                          f"(attempt {failures + 1} of {retries + 1})", RuntimeWarning, stacklevel=2)


def _booster(text: str) -> lgb.Booster:
    key = hash(text)
    if key not in _BOOSTERS:
        _BOOSTERS.clear()
        _BOOSTERS[key] = lgb.Booster(model_str=text)
    return _BOOSTERS[key]


def barrier_train(spark: SparkSession, data: DataFrame, valid: pd.DataFrame, columns: list[str],
                  categorical: list[int], params: dict[str, Any], rounds: int, early_stopping: int,
                  num_workers: int, init_score: float | None = None, feval: Any = None, network_retries: int = 1
                  ) -> tuple[str, int, dict[str, float]]:
    """Train LightGBM over ``num_workers`` barrier tasks.

    Returns the model text, the best iteration and rank 0's timings (seconds spent receiving
    and converting its rows, and in ``lightgbm.train``: dataset construction plus boosting).

    ``data`` holds the keys, ``columns`` and ``y``; ``valid`` (pandas, same columns) drives early
    stopping. Each task gets the rows of one key-hash part in key order, so the same data gives the
    same model on every run (with ``deterministic`` and a forced histogram layout in the params).
    Each task probes a free port and releases it before LightGBM binds it, so another process can
    take it meanwhile: a run that fails on the network is run again ``network_retries`` times.
    """
    workers = max(1, min(num_workers, spark.sparkContext.defaultParallelism))
    shared = spark.sparkContext.broadcast(valid[[*columns, LABEL]])

    def dataset(frame: pd.DataFrame, reference: lgb.Dataset | None = None) -> lgb.Dataset:
        init = None if init_score is None else np.full(len(frame), init_score)
        return lgb.Dataset(frame[columns].to_numpy(dtype=np.float64), label=frame[LABEL].to_numpy(dtype=np.float64),
                           init_score=init, categorical_feature=categorical, feature_name=columns,
                           reference=reference, free_raw_data=False, params={"verbosity": -1})

    def task(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        started = time.perf_counter()
        ctx = BarrierTaskContext.get()
        rank = ctx.partitionId()
        p = dict(params)
        if workers > 1:
            host = ctx.getTaskInfos()[rank].address.split(":")[0]
            port = _free_port()
            peers = ctx.allGather(f"{host}:{port}")
            p.update(machines=",".join(peers), num_machines=len(peers), local_listen_port=port,
                     tree_learner="data", pre_partition=True, num_threads=1, time_out=10)
        frames = list(batches)
        local = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*columns, LABEL])
        loaded = time.perf_counter()
        train_set = dataset(local)
        valid_set = dataset(shared.value, reference=train_set)
        booster = lgb.train(p, train_set, num_boost_round=rounds, valid_sets=[valid_set], feval=feval,
                            callbacks=[lgb.early_stopping(early_stopping, first_metric_only=True, verbose=False)])
        boosted = time.perf_counter()
        ctx.barrier()
        if rank == 0:
            best = booster.best_iteration or booster.current_iteration()
            yield pd.DataFrame({"model": [booster.model_to_string(num_iteration=best)], "best": [best],
                                "load_seconds": [loaded - started], "train_seconds": [boosted - loaded]})

    job = keyed_parts(data, workers).select(*columns, LABEL).mapInPandas(
        task, "model string, best int, load_seconds double, train_seconds double", barrier=True)
    rows = collect_with_retries(job, network_retries if workers > 1 else 0, "LightGBM barrier training")
    shared.unpersist()
    timings = {k: round(float(rows[0][k]), 2) for k in ("load_seconds", "train_seconds")}
    return rows[0]["model"], int(rows[0]["best"]), timings


# Objectives for soft targets (distillation): the label column holds the teacher's probability.
SOFT_OBJECTIVES = {"mse": ("regression", "l2"), "xentropy": ("cross_entropy", "cross_entropy")}


class NativeLightGBM(BaseModel):
    """LightGBM on the barrier backend: logloss or focal on 0/1 labels; mse (a regressor whose raw
    output, clipped to [0, 1], is the probability) or xentropy on soft targets in [0, 1]."""

    def _objective_params(self) -> tuple[dict[str, Any], Any]:
        """LightGBM params with the objective set, and the feval for early stopping (or None)."""
        params = self.lightgbm_params()
        if self.spec.objective == "focal":
            focal = self.settings.focal
            params.update(objective=focal_objective(focal.alpha, focal.gamma, focal.min_hessian), metric="None")
            return params, focal_eval(focal.alpha, focal.gamma)
        if self.spec.objective in SOFT_OBJECTIVES:
            params["objective"], params["metric"] = SOFT_OBJECTIVES[self.spec.objective]
            return params, None
        params["objective"] = "binary"
        return params, None

    def training_setup(self, n: int, positives: float) -> tuple[dict[str, Any], Any, int, float | None]:
        """What ``lightgbm.train`` gets for ``n`` training rows holding ``positives`` (sum of the
        label): params (objective and imbalance set, ``num_iterations`` taken out), the feval for
        early stopping (or None), the number of rounds and the init score (focal: the base rate's
        logit, else None). Also used by the tuning trials, so a trial fits what ``fit`` would."""
        if not positives:
            raise ValueError(f"{self.name}: the training rows hold no positive label")
        params, feval = self._objective_params()
        rounds = int(params.pop("num_iterations"))
        params.update(imbalance_params(self.settings.imbalance, n, positives))
        init = None
        if self.spec.objective == "focal":  # start from the base rate, not p = 0.5
            rate = positives / n
            init = float(np.log(rate / (1 - rate)))
        return params, feval, rounds, init

    def fit(self, train: DataFrame, valid: DataFrame) -> "NativeLightGBM":
        spark = train.sparkSession
        stats = train.agg(F.count(F.lit(1)).alias("n"), F.sum(LABEL).alias("pos")).first()
        params, feval, rounds, init = self.training_setup(stats["n"], stats["pos"])
        valid_pdf = keyed_pandas(valid, *self.features.columns, LABEL)
        self._text, best, timings = barrier_train(spark, train, valid_pdf, self.features.columns,
                                         self.features.categorical_indexes, params, rounds,
                                         self.settings.early_stopping_rounds, self.settings.num_workers, init, feval,
                                         self.settings.network_retries)
        self.info.update(best_iteration=best, init_score=init or 0.0, train_rows=stats["n"],
                         train_positives=stats["pos"], timings=timings)
        return self

    def predict(self, df: DataFrame) -> DataFrame:
        spark = df.sparkSession
        text = spark.sparkContext.broadcast(self._text)
        columns, init = self.features.columns, float(self.info.get("init_score", 0.0))
        regression = self.spec.objective == "mse"

        def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            booster = _booster(text.value)
            for b in batches:
                z = booster.predict(b[columns].to_numpy(dtype=np.float64), raw_score=True) + init
                p = np.clip(z, 0.0, 1.0) if regression else 1.0 / (1.0 + np.exp(-z))
                yield pd.DataFrame({"user_id": b["user_id"], "month": b["month"], "p": p})

        return df.select(*KEYS, *columns).mapInPandas(score, "user_id long, month string, p double")

    def artifact(self) -> bytes:
        return self._text.encode("utf-8")

    def booster(self) -> lgb.Booster:
        """The trained LightGBM booster (its raw output plus ``info['init_score']`` is the logit,
        or for an mse regressor the probability before clipping to [0, 1])."""
        return _booster(self._text)

    def _restore(self, spark: SparkSession, data: bytes) -> None:
        text = data.decode("utf-8")
        names = next((line.split("=", 1)[1].split() for line in text.splitlines() if line.startswith("feature_names=")),
                     None)
        if names is not None and names != self.features.columns:
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(names, self.features.columns)) if a != b][:3]
            raise ValueError(f"{self.name}: the LightGBM model's {len(names)} columns differ from its sidecar's "
                             f"{len(self.features.columns)} (first differences as (position, model, sidecar): "
                             f"{diff}); retrain it (train-base --models {self.name})")
        self._text = text


def imbalance_params(mode: str, n: int, positives: int) -> dict[str, Any]:
    """LightGBM params for ``base_models.imbalance``."""
    if mode == "is_unbalance":
        return {"is_unbalance": True}
    if mode == "scale_pos_weight":
        return {"scale_pos_weight": (n - positives) / positives}
    return {}
