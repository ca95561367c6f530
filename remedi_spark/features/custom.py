"""Bring-your-own features: import a user's feature table into the ``features`` table.

``features.custom`` names the table (``format``: a Delta, Parquet or CSV ``path``, or a metastore
``table``) and its id, month, label and feature columns. Months may be ``'YYYY-MM'`` strings, dates
or timestamps. A CSV is read with its header, every column as text, then cast: the id to an
integer, the label and declared labels to 0/1, the non-categorical features to numbers; a value that
does not cast is an error naming the column and example rows (nothing is written).
The result has the same keys and label columns as built-in features (per-horizon and funnel labels
are null unless ``label_cols`` declares the user's columns for them; ``label_complete`` = label is
not null) and is validated the same way.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import Config, ConfigError
from ..io.schemas import DataValidationError
from .labels import FUNNEL_LABELS, HORIZON_LABELS, LABEL_COLUMNS


def _read_custom(spark: SparkSession, cfg: Config) -> tuple[DataFrame, str]:
    c = cfg.features.custom
    if c.format == "table":
        return spark.read.table(c.table), c.table
    if not c.path:
        raise ConfigError(f"features.custom: format {c.format!r} reads a `path`: set it")
    if c.format == "csv":  # every column as text: cast_csv_columns checks each value
        return spark.read.option("header", True).option("inferSchema", False).csv(c.path), c.path
    return spark.read.format(c.format).load(c.path), c.path


def _failed_casts(df: DataFrame, casts: dict[str, str], id_col: str, table: str, examples: int = 3) -> None:
    """A DataValidationError naming each column of ``casts`` (column → type) with values that are not
    empty but do not cast, with up to ``examples`` rows (id and value) each."""
    bad = {col: F.col(col).isNotNull() & (F.trim(F.col(col)) != "") & F.col(col).cast(kind).isNull()
           for col, kind in casts.items()}
    counts = df.agg(*[F.sum(cond.cast("int")).alias(col) for col, cond in bad.items()]).first()
    problems = []
    for col, kind in casts.items():
        if counts[col]:
            rows = df.filter(bad[col]).select(id_col, col).limit(examples).collect()
            shown = ", ".join(f"{id_col}={r[0]} value {r[1]!r}" for r in rows)
            problems.append((col, f"{counts[col]} values are not {kind} (e.g. {shown})"))
    if problems:
        raise DataValidationError(table, problems)


def cast_csv_columns(df: DataFrame, c: Any, table: str) -> DataFrame:
    """A CSV's text columns cast to what the import expects (see the module doc); bad values raise."""
    numeric = [col for col in c.feature_cols if col not in c.categorical_cols]
    casts = {c.id_col: "bigint", c.label_col: "double", **{col: "double" for col in c.label_cols.values()},
             **{col: "double" for col in numeric}}
    casts = {col: kind for col, kind in casts.items() if col in df.columns}
    _failed_casts(df, casts, c.id_col, table)
    return df.select(*[F.col(col).cast(casts[col]).alias(col) if col in casts else F.col(col) for col in df.columns])


def import_custom_features(spark: SparkSession, cfg: Config, months: list[str] | None) -> tuple[DataFrame, list[str]]:
    """The user's table mapped onto the ``features`` layout, and the months it covers (or ``months``)."""
    c = cfg.features.custom
    df, name = _read_custom(spark, cfg)
    table = f"custom features ({name})"
    if not c.feature_cols:
        raise DataValidationError(table, [("feature_cols", "features.custom.feature_cols is empty")])
    wanted = [c.id_col, c.month_col, c.label_col, *c.feature_cols]
    missing = [col for col in wanted if col not in df.columns]
    missing += [f"{col} (declared for {name} in features.custom.label_cols)" for name, col in c.label_cols.items()
                if col not in df.columns]
    if missing:
        raise DataValidationError(table, [(col, "missing") for col in missing])
    if c.format == "csv":
        df = cast_csv_columns(df, c, table)
    reserved = {"user_id", "month", *LABEL_COLUMNS}
    clash = [col for col in c.feature_cols if col in reserved]
    if clash:
        raise DataValidationError(table, [(col, "feature column uses a reserved name") for col in clash])
    leak = [col for col in (c.label_col, *c.label_cols.values()) if col in c.feature_cols]
    if leak:
        raise DataValidationError(table, [(col, "a label column is also listed in feature_cols (a leak)") for col in leak])
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
    for col in (c.label_col, *c.label_cols.values()):
        label_type = df.schema[col].dataType
        if not isinstance(label_type, (T.NumericType, T.BooleanType)):
            raise DataValidationError(table, [(col, f"label must be 0/1, found {label_type.simpleString()}")])
    counts = df.agg(*[F.count(F.col(col)).alias(col) for col in c.feature_cols]).first()
    empty = [col for col in c.feature_cols if counts[col] == 0]
    if empty:
        raise DataValidationError(table, [(col, "all values are null (no information): drop it from "
                                                "features.custom.feature_cols or fix the source") for col in empty])
    label = F.col(c.label_col).cast("int")

    def declared(name: str):  # a label some models need: the user's column when declared, else unknown
        col = c.label_cols.get(name)
        return (F.col(col).cast("int") if col else F.lit(None).cast("int")).alias(name)

    out = df.select(
        F.col(c.id_col).cast("long").alias("user_id"), month.alias("month"), label.alias("y"),
        *[declared(name) for name in HORIZON_LABELS],
        label.isNotNull().alias("label_complete"),
        *[declared(name) for name in FUNNEL_LABELS],
        *[F.col(col) for col in c.feature_cols],
    )
    if months is None:
        months = sorted(r["month"] for r in out.select("month").distinct().collect() if r["month"] is not None)
    else:
        out = out.filter(F.col("month").isin(months))
    return out, months
