"""Bring-your-own features: import a user's feature table into the ``features`` table.

``features.custom`` names the table (a Delta ``path`` or a metastore ``table``) and its id,
month, label and feature columns. Months may be ``'YYYY-MM'`` strings, dates or timestamps.
The result has the same keys and label columns as built-in features (per-horizon labels
and funnel labels are unknown, so null; ``label_complete`` = label is not null) and is validated the same way.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import Config
from ..io.schemas import DataValidationError
from .labels import FUNNEL_LABELS, HORIZON_LABELS, LABEL_COLUMNS


def _read_custom(spark: SparkSession, cfg: Config) -> tuple[DataFrame, str]:
    c = cfg.features.custom
    if bool(c.path) == bool(c.table):
        raise ValueError("features.custom: set exactly one of `path` (Delta path) or `table` (metastore name)")
    if c.path:
        return spark.read.format("delta").load(c.path), c.path
    return spark.read.table(c.table), c.table


def import_custom_features(spark: SparkSession, cfg: Config, months: list[str] | None) -> tuple[DataFrame, list[str]]:
    """The user's table mapped onto the ``features`` layout, and the months it covers (or ``months``)."""
    c = cfg.features.custom
    df, name = _read_custom(spark, cfg)
    table = f"custom features ({name})"
    if not c.feature_cols:
        raise DataValidationError(table, [("feature_cols", "features.custom.feature_cols is empty")])
    wanted = [c.id_col, c.month_col, c.label_col, *c.feature_cols]
    missing = [col for col in wanted if col not in df.columns]
    if missing:
        raise DataValidationError(table, [(col, "missing") for col in missing])
    reserved = {"user_id", "month", *LABEL_COLUMNS}
    clash = [col for col in c.feature_cols if col in reserved]
    if clash:
        raise DataValidationError(table, [(col, "feature column uses a reserved name") for col in clash])
    bad_cat = [col for col in c.categorical_cols if col not in c.feature_cols]
    if bad_cat:
        raise DataValidationError(table, [(col, "categorical column is not among feature_cols") for col in bad_cat])
    id_type = df.schema[c.id_col].dataType
    if not isinstance(id_type, (T.IntegerType, T.LongType, T.ShortType)):
        raise DataValidationError(table, [(c.id_col, f"id must be an integer type, found {id_type.simpleString()}")])
    month_type = df.schema[c.month_col].dataType
    if isinstance(month_type, (T.DateType, T.TimestampType)):
        month = F.date_format(F.col(c.month_col), "yyyy-MM")
    elif isinstance(month_type, T.StringType):
        month = F.col(c.month_col)
    else:
        raise DataValidationError(table, [(c.month_col, f"month must be 'YYYY-MM' text or a date, found "
                                                         f"{month_type.simpleString()}")])
    label_type = df.schema[c.label_col].dataType
    if not isinstance(label_type, (T.NumericType, T.BooleanType)):
        raise DataValidationError(table, [(c.label_col, f"label must be 0/1, found {label_type.simpleString()}")])
    counts = df.agg(*[F.count(F.col(col)).alias(col) for col in c.feature_cols]).first()
    empty = [col for col in c.feature_cols if counts[col] == 0]
    if empty:
        raise DataValidationError(table, [(col, "all values are null (no information): drop it from "
                                                "features.custom.feature_cols or fix the source") for col in empty])
    label = F.col(c.label_col).cast("int")
    out = df.select(
        F.col(c.id_col).cast("long").alias("user_id"), month.alias("month"), label.alias("y"),
        *[F.lit(None).cast("int").alias(name) for name in HORIZON_LABELS],
        label.isNotNull().alias("label_complete"),
        *[F.lit(None).cast("int").alias(name) for name in FUNNEL_LABELS],
        *[F.col(col) for col in c.feature_cols],
    )
    if months is None:
        months = sorted(r["month"] for r in out.select("month").distinct().collect() if r["month"] is not None)
    else:
        out = out.filter(F.col("month").isin(months))
    return out, months
