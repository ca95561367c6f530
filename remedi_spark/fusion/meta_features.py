"""Relative meta-features (REMEDI Algorithm 1) over the base models' out-of-fold predictions.

For one (owner, month) row with predictions p_1..p_M of the M base models, the meta-feature
vector is, in this order (4M + 6 columns, names from :func:`meta_feature_names`)::

    p_<m>...   mean std median max min   norm_<m>...   diff_<m>...   rank_<m>...   range

with the population std (divide by M), ``norm = (p - mean) / (std + 1e-6)``, ``diff = p - mean``,
``rank`` = 1-based position of the model when the row's predictions are sorted descending (ties
broken by model order) and ``range = max - min``. Ranks are across the models of one row, never
across rows.

:func:`relative_meta_features` is the one numpy implementation (vectorized over rows); Spark
applies the same function to each Arrow batch (:func:`add_meta_features`), so the tests'
reference and the job's output cannot drift apart. The stage :func:`build_meta_features` pivots
``oof_predictions`` to one row per (owner, month), adds the meta-features and the label from
``folds`` and writes the ``meta_features`` table.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import Config
from ..io.schemas import DataValidationError, example_keys
from ..io.store import TableStore

EPS = 1e-6
KEYS = ("user_id", "month")
STATS = ("mean", "std", "median", "max", "min")
OOF_TABLE = "oof_predictions"
TABLE = "meta_features"


def _check_models(models: list[str]) -> None:
    if not models:
        raise ValueError("at least one base model is needed for meta-features")
    dupes = sorted({m for m in models if models.count(m) > 1})
    if dupes:
        raise ValueError(f"duplicate model names {dupes}")


def meta_feature_names(models: list[str]) -> list[str]:
    """The 4M + 6 meta-feature column names, in Algorithm 1's order."""
    models = list(models)
    _check_models(models)
    return ([f"p_{m}" for m in models] + list(STATS) + [f"norm_{m}" for m in models]
            + [f"diff_{m}" for m in models] + [f"rank_{m}" for m in models] + ["range"])


def relative_meta_features(p: np.ndarray) -> np.ndarray:
    """Algorithm 1 for every row of ``p`` (N rows x M models) -> (N, 4M + 6) float64.

    Vectorized over rows; each row's values depend only on that row (the input is made
    C-contiguous so a row gives the same bits whatever batch it arrives in).
    """
    p = np.ascontiguousarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"expected an (N, M) array with M >= 1, got shape {p.shape}")
    n, m = p.shape
    hi = p.max(axis=1)
    lo = p.min(axis=1)
    mean = p.mean(axis=1)
    mean = np.where(hi == lo, hi, mean)  # equal predictions: mean is exactly that value, std exactly 0
    diff = p - mean[:, None]
    std = np.sqrt(np.mean(diff * diff, axis=1))  # population std (ddof=0)
    median = np.median(p, axis=1)
    norm = diff / (std[:, None] + EPS)
    # rank: position in a stable descending sort (ties by model order), 1 = highest
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.empty((n, m), dtype=np.float64)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(1, m + 1, dtype=np.float64), (n, m)), axis=1)
    return np.concatenate(
        [p, mean[:, None], std[:, None], median[:, None], hi[:, None], lo[:, None], norm, diff, rank,
         (hi - lo)[:, None]], axis=1)


def pivot_oof(oof: DataFrame, models: list[str] | None = None) -> DataFrame:
    """``oof_predictions`` (one row per model, owner, month) -> one row per (owner, month).

    Columns: user_id, month, fold, split, then ``p_<model>`` for each of ``models`` in the order
    given (default: the sorted distinct model names). Raises :class:`DataValidationError`
    (table ``oof_predictions``) if a requested model has no predictions at all, if some row lacks
    a model's prediction or has more than one, or if fold/split differ between the models of a row.
    """
    def present() -> list[str]:
        return sorted(r["model"] for r in oof.select("model").distinct().collect())

    if models is None:
        models = present()
        if not models:
            raise DataValidationError(OOF_TABLE, [("*", "input is empty (0 rows): train the base models first")])
    models = list(models)
    _check_models(models)
    rows_of = oof.filter(F.col("model").isin(models))
    is_m = {m: F.col("model") == m for m in models}
    wide = rows_of.groupBy(*KEYS).agg(
        F.min("fold").alias("fold"), F.max("fold").alias("__fold_max"),
        F.min("split").alias("split"), F.max("split").alias("__split_max"),
        *[F.max(F.when(is_m[m], F.col("p"))).cast(T.DoubleType()).alias(f"p_{m}") for m in models],
        *[F.count(F.when(is_m[m], 1)).alias(f"__n_{m}") for m in models],
    )
    inconsistent = (F.col("fold") != F.col("__fold_max")) | (F.col("split") != F.col("__split_max"))
    missing = {m: F.col(f"__n_{m}") == 0 for m in models}
    dupes = {m: F.col(f"__n_{m}") > 1 for m in models}
    counts = wide.agg(
        F.count(F.lit(1)).alias("__rows"),
        F.sum(F.when(inconsistent, 1).otherwise(0)).alias("__inconsistent"),
        *[F.sum(F.when(missing[m], 1).otherwise(0)).alias(f"__missing_{i}") for i, m in enumerate(models)],
        *[F.sum(F.when(dupes[m], 1).otherwise(0)).alias(f"__dupes_{i}") for i, m in enumerate(models)],
    ).collect()[0]
    rows = counts["__rows"]
    absent = [m for i, m in enumerate(models) if (counts[f"__missing_{i}"] or 0) == rows]
    if absent:  # checked here rather than up front: one Spark job less when the data is fine
        raise DataValidationError(OOF_TABLE, [("model", f"no predictions at all for models {absent}; "
                                                         f"present: {present()}")])
    problems = []
    for i, m in enumerate(models):
        if counts[f"__missing_{i}"]:
            problems.append((f"p_{m}", f"model {m!r} has no prediction for {counts[f'__missing_{i}']} of {rows} "
                                       f"(user_id, month) rows, e.g. {example_keys(wide, KEYS, missing[m])}"))
        if counts[f"__dupes_{i}"]:
            problems.append((f"p_{m}", f"model {m!r} has more than one prediction for {counts[f'__dupes_{i}']} "
                                       f"(user_id, month) rows, e.g. {example_keys(wide, KEYS, dupes[m])}"))
    if counts["__inconsistent"]:
        problems.append(("fold,split", f"{counts['__inconsistent']} (user_id, month) rows have a different fold or "
                                       f"split for different models, e.g. {example_keys(wide, KEYS, inconsistent)}"))
    if problems:
        raise DataValidationError(OOF_TABLE, problems)
    return wide.select(*KEYS, "fold", "split", *[f"p_{m}" for m in models])


def add_meta_features(df: DataFrame, models: list[str]) -> DataFrame:
    """Append Algorithm 1's meta-features to ``df``, which has a ``p_<model>`` column per model.

    Output columns: ``df``'s other columns (in their order), then the 4M + 6 meta-features in
    :func:`meta_feature_names` order, all double (the ``p_<model>`` columns are cast to double).
    Computed per Arrow batch by :func:`relative_meta_features` (``mapInPandas``).
    """
    names = meta_feature_names(models)
    p_cols = names[:len(models)]
    lacking = [c for c in p_cols if c not in df.columns]
    if lacking:
        raise ValueError(f"add_meta_features: columns {lacking} are missing; found {df.columns}")
    clash = [c for c in names[len(models):] if c in df.columns]
    if clash:
        raise ValueError(f"add_meta_features: columns {clash} already exist")
    others = [c for c in df.columns if c not in p_cols]
    df = df.select(*others, *[F.col(c).cast(T.DoubleType()).alias(c) for c in p_cols])
    new = names[len(models):]
    out_schema = T.StructType([*df.schema.fields, *[T.StructField(c, T.DoubleType(), True) for c in new]])

    def batches(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in frames:
            values = relative_meta_features(pdf[p_cols].to_numpy(dtype=np.float64))
            meta = pd.DataFrame(values[:, len(p_cols):], columns=new, index=pdf.index)
            yield pd.concat([pdf, meta], axis=1)

    return df.mapInPandas(batches, schema=out_schema)


def build_meta_features(spark: SparkSession, cfg: Config, store: TableStore, models: list[str] | None = None
                        ) -> dict[str, Any]:
    """Write the ``meta_features`` table: one row per (owner, month) of ``oof_predictions`` with
    fold, split, the label ``y`` from ``folds`` and the 4M + 6 meta-features of ``models``
    (default: every model of ``base_models.models``, sorted by name: a configured model without
    predictions, e.g. one whose training failed, is an error, never a teacher without its column)."""
    wide = pivot_oof(store.read(OOF_TABLE), models or sorted(s.name for s in cfg.base_models.models))
    models = [c[len("p_"):] for c in wide.columns if c.startswith("p_")]
    labels = store.read("folds").select(*KEYS, "y")
    joined = wide.join(labels, list(KEYS), "left").select(*KEYS, "fold", "split", "y", *[f"p_{m}" for m in models])
    joined = joined.persist(StorageLevel.MEMORY_AND_DISK)  # checked, then written: pivot once
    try:
        no_label = F.col("y").isNull()  # y is non-null in folds: null here means no folds row
        n_no_label = joined.filter(no_label).count()
        if n_no_label:
            raise DataValidationError("folds", [(
                "user_id,month", f"{n_no_label} (user_id, month) rows of {OOF_TABLE} have no row in folds (no label "
                                 f"y), e.g. {example_keys(joined, KEYS, no_label)}: rebuild the base models on these "
                                 "folds")])
        meta = add_meta_features(joined, models)
        version = store.write_table(meta, TABLE)
        per_split = joined.groupBy("split").count().collect()  # the rows just written, from the cache
    finally:
        joined.unpersist()
    return {
        "models": models, "version": version, "meta_features": 4 * len(models) + 6, "columns": len(meta.columns),
        "rows": {r["split"]: r["count"] for r in sorted(per_split, key=lambda r: r["split"])},
    }
