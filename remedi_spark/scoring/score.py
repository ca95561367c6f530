"""Scoring job: the distilled student scores every owner of one month (``scores`` table).

The student is read from ``<root>/models/student/`` (``scoring.model_dir``), or through MLflow from
``scoring.model_uri`` (e.g. ``models:/remedi-student@champion``: the registered version's student
folder, scored the same way), and shipped to the executors once (a
broadcast of its LightGBM text, parsed once per Python worker); the month's feature rows are
scored in Arrow batches (``mapInPandas``). Rank 1 is the highest score (ties by owner id);
``percentile`` = share of the month's owners scored at or below the row, in percent.
Re-scoring a month replaces its partition. Categorical values the student never saw in training
are scored as missing; how many per column is logged and kept in the summary (``unseen_categories``).
"""
from __future__ import annotations

import sys
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..config import Config
from ..distill.students import load_student
from ..io.schemas import DataValidationError
from ..io.store import TableStore
from ..models.base import BaseModel
from ..months import parse_month


def resolve_month(store: TableStore, month: str | None) -> str:
    """``month`` (checked), or the newest month of the features table."""
    if month:
        parse_month(month)
        return month
    newest = store.read("features").agg(F.max("month")).first()[0]
    if newest is None:
        raise DataValidationError("features", [("month", "the table has no rows: nothing to score")])
    return newest


def student_scores(student: BaseModel, features: DataFrame) -> DataFrame:
    """(user_id, month, score) of ``student`` for ``features`` rows."""
    return student.predict(student.features.encode(features)).withColumnRenamed("p", "score")


def score_month(spark: SparkSession, cfg: Config, store: TableStore, month: str | None = None) -> dict[str, Any]:
    """Stage ``score``: every owner of ``month`` (default: ``scoring.month`` or the newest month)."""
    month = resolve_month(store, month or cfg.scoring.month)
    features = store.read("features", months=[month])
    n = features.count()
    if n == 0:
        present = [r[0] for r in store.read("features").select("month").distinct().orderBy("month").collect()]
        raise DataValidationError("features", [("month", f"no feature rows for month {month}; months present: "
                                                         f"{present[0] if present else '-'}..{present[-1] if present else '-'}"
                                                         " — run the feature job for this month first")])
    student = load_student(spark, cfg, store)
    version = student.run_id or "unknown"
    scored = student_scores(student.model, features)
    unseen = student.model.features.unseen_counts(features)
    for column, count in unseen.items():  # the documented repair: scored as missing, never a crash
        print(f"[remedi] warning: features.{column}: {count} of {n} rows of {month} hold values the student "
              "never saw in training; they are scored as missing", file=sys.stderr, flush=True)
    order = Window.orderBy(F.desc("score"), F.asc("user_id"))  # one global order over ~800k rows
    ranked = scored.withColumn("rank", F.row_number().over(order)).select(
        F.lit(month).alias("month"), "user_id", "score", "rank",
        (F.lit(100.0) * (F.lit(n) - F.col("rank") + 1) / F.lit(n)).alias("percentile"),
        F.lit(version).alias("model_version"),
        F.lit(store.run.run_id if store.run else "adhoc").alias("run_id"))
    written = store.write_months(ranked, "scores", [month])
    top = store.read("scores", months=[month]).agg(F.max("score"), F.avg("score")).first()
    return {"month": month, "owners": n, "model_version": version, "model": student.path, "version": written,
            "unseen_categories": unseen,
            "max_score": float(top[0]), "mean_score": float(top[1])}
