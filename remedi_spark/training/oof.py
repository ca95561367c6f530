"""OOF job: every base model trained K times out-of-fold, refit on all training rows, evaluated.

For model m and fold k, m is trained on the training-split rows of the other folds (a seeded
share of those users held aside for early stopping) and predicts fold k: every training row
gets exactly one out-of-fold prediction per model. The model is then refit on all training rows,
saved (LightGBM text + JSON sidecar with features, params and the Delta versions it read) under
``<root>/models/<name>/``, and scores the held-out split. Predictions go to ``oof_predictions``
(one partition per model, replaced on re-run), held-out metrics to ``base_model_metrics``.
For scoring, REMEDI uses the refit model (not an average of the fold models).

Models that train on the horizon labels (KAML) also fit on the open-window rows of the folds
table (``split = open``, written with ``folds.include_open_windows``) of the users outside the
predicted fold; their predictions and metrics, like every model's, cover fully labelled rows only.
Models with auxiliary labels (HM3) also receive those columns of ``features`` (y_engage, y_visit).
"""
from __future__ import annotations

import time
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, ConfigError, ModelSpec
from ..folds.assign import OPEN
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..metrics import k_for, lead_metrics
from ..models.base import BaseModel, FeatureSpec, saved_model_dir
from ..models.neural.model import HORIZON_COLS
from ..models.registry import aux_labels, build_model, needs_horizons
from ..spark import root_cause

ES = "_early_stop"


def model_path(store: TableStore, name: str) -> str:
    return saved_model_dir(store.root, name)


def training_frame(store: TableStore, cfg: Config, folds: DataFrame | None = None) -> DataFrame:
    """Features joined with their folds (fully labelled rows, plus ``split = open`` rows when the folds
    table holds them) and a seeded early-stopping flag per user. ``folds`` replaces the folds table
    (the KAML study adds open-window rows to it)."""
    folds = (store.read("folds") if folds is None else folds).select("user_id", "month", "fold", "split")
    data = store.read("features").join(folds, ["user_id", "month"], "inner")
    share = cfg.base_models.early_stopping_fraction
    bucket = F.pmod(F.xxhash64("user_id", F.lit(cfg.folds.seed), F.lit(3)), F.lit(10_000))
    return data.withColumn(ES, bucket < int(share * 10_000))


def select_models(cfg: Config, names: list[str] | None) -> list[ModelSpec]:
    specs = cfg.base_models.models
    seen = [s.name for s in specs]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise ConfigError(f"base_models.models: duplicate names {dupes}")
    groups = cfg.base_models.feature_groups
    for s in specs:
        if s.feature_group is not None and s.feature_group not in groups:
            raise ConfigError(f"model {s.name!r}: unknown feature_group {s.feature_group!r}; known: {sorted(groups)}")
    if not names:
        return list(specs)
    unknown = sorted(set(names) - set(seen))
    if unknown:
        raise ConfigError(f"unknown models {unknown}; configured: {seen}")
    return [s for s in specs if s.name in names]


def _fit(spec: ModelSpec, cfg: Config, features: FeatureSpec, rows: DataFrame) -> BaseModel:
    """Fit on the rows of users outside the early-stopping share; stop early on that share's fully
    labelled rows (its users' open-window rows are not used at all)."""
    model = build_model(spec, cfg.base_models, features)
    return model.fit(rows.filter(~F.col(ES)), rows.filter(F.col(ES) & (F.col("split") == "train")))


def train_model_oof(spark: SparkSession, cfg: Config, store: TableStore, spec: ModelSpec, data: DataFrame
                    ) -> tuple[DataFrame, dict[str, Any]]:
    """OOF + held-out predictions of one model (persisted frame) and its metrics row."""
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    train = data.filter(F.col("split") == "train")
    features = FeatureSpec.from_frame(train.drop("fold", "split", ES), members)
    horizons = needs_horizons(spec)
    extra = ("y", *(HORIZON_COLS if horizons else ()), *aux_labels(spec), "fold", "split", ES)
    encoded = features.encode(data, extra=extra).persist(StorageLevel.MEMORY_AND_DISK)
    enc_train = encoded.filter(F.col("split") == "train")
    # horizon models also learn from the open-window rows; predictions stay on labelled rows
    fit_pool = encoded.filter(F.col("split").isin("train", OPEN)) if horizons else enc_train
    start = time.perf_counter()
    parts = []
    for k in range(cfg.folds.n_folds):
        model = _fit(spec, cfg, features, fit_pool.filter(F.col("fold") != k))
        parts.append(model.predict(enc_train.filter(F.col("fold") == k)).select(
            "user_id", "month", F.lit(k).alias("fold"), F.lit("train").alias("split"), "p"))
        # materialise now: the next fold's fit must not re-run this one lazily
        parts[-1] = parts[-1].persist(StorageLevel.MEMORY_AND_DISK)
        parts[-1].count()
    final = _fit(spec, cfg, features, fit_pool)
    seconds = time.perf_counter() - start
    final.save(spark, model_path(store, spec.name),
               extra={"run_id": store.run.run_id if store.run else None,
                      "data_versions": dict(store.run.reads) if store.run else {}})
    held_out = final.predict(encoded.filter(F.col("split") == "test")).select(
        "user_id", "month", F.lit(-1).alias("fold"), F.lit("test").alias("split"), "p")
    predictions = parts[0]
    for part in [*parts[1:], held_out]:
        predictions = predictions.unionByName(part)
    predictions = predictions.withColumn("model", F.lit(spec.name)).persist(StorageLevel.MEMORY_AND_DISK)
    labels = encoded.select("user_id", "month", "y")
    scored = predictions.filter(F.col("split") == "test").join(labels, ["user_id", "month"]).select("y", "p").toPandas()
    encoded.unpersist()
    for part in parts:
        part.unpersist()
    metrics = lead_metrics(scored["y"].to_numpy(), scored["p"].to_numpy(),
                           k_for(len(scored), cfg.base_models.metric_k_fraction))
    row = {"model": spec.name, "split": "test", **{k: metrics[k] for k in (
        "precision_at_k", "business_recall_at_k", "lift_at_k", "auc", "logloss")},
        "rows": int(metrics["rows"]), "positives": int(metrics["positives"]), "k": int(metrics["k"]),
        "best_iteration": int(final.info.get("best_iteration", 0)), "train_seconds": round(seconds, 2)}
    return predictions, row


class BaseModelFailed(RuntimeError):
    """A base model failed to train; ``model`` names it. Models before it in the list were written."""

    def __init__(self, model: str, family: str, backend: str, cause: BaseException):
        self.model = model
        super().__init__(f"base model {model!r} ({family}, {backend}) failed to train: {root_cause(cause)}. The "
                         "stage stopped; fix the model's conf or drop it from base_models.models (fusion refuses "
                         "an OOF table without every configured model)")


def train_base_models(spark: SparkSession, cfg: Config, store: TableStore, models: list[str] | None = None
                      ) -> dict[str, Any]:
    """Train the configured base models (or ``models``) out-of-fold; write predictions and metrics."""
    specs = select_models(cfg, models)
    data = training_frame(store, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    run_id = store.run.run_id if store.run else "adhoc"
    results = {}
    try:
        for spec in specs:
            try:
                predictions, row = train_model_oof(spark, cfg, store, spec, data)
            except Exception as exc:  # the stage stops here: fusion never sees a model with no predictions
                raise BaseModelFailed(spec.name, spec.family, spec.backend, exc) from exc
            store.write_partitions(predictions, "oof_predictions", [spec.name])
            predictions.unpersist()
            row["run_id"] = run_id
            metrics_df = frame_from_pandas(spark, pd.DataFrame([row]), "base_model_metrics")  # undefined (NaN) → null
            _append_metrics(store, metrics_df, spec.name)
            results[spec.name] = row
    finally:
        data.unpersist()
    return {"models": results}


def _append_metrics(store: TableStore, row: DataFrame, model: str) -> None:
    """Keep earlier runs' metrics of this model: read its partition, add this run, replace it."""
    if store.exists("base_model_metrics"):
        earlier = store.read("base_model_metrics").filter(F.col("model") == model) \
            .filter(F.col("run_id") != row.first()["run_id"])
        row = earlier.unionByName(row.select(*earlier.columns)).localCheckpoint()
    store.write_partitions(row, "base_model_metrics", [model])
