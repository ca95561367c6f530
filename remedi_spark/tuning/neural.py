"""Neural trials: in-process on the driver over ``tuning.sample_rows`` training rows.

The search rows are the same as for LightGBM (``split = train`` first, see :mod:`.data`), sampled
by owner (a seeded hash of ``user_id``: an owner's months stay together, the same owners in every
run) down to about ``tuning.sample_rows``. The feature map (standardisation or buckets, as the
model's ``numeric_encoding``) is fitted per inner fold on that fold's fit rows, once per model; a
trial's fold is then one ``train_in_process`` run (the epoch loop TorchDistributor runs per rank)
with early stopping on the owner-grouped share, scored on fold k like a LightGBM trial. Models
that train on horizon or auxiliary labels (KAML, HM3) are not searched.

Why in-process rather than one TorchDistributor run per trial: on this 2-core machine one MLP fit
on 150,000 rows took 92.7 s wall with TorchDistributor (2 processes) against 55.7 s in one process
(21 s of it preparing arrays; bench/results/neural.json, ``wall_ratio`` 1.67): the distributor's
start-up, Petastorm cache and readers come with every fit, while the in-process trials share rows
and feature maps collected once. (Measured by bench/neural.py for a single fit, not re-measured
for tuning trials.)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import functions as F

from ..config import Config, ModelSpec
from ..io.store import TableStore
from ..models.base import KEYS, LABEL, FeatureSpec, keyed_pandas
from ..models.neural.base import build_config
from ..models.neural.feature_map import FeatureMap
from ..models.neural.model import TorchTrainParams
from ..training.oof import ES
from .data import training_only
from .lgbm import score


@dataclass
class NeuralRows:
    """A neural model's sampled search rows (pandas, key order) and a feature map per inner fold."""

    frame: Any
    fold: np.ndarray
    early_stop: np.ndarray
    label: np.ndarray
    maps: dict[int, FeatureMap]

    @property
    def rows(self) -> int:
        return len(self.label)

    def folds(self) -> list[int]:
        return sorted(int(k) for k in np.unique(self.fold))


def neural_rows(store: TableStore, cfg: Config, spec: ModelSpec, inner: int | None) -> tuple[NeuralRows, FeatureSpec]:
    """Sampled training rows of ``spec`` and the feature maps of its first ``inner`` folds."""
    train = training_only(store, cfg)
    limit = cfg.tuning.sample_rows
    if limit is not None:
        total = train.count()
        if total > limit:
            bucket = F.pmod(F.xxhash64("user_id", F.lit(cfg.tuning.seed), F.lit(25)), F.lit(1_000_000))
            train = train.filter(bucket < int(1_000_000 * limit / total))
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = FeatureSpec.from_frame(train.drop("fold", "split", ES), members)
    encoded = features.encode(train, extra=(LABEL, "fold", ES)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        folds = sorted(r[0] for r in encoded.select("fold").distinct().collect())
        params = build_config(TorchTrainParams, spec.params)
        maps = {k: FeatureMap.fit(encoded.filter((F.col("fold") != k) & ~F.col(ES)), features.columns,
                                  vocab=features.categorical, numeric_encoding=params.numeric_encoding,
                                  n_buckets=params.n_buckets)
                for k in (folds[:inner] if inner else folds)}
        pdf = keyed_pandas(encoded, *KEYS, *features.columns, LABEL, "fold", ES)
    finally:
        encoded.unpersist()
    return NeuralRows(frame=pdf, fold=pdf["fold"].to_numpy(dtype=np.int64), early_stop=pdf[ES].to_numpy(dtype=bool),
                      label=pdf[LABEL].to_numpy(dtype=np.float64), maps=maps), features


@dataclass
class NeuralJob:
    trial: int
    fold: int
    family: str
    params: dict[str, Any]  # the model's params with the trial's values merged


def fit_neural_fold(rows: NeuralRows, job: NeuralJob, metric: str, k_fraction: float) -> dict[str, Any]:
    """One trial's fold: fit on the rows outside it (early stopping on the share), score fold k."""
    from ..models.neural.loop import make_module, predict_logits, train_in_process

    started = time.perf_counter()
    try:
        params = build_config(TorchTrainParams, job.params)
        fmap = rows.maps[job.fold]
        outside = rows.fold != job.fold
        parts = {}
        for name, mask in (("fit", outside & ~rows.early_stop), ("stop", outside & rows.early_stop),
                           ("held", ~outside)):
            dense, ids = fmap.transform(rows.frame[mask])
            parts[name] = (dense, ids, rows.label[mask].astype(np.float32))
        model = make_module(job.family, params.model, fmap.vocab_sizes, len(fmap.numeric), seed=params.seed)
        result = train_in_process(model, parts["fit"], params.loop_params(), parts["stop"])
        model.load_state_dict(result["state"])
        z = np.asarray(predict_logits(model, *parts["held"][:2]), dtype=np.float64).reshape(len(parts["held"][2]), -1)[:, 0]
        value = score(metric, rows.label[~outside], 1.0 / (1.0 + np.exp(-z)), k_fraction)
        return {"trial": job.trial, "fold": job.fold, "value": value, "best_iteration": int(result["best_epoch"]),
                "seconds": time.perf_counter() - started, "error": None}
    except Exception as exc:  # a failed trial, not a failed search
        return {"trial": job.trial, "fold": job.fold, "value": None, "best_iteration": None,
                "seconds": time.perf_counter() - started, "error": f"{type(exc).__name__}: {exc}"}


class NeuralRunner:
    """Runs neural fold jobs one after another in the driver process."""

    slots = 1

    def __init__(self, rows: NeuralRows, metric: str, k_fraction: float):
        self.rows, self.metric, self.k_fraction = rows, metric, k_fraction

    def run(self, jobs: list[NeuralJob]) -> list[dict[str, Any]]:
        return [fit_neural_fold(self.rows, job, self.metric, self.k_fraction) for job in jobs]
