"""Fold job: user-grouped, label-stratified K folds plus the two evaluation splits.

Only fully labelled feature rows take part. A user's label for stratification is 1 if any of
their labelled months is positive. Within each stratum users are ordered by a seeded hash and
dealt round-robin into folds, so every fold gets the same share of positive users (±1), a user
never spans two folds, and the result depends only on the seed and the data.

* ``split``: random hold-out by user (``folds.test_fraction``, 20% as in the paper), stratified
  the same way with an independent hash.
* ``oot_split``: out-of-time: rows of the newest fully labelled month, the *evaluation month*,
  are ``test``. No model fits or early-stops on that month (base models, refits, meta-models,
  students): it is scored like a new month, every owner of it. A table with a single labelled
  month has no evaluation month (every row ``train``); the stages then evaluate on held-out owners only.

With ``folds.include_open_windows`` the table also holds the rows of the months after the newest
fully labelled one, whose T+1..T+3 window is still open (some or all of y_h1..y_h3 unknown), for
the users of the training split, with their user's fold and ``split = open`` (``oot_split =
train``, ``y`` null unless an observed horizon is already 1). Only models that train on the
horizon labels (KAML) read them; everything that filters ``split`` on ``train``/``test`` (OOF
training and predictions, metrics, fusion, distillation, the report) never sees them. Held-out
users' open rows are left out, so no label of a held-out user reaches any training run.
"""
from __future__ import annotations

import sys

from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..config import Config
from ..io.schemas import DataValidationError
from ..io.store import TableStore

ID = "user_id"


def _ranked(users: DataFrame, seed: int, salt: int, name: str) -> DataFrame:
    order = Window.partitionBy("user_y").orderBy(F.xxhash64(ID, F.lit(seed), F.lit(salt)), ID)
    return users.withColumn(name, F.row_number().over(order) - 1)


def fold_assignment(features: DataFrame, n_folds: int, seed: int, test_fraction: float) -> DataFrame:
    """(user_id, month, fold, split, oot_split, y) for the labelled rows of ``features``."""
    if n_folds < 2:
        raise ValueError(f"folds.n_folds must be >= 2, got {n_folds}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"folds.test_fraction must be in (0, 1), got {test_fraction}")
    rows = features.filter(F.col("label_complete")).select(ID, "month", "y")
    users = rows.groupBy(ID).agg(F.max("y").alias("user_y"))
    users = _ranked(_ranked(users, seed, 1, "_fold_rank"), seed, 2, "_split_rank")
    r = F.col("_split_rank")
    # exactly test_fraction of each stratum, spread evenly over the hash order
    is_test = F.floor((r + 1) * test_fraction) > F.floor(r * test_fraction)
    users = users.select(
        ID, (F.col("_fold_rank") % n_folds).cast("int").alias("fold"),
        F.when(is_test, "test").otherwise("train").alias("split"),
    )
    months = rows.agg(F.max("month"), F.countDistinct("month")).first()
    oot_month = months[0] if months[1] > 1 else None  # one labelled month: nothing left to train on
    return rows.join(users, ID, "inner").select(
        ID, "month", "fold", "split",
        F.when(F.col("month") == F.lit(oot_month), "test").otherwise("train").alias("oot_split"), "y",
    )


def evaluation_month(folds: DataFrame) -> str | None:
    """The folds table's evaluation month (its ``oot_split = test`` month), or None when it has none."""
    return folds.filter(F.col("oot_split") == "test").agg(F.max("month")).first()[0]


OPEN = "open"


def open_window_rows(features: DataFrame, folds: DataFrame) -> DataFrame:
    """Rows of ``features`` after the newest month of ``folds`` whose label window is still open, for
    the users of ``folds``' training split: (user_id, month, fold, split='open', oot_split='train', y).

    Users without a fully labelled row have no fold and are left out.
    """
    newest = folds.agg(F.max("month")).first()[0]
    users = folds.filter(F.col("split") == "train").select(ID, "fold").distinct()
    rows = features.filter(~F.col("label_complete") & (F.col("month") > F.lit(newest))).select(ID, "month", "y")
    return rows.join(users, ID, "inner").select(
        ID, "month", "fold", F.lit(OPEN).alias("split"), F.lit("train").alias("oot_split"), "y")


def assign_folds(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Write the ``folds`` table from the labelled rows of ``features`` (``folds.months`` or all)."""
    fc = cfg.folds
    features = store.read("features")
    if fc.months:
        features = features.filter(F.col("month").isin(fc.months))
    labelled = {r["month"] for r in features.filter("label_complete").select("month").distinct().collect()}
    if fc.months:
        missing = sorted(set(fc.months) - labelled)
        if missing:
            raise DataValidationError("features", [("month", f"no fully labelled rows for folds.months {missing}")])
    if not labelled:
        raise DataValidationError("features", [("label_complete", "no fully labelled rows to build folds from")])
    oot = max(labelled) if len(labelled) > 1 else None
    warnings = []
    if oot is None:
        warnings.append(f"a single labelled month ({min(labelled)}): no evaluation month is held out of training; "
                        "models are evaluated on held-out owners only")
        print(f"[remedi] note: folds: {warnings[-1]}", file=sys.stderr, flush=True)
    oot_positives = (features.filter(F.col("label_complete") & (F.col("month") == oot)).agg(F.sum("y")).first()[0]
                     if oot else None)
    if oot and not oot_positives:
        warnings.append(f"the out-of-time test month {oot} has no positives: its AUC and lift are undefined; "
                        "check the purchases extract or set folds.months")
        print(f"[remedi] warning: folds: {warnings[-1]}", file=sys.stderr, flush=True)
    folds = fold_assignment(features, fc.n_folds, fc.seed, fc.test_fraction)
    if fc.include_open_windows:
        folds = folds.localCheckpoint()  # read twice below: assign once
        folds = folds.unionByName(open_window_rows(store.read("features"), folds))
    version = store.write_table(folds, "folds")
    everything = store.read("folds", version=version)
    written = everything.filter(F.col("split") != OPEN)
    per_fold = written.groupBy("fold").agg(F.countDistinct(ID).alias("users"), F.count(F.lit(1)).alias("rows"),
                                           F.sum("y").alias("positives")).orderBy("fold").collect()
    per_split = written.groupBy("split").agg(F.countDistinct(ID).alias("users"), F.sum("y").alias("positives")).collect()
    return {
        "months": sorted(labelled), "oot_test_month": oot, "version": version,
        "folds": {r["fold"]: {"users": r["users"], "rows": r["rows"], "positives": r["positives"]} for r in per_fold},
        "split": {r["split"]: {"users": r["users"], "positives": r["positives"]} for r in per_split},
        "open_rows": everything.filter(F.col("split") == OPEN).count() if fc.include_open_windows else 0,
        "warnings": warnings,
    }
