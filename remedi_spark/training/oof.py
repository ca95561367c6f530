"""OOF job: every base model trained K times out-of-fold, refit on all training rows, evaluated.

For model m and fold k, m is trained on the training-split rows of the other folds (a seeded
share of those users held aside for early stopping) and predicts fold k: every training row
gets exactly one out-of-fold prediction per model. The model is then refit on all training rows,
saved (LightGBM text + JSON sidecar with features, params and the Delta versions it read) under
``<root>/models/<name>/``, and scores the held-out split. Predictions go to ``oof_predictions``
(one partition per model, replaced on re-run), metrics with intervals to ``base_model_metrics``.
For scoring, REMEDI uses the refit model (not an average of the fold models).

The evaluation month (the folds table's ``oot_split = test`` month) is no model's training or
early-stopping row: its training owners get ``split = evaluation`` in :func:`training_frame`,
and the refit predicts every owner of it (``fold = -1``), as it would a new month. Metrics:
``oof`` (training owners outside the evaluation month: what choices rest on), ``test`` (held-out
owners) and ``out_of_time`` (every owner of the evaluation month).

Models that train on the horizon labels (KAML) also fit on the open-window rows of the folds
table (``split = open``, written with ``folds.include_open_windows``) of the users outside the
predicted fold, unless an evaluation month exists: open-window rows postdate it (their partial
labels are purchases inside its window), so they are then left out. Predictions and metrics,
like every model's, cover fully labelled rows only. Models with auxiliary labels (HM3) also
receive those columns of ``features`` (y_engage, y_visit).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from .. import progress
from ..config import Config, ConfigError, ModelSpec
from ..folds.assign import OPEN, evaluation_month
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..metrics import BOOTSTRAP_METRICS, bootstrap, k_for, lead_metrics
from ..models.base import KEYS, LABEL, NOT_FEATURES, BaseModel, FeatureSpec, check_negative_rate, in_group, saved_model_dir
from ..models.neural.model import HORIZON_COLS
from ..models.registry import aux_labels, build_model, needs_horizons
from ..spark import root_cause

ES = "_early_stop"
EVALUATION = "evaluation"  # training-frame split of the training owners' evaluation-month rows


def model_path(store: TableStore, name: str) -> str:
    return saved_model_dir(store.root, name)


def training_frame(store: TableStore, cfg: Config, folds: DataFrame | None = None) -> DataFrame:
    """Features joined with their folds (fully labelled rows, plus ``split = open`` rows when the folds
    table holds them) and a seeded early-stopping flag per user. ``folds`` replaces the folds table
    (the KAML study adds open-window rows to it).

    ``split`` says what a row may be used for: ``train`` (fitting, early stopping, OOF), ``test``
    (held-out owners), ``open`` (open-window rows) and ``evaluation`` (the training owners' rows of
    the evaluation month, which nothing fits on). Everything that fits on ``split = train`` thereby
    leaves the evaluation month out."""
    folds = (store.read("folds") if folds is None else folds).select("user_id", "month", "fold", "split", "oot_split")
    in_evaluation_month = (F.col("split") == "train") & (F.col("oot_split") == "test")
    folds = folds.withColumn("split", F.when(in_evaluation_month, EVALUATION).otherwise(F.col("split"))).drop("oot_split")
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


def fold_fit_rows(pool: DataFrame, k: int) -> DataFrame:
    """The rows fold ``k``'s model fits on: every row of ``pool`` outside fold ``k``."""
    return pool.filter(F.col("fold") != k)


SAMPLE_BUCKETS = 1_000_000  # resolution of training.negative_rate
SAMPLE_SALT = 5  # keeps the negatives' hash apart from the early-stopping share's (salt 3, same seed)


def negative_sample(rows: DataFrame, rate: float, seed: int) -> DataFrame:
    """Every row of ``rows`` whose ``y`` is not 0 (positives; open-window rows, whose label is null) and
    a share ``rate`` of the negatives: those whose hash of ``(user_id, month, seed)`` falls below
    ``rate``. A row is kept or dropped the same way on every run and in every fit (each fold's and the
    refit), whatever the layout of ``rows``. ``rate`` 1.0 returns ``rows`` itself."""
    check_negative_rate(rate)
    if rate == 1.0:
        return rows
    bucket = F.pmod(F.xxhash64("user_id", "month", F.lit(seed), F.lit(SAMPLE_SALT)), F.lit(SAMPLE_BUCKETS))
    keep = F.col("y").isNull() | (F.col("y") != 0) | (bucket < F.lit(int(round(rate * SAMPLE_BUCKETS))))
    return rows.filter(keep)


def _fit(spec: ModelSpec, cfg: Config, features: FeatureSpec, rows: DataFrame) -> BaseModel:
    """Fit on the rows of users outside the early-stopping share; stop early on that share's fully
    labelled rows (its users' open-window rows are not used at all).

    With ``training.negative_rate`` r < 1 both the fit rows and the early-stopping rows keep every
    positive and the same hashed share r of the negatives (:func:`negative_sample`): early stopping
    then scores the model on the prior it is fitted on (its log loss is the fit's own objective), and
    needs no per-family hook to correct predictions inside the training loop. The model records r
    (:meth:`BaseModel.set_negative_rate`), so its predictions (OOF, held-out, saved and reloaded for
    scoring) are corrected to the full population's prior."""
    rate, seed = cfg.training.negative_rate, cfg.folds.seed
    model = build_model(spec, cfg.base_models, features)
    fit_rows = negative_sample(rows.filter(~F.col(ES)), rate, seed)
    stop_rows = negative_sample(rows.filter(F.col(ES) & (F.col("split") == "train")), rate, seed)
    return model.fit(fit_rows, stop_rows).set_negative_rate(rate)


def model_columns(spec: ModelSpec) -> tuple[str, ...]:
    """The columns besides features a model's rows carry: the label, the labels it trains on (KAML's
    horizons, HM3's auxiliary labels), fold, split and the early-stopping flag."""
    return (LABEL, *(HORIZON_COLS if needs_horizons(spec) else ()), *aux_labels(spec), "fold", "split", ES)


def encode_training_frame(data: DataFrame, specs: list[ModelSpec]) -> tuple[FeatureSpec, DataFrame]:
    """Every feature column of ``data`` (vocabularies from its training rows) and ``data`` encoded with
    it, carrying the columns any of ``specs`` trains on: one encoding the models share, each reading its
    feature group's columns (:meth:`FeatureSpec.subset`) instead of a pass of its own."""
    full = FeatureSpec.from_frame(data.filter(F.col("split") == "train").drop("fold", "split", ES))
    extra = tuple(dict.fromkeys(c for s in specs for c in model_columns(s)))
    return full, full.encode(data, extra=extra)


@dataclass
class ModelRows:
    """What one model's fits and predictions read from the encoded training frame: its feature
    columns, its rows (``rows``; ``train`` = the training split, which OOF predictions cover) and
    ``pool``, the rows its fits draw from: negative-sampled and cached when sampling applies."""

    features: FeatureSpec
    rows: DataFrame
    train: DataFrame
    pool: DataFrame
    cached: bool

    def release(self) -> None:
        """Drop the cached pool (when there is one)."""
        if self.cached:
            self.pool.unpersist()


def model_rows(cfg: Config, spec: ModelSpec, full: FeatureSpec, table: DataFrame, eval_month: str | None
               ) -> ModelRows:
    """``spec``'s :class:`ModelRows` from ``table``, :func:`encode_training_frame`'s encoding ``full``
    of the training frame. Horizon models also learn from the open-window rows (when they do not
    postdate the evaluation month); predictions stay on labelled rows. The negatives every fit keeps
    are the same rows (a hash of the row), so they are sampled once and cached: each fit then reads
    that small frame, not the whole encoded table."""
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = full.subset(members)
    carried = [c for c in model_columns(spec) if c in table.columns]
    rows = table.select(*KEYS, *carried, *features.columns)
    train = rows.filter(F.col("split") == "train")
    fit_pool = rows.filter(F.col("split").isin("train", OPEN)) if needs_horizons(spec) and eval_month is None else train
    sampled = negative_sample(fit_pool, cfg.training.negative_rate, cfg.folds.seed)
    cached = sampled is not fit_pool
    return ModelRows(features, rows, train, sampled.persist(StorageLevel.MEMORY_AND_DISK) if cached else sampled,
                     cached)


def train_model_oof(spark: SparkSession, cfg: Config, store: TableStore, spec: ModelSpec, data: DataFrame,
                    eval_month: str | None = None, encoded: tuple[FeatureSpec, DataFrame] | None = None
                    ) -> tuple[DataFrame, list[dict[str, Any]]]:
    """OOF, held-out and evaluation-month predictions of one model (persisted frame: the columns of
    ``oof_predictions`` plus the label ``y``, which the caller drops when writing) and its metrics
    rows (``oof``, ``test``, ``out_of_time``; with intervals). ``eval_month``: the folds table's
    evaluation month (rows of it in ``data`` are ``test`` or ``evaluation``, never fitted on).
    ``encoded``: :func:`encode_training_frame` of ``data`` shared by several models (persisted by the
    caller); None = encode ``data`` for this model here."""
    own = encoded is None
    full, table = encode_training_frame(data, [spec]) if own else encoded
    if own:
        table = table.persist(StorageLevel.MEMORY_AND_DISK)
    mine = model_rows(cfg, spec, full, table, eval_month)
    features, encoded_rows, enc_train = mine.features, mine.rows, mine.train
    start = time.perf_counter()
    parts = []
    fits = progress.track(spec.name, cfg.folds.n_folds + 1, "fit")  # the folds, then the refit
    for k in range(cfg.folds.n_folds):
        model = _fit(spec, cfg, features, fold_fit_rows(mine.pool, k))
        parts.append(model.predict(enc_train.filter(F.col("fold") == k))
                     .select("user_id", "month", F.lit(k).alias("fold"), "p"))
        # materialise now: the next fold's fit must not re-run this one lazily
        parts[-1] = parts[-1].persist(StorageLevel.MEMORY_AND_DISK)
        parts[-1].count()
        fits.advance(f"fold {k + 1}/{cfg.folds.n_folds}")
    final = _fit(spec, cfg, features, mine.pool)
    fits.advance("refit")
    seconds = time.perf_counter() - start
    final.save(spark, model_path(store, spec.name),
               extra={"run_id": store.run.run_id if store.run else None,
                      "data_versions": dict(store.run.reads) if store.run else {}})
    # held-out owners and the evaluation month: the refit, as for a new month, in one pass over both
    held_out = final.predict(encoded_rows.filter(F.col("split").isin("test", EVALUATION))) \
        .select("user_id", "month", F.lit(-1).alias("fold"), "p")
    predictions = parts[0]
    for part in [*parts[1:], held_out]:
        predictions = predictions.unionByName(part)
    # labels and the split as written to oof_predictions (the evaluation month's training owners stay
    # `train`, as in folds): one scan of the rows, joined to every prediction
    labels = encoded_rows.filter(F.col("split").isin("train", "test", EVALUATION)).select(
        "user_id", "month", "y", F.when(F.col("split") == EVALUATION, "train").otherwise(F.col("split")).alias("split"))
    predictions = predictions.join(labels, ["user_id", "month"]) \
        .select("user_id", "month", "fold", "split", "p", F.lit(spec.name).alias("model"), "y") \
        .persist(StorageLevel.MEMORY_AND_DISK)
    scored = predictions.select("user_id", "month", "fold", "split", "y", "p").toPandas()
    if own:
        table.unpersist()
    mine.release()
    for part in parts:
        part.unpersist()
    rows = [{**row, "best_iteration": int(final.info.get("best_iteration", 0)), "train_seconds": round(seconds, 2)}
            for row in evaluation_rows(scored, eval_month, cfg)]
    return predictions, rows


def evaluation_rows(scored: pd.DataFrame, eval_month: str | None, cfg: Config) -> list[dict[str, Any]]:
    """Metrics rows with paired-bootstrap intervals over owners of one model's predictions
    (``user_id, month, fold, split, y, p``): ``oof`` = out-of-fold rows (training owners outside the
    evaluation month), ``test`` = held-out owners, ``out_of_time`` = every owner of ``eval_month``."""
    b = cfg.evaluation.bootstrap
    masks = {"oof": scored["fold"].to_numpy() >= 0, "test": (scored["split"] == "test").to_numpy()}
    if eval_month is not None:
        masks["out_of_time"] = (scored["month"] == eval_month).to_numpy()
    out = []
    for split, mask in masks.items():
        if not mask.any():
            continue
        y, p, owners = scored["y"].to_numpy()[mask], scored["p"].to_numpy()[mask], scored["user_id"].to_numpy()[mask]
        k_fraction = cfg.base_models.metric_k_fraction
        point = lead_metrics(y, p, k_for(len(y), k_fraction))
        ivs = bootstrap(y, {"m": p}, owners, k_fraction, replicates=b.replicates, seed=b.seed,
                        level=b.level)["intervals"]["m"]
        row: dict[str, Any] = {"split": split, "rows": int(point["rows"]), "positives": int(point["positives"]),
                               "k": int(point["k"]), "ci_level": b.level}
        for metric in BOOTSTRAP_METRICS:
            row.update({metric: ivs[metric].estimate, f"{metric}_ci_low": ivs[metric].low,
                        f"{metric}_ci_high": ivs[metric].high})
        out.append(row)
    return out


class BaseModelFailed(RuntimeError):
    """A base model failed to train; ``model`` names it. Models before it in the list were written."""

    def __init__(self, model: str, family: str, backend: str, cause: BaseException):
        self.model = model
        super().__init__(f"base model {model!r} ({family}, {backend}) failed to train: {root_cause(cause)}. The "
                         "stage stopped; fix the model's conf or drop it from base_models.models (fusion refuses "
                         "an OOF table without every configured model)")


def check_model_inputs(specs: list[ModelSpec], cfg: Config, data: DataFrame) -> None:
    """Before any training: every model's feature group matches a column of the features table, and
    every label a model trains on (KAML: y_h1..y_h3, HM3: y_engage, y_visit) has values on the
    training rows. One ConfigError naming each model and what it lacks."""
    columns = [c for c in data.columns if c not in NOT_FEATURES and c not in ("fold", "split", ES)]
    groups = cfg.base_models.feature_groups
    problems = []
    for s in specs:
        if s.feature_group and not any(in_group(c, groups[s.feature_group]) for c in columns):
            members = groups[s.feature_group]
            problems.append(f"model {s.name!r}: feature_group {s.feature_group!r} matches no column of the features "
                            f"table (group members: {members[:5]}{' ...' if len(members) > 5 else ''}); set "
                            f"base_models.feature_groups for your table or remove the model")
    needed = {s.name: [*(HORIZON_COLS if needs_horizons(s) else ()), *aux_labels(s)] for s in specs}
    wanted = sorted({c for cols in needed.values() for c in cols})
    if wanted:
        counts = data.filter(F.col("split") == "train").agg(*[F.count(F.col(c)).alias(c) for c in wanted]).first()
        for name, cols in needed.items():
            absent = [c for c in cols if not counts[c]]
            if absent:
                problems.append(f"model {name!r} trains on the labels {absent}, which the features table does not "
                                f"have (no values): declare your columns for them in features.custom.label_cols, "
                                f"or remove the model")
    if problems:
        raise ConfigError("base_models.models do not fit the features table:\n  - " + "\n  - ".join(problems))


def train_base_models(spark: SparkSession, cfg: Config, store: TableStore, models: list[str] | None = None
                      ) -> dict[str, Any]:
    """Train the configured base models (or ``models``) out-of-fold; write predictions and metrics."""
    specs = select_models(cfg, models)
    eval_month = evaluation_month(store.read("folds"))
    # one encoding of every feature for all models, cached: a model reads its columns from it
    full, data = encode_training_frame(training_frame(store, cfg), specs)
    data = data.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        check_model_inputs(specs, cfg, data)
    except ConfigError:
        data.unpersist()
        raise
    run_id = store.run.run_id if store.run else "adhoc"
    results = {}
    models_bar = progress.track("train-base", len(specs), "model")
    try:
        for spec in specs:
            try:
                predictions, rows = train_model_oof(spark, cfg, store, spec, data, eval_month, (full, data))
            except Exception as exc:  # the stage stops here: fusion never sees a model with no predictions
                raise BaseModelFailed(spec.name, spec.family, spec.backend, exc) from exc
            store.write_partitions(predictions.drop(LABEL), "oof_predictions", [spec.name])
            predictions.unpersist()
            table = pd.DataFrame(rows).assign(model=spec.name, run_id=run_id)
            metrics_df = frame_from_pandas(spark, table, "base_model_metrics")  # undefined (NaN) → null
            _append_metrics(store, metrics_df, spec.name)
            results[spec.name] = {r["split"]: {k: v for k, v in r.items() if k != "split"} for r in rows}
            models_bar.advance(spec.name)
    finally:
        data.unpersist()
    notes = []
    if eval_month and any(needs_horizons(s) for s in specs) and store.read("folds").filter(F.col("split") == OPEN).limit(1).count():
        notes.append(f"open-window rows postdate the evaluation month {eval_month}: no model fitted on them")
    return {"models": results, "evaluation_month": eval_month, "notes": notes}


def _append_metrics(store: TableStore, row: DataFrame, model: str) -> None:
    """Keep earlier runs' metrics of this model: read its partition, add this run, replace it."""
    if store.exists("base_model_metrics"):
        earlier = store.read("base_model_metrics").filter(F.col("model") == model) \
            .filter(F.col("run_id") != row.first()["run_id"])
        if set(earlier.columns) != set(row.columns):  # a table written before intervals: start it afresh
            earlier = row.limit(0)
        row = earlier.unionByName(row.select(*earlier.columns)).localCheckpoint()
    store.write_partitions(row, "base_model_metrics", [model])
