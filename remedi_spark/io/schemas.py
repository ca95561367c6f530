"""Table schemas (``schemas/<table>.json``) and the one validation function every write uses.

A schema lists columns (name, Spark type, nullable, optional ``nonnegative``, ``allowed``
values, ``format: month``), the key columns, the partition column, what to do with columns it
does not list (``forbid`` or ``numeric_or_string``, for feature tables) and whether a column may
be entirely null (``all_null_columns: forbid`` on input tables: a column with no value at all is
a broken extract, not missing data).

:func:`validate` checks a DataFrame against it and raises :class:`DataValidationError`
naming the table, the column, the problem, how many rows and a few example keys; nothing is
written when it fails. Floating-point columns never accept NaN or ±inf (missing is null).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

_TYPES: dict[str, T.DataType] = {
    "long": T.LongType(), "integer": T.IntegerType(), "double": T.DoubleType(),
    "string": T.StringType(), "boolean": T.BooleanType(), "date": T.DateType(),
    "timestamp": T.TimestampType(),
}
# a value of the left type may be given as any of the right (it is cast on write)
_WIDENS = {
    "long": (T.LongType, T.IntegerType, T.ShortType, T.ByteType),
    "integer": (T.IntegerType, T.ShortType, T.ByteType),
    "double": (T.DoubleType, T.FloatType, T.IntegerType, T.LongType, T.ShortType, T.ByteType, T.DecimalType),
}
_NUMERIC_OR_STRING = (T.NumericType, T.StringType, T.BooleanType)
MONTH_PATTERN = r"^[0-9]{4}-(0[1-9]|1[0-2])$"


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    nonnegative: bool = False
    allowed: tuple | None = None
    format: str | None = None
    description: str = ""


@dataclass(frozen=True)
class TableSchema:
    table: str
    description: str
    keys: tuple[str, ...]
    partition_by: str | None
    extra_columns: str
    columns: tuple[Column, ...]
    all_null_columns: str = "allow"

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def struct(self) -> T.StructType:
        """The Spark schema of the listed columns."""
        return T.StructType([T.StructField(c.name, _TYPES[c.type], c.nullable) for c in self.columns])


class DataValidationError(ValueError):
    """Input does not match its table schema. ``problems`` is a list of (column, problem)."""

    def __init__(self, table: str, problems: list[tuple[str, str]]):
        self.table = table
        self.problems = problems
        lines = "\n".join(f"  - column {col!r}: {problem}" for col, problem in problems)
        super().__init__(f"table {table!r} failed validation, nothing was written:\n{lines}")


def schemas_dir() -> Any:
    """Where the schema files are: the ``schemas/`` folder of the source checkout this package was
    imported from (a git worktree on ``PYTHONPATH`` must not read the schemas of another checkout's
    editable install), else the ``remedi_spark.schemas`` package (a folder in an install, a zip entry
    when the wheel is shipped with ``--py-files``, so a Traversable, not a Path)."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "schemas" / "features.json").is_file() and (checkout / "remedi_spark").is_dir():
        return checkout / "schemas"
    try:
        return resources.files("remedi_spark.schemas")
    except ModuleNotFoundError:
        return checkout / "schemas"


@lru_cache(maxsize=None)
def load_schema(table: str) -> TableSchema:
    """Read ``schemas/<table>.json``."""
    root = schemas_dir()
    entry = root.joinpath(f"{table}.json")
    if not entry.is_file():
        raise KeyError(f"no schema for table {table!r} in {root}")
    text = entry.read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    cols = tuple(
        Column(name=c["name"], type=c["type"], nullable=c["nullable"], nonnegative=c.get("nonnegative", False),
               allowed=tuple(c["allowed"]) if "allowed" in c else None, format=c.get("format"),
               description=c.get("description", ""))
        for c in raw["columns"]
    )
    return TableSchema(table=raw["table"], description=raw.get("description", ""), keys=tuple(raw["keys"]),
                       partition_by=raw.get("partition_by"), extra_columns=raw.get("extra_columns", "forbid"),
                       columns=cols, all_null_columns=raw.get("all_null_columns", "allow"))


def _type_ok(expected: str, actual: T.DataType) -> bool:
    return isinstance(actual, _WIDENS.get(expected, (type(_TYPES[expected]),)))


def _structure_problems(df: DataFrame, schema: TableSchema) -> list[tuple[str, str]]:
    problems = []
    actual = {f.name: f.dataType for f in df.schema.fields}
    for c in schema.columns:
        if c.name not in actual:
            problems.append((c.name, "missing"))
        elif not _type_ok(c.type, actual[c.name]):
            problems.append((c.name, f"expected type {c.type}, found {actual[c.name].simpleString()}"))
    for name, dtype in actual.items():
        if name in schema.names:
            continue
        if schema.extra_columns == "forbid":
            problems.append((name, "not in the schema (unexpected column)"))
        elif not isinstance(dtype, _NUMERIC_OR_STRING):
            problems.append((name, f"feature columns must be numeric, boolean or string, found {dtype.simpleString()}"))
    return problems


def _float_columns(df: DataFrame, schema: TableSchema) -> list[str]:
    return [f.name for f in df.schema.fields if isinstance(f.dataType, (T.DoubleType, T.FloatType))
            and (f.name in schema.names or schema.extra_columns != "forbid")]


def _value_checks(df: DataFrame, schema: TableSchema, partitions: list[str] | None) -> list[tuple[str, str, Any]]:
    """(column, problem, boolean Column that is true on a bad row) for every row-level rule."""
    checks = []
    for c in schema.columns:
        col = F.col(c.name)
        if not c.nullable:
            what = "key column has null values" if c.name in schema.keys else "null values in a non-nullable column"
            checks.append((c.name, what, col.isNull()))
        if c.nonnegative:  # -inf is reported once, as infinite, below
            negative = (col < 0) & (col != float("-inf")) if c.type == "double" else col < 0
            checks.append((c.name, "negative values (must be >= 0)", negative))
        if c.allowed is not None:
            checks.append((c.name, f"values outside {list(c.allowed)}", col.isNotNull() & ~col.isin(list(c.allowed))))
        if c.format == "month":
            checks.append((c.name, "values not in 'YYYY-MM' form", col.isNotNull() & ~col.rlike(MONTH_PATTERN)))
    for name in _float_columns(df, schema):
        col = F.col(f"`{name}`")
        checks.append((name, "NaN or infinite values (missing must be null)",
                       F.isnan(col) | col.isin(float("inf"), float("-inf"))))
    if partitions is not None and schema.partition_by:
        checks.append((schema.partition_by, f"rows outside the partitions being written {partitions}",
                       ~F.col(schema.partition_by).isin(partitions)))
    return checks


def format_keys(rows: list[Any], keys: Sequence[str]) -> str:
    """Rows' keys as ``(user_id=1, month='2024-06'), (user_id=2, month='2024-06')``."""
    return ", ".join("(" + ", ".join(f"{k}={r[k]!r}" for k in keys) + ")" for r in rows)


def example_keys(df: DataFrame, keys: Sequence[str], bad: Any, n: int = 3) -> str:
    """The first ``n`` keys (in key order) of the rows of ``df`` where the Column ``bad`` holds."""
    return format_keys(df.filter(bad).select(*keys).orderBy(*keys).limit(n).collect(), keys)


def validate(df: DataFrame, table: str, partitions: list[str] | None = None) -> None:
    """Check ``df`` against ``schemas/<table>.json``; raise :class:`DataValidationError` if it fails.

    Checks, in order: missing or mistyped columns (and unexpected ones), empty input, null
    keys and nulls in non-nullable columns, negative counts, NaN or infinite floats, values
    outside an allowed set, malformed months, rows outside ``partitions`` (the partition values
    being written, e.g. months), columns with no value at all (tables with
    ``all_null_columns: forbid``) and duplicate keys. Each row-level problem says how many rows
    and gives a few example keys.
    """
    schema = load_schema(table)
    problems = _structure_problems(df, schema)
    if problems:
        raise DataValidationError(table, problems)
    checks = _value_checks(df, schema, partitions)
    nullable = ([c for c in df.columns if c not in schema.keys] if schema.all_null_columns == "forbid" else [])
    aggs = [F.count(F.lit(1)).alias("__rows")] + [
        F.sum(F.when(bad, 1).otherwise(0)).alias(f"__c{i}") for i, (_, _, bad) in enumerate(checks)
    ] + [F.count(F.col(f"`{c}`")).alias(f"__n{i}") for i, c in enumerate(nullable)]
    row = df.agg(*aggs).collect()[0]
    if row["__rows"] == 0:
        raise DataValidationError(table, [("*", "input is empty (0 rows)")])
    keys = list(schema.keys)
    problems = [(col, f"{row[f'__c{i}']} rows with {what}, e.g. {example_keys(df, keys, bad)}")
                for i, (col, what, bad) in enumerate(checks) if row[f"__c{i}"]]
    problems += [(c, f"all {row['__rows']} values are null (a broken extract? drop the column or fix the source)")
                 for i, c in enumerate(nullable) if row[f"__n{i}"] == 0]
    if problems:
        raise DataValidationError(table, problems)
    dup = df.groupBy(*keys).count().filter(F.col("count") > 1)
    first = dup.orderBy(*keys).limit(3).collect()
    if first:
        n_dup = dup.count()
        raise DataValidationError(table, [(",".join(keys), f"{n_dup} duplicate keys, e.g. {format_keys(first, keys)}")])


def conform(df: DataFrame, table: str) -> DataFrame:
    """Cast the schema's columns to their declared types and put them first, in schema order."""
    schema = load_schema(table)
    extra = [c for c in df.columns if c not in schema.names]
    return df.select(*[F.col(c.name).cast(_TYPES[c.type]).alias(c.name) for c in schema.columns], *extra)


def frame_from_pandas(spark: Any, pdf: Any, table: str) -> Any:
    """A Spark DataFrame with ``table``'s exact schema from a small pandas frame built on the driver
    (result tables): columns in schema order, NaN/NA → null, integral columns back to int."""
    import pandas as pd

    struct = load_schema(table).struct()
    rows = []
    for record in pdf.reindex(columns=[f.name for f in struct.fields]).itertuples(index=False):
        row = []
        for value, f in zip(record, struct.fields):
            if value is None or (not isinstance(value, str) and pd.isna(value)):
                row.append(None)
            elif isinstance(f.dataType, (T.LongType, T.IntegerType)):
                row.append(int(value))
            elif isinstance(f.dataType, T.DoubleType):
                row.append(float(value))
            else:
                row.append(value)
        rows.append(tuple(row))
    return spark.createDataFrame(rows, struct)
