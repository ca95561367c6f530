"""Population Stability Index, in numpy (the reference) and over Spark frames (the job).

PSI = Σ_b (a_b − e_b) · ln(a_b / e_b) over buckets b, with e_b the reference (training) share and
a_b the current month's share. Numeric buckets are the reference's deciles (edges from
``approxQuantile`` on Spark, exact quantiles in numpy); missing values are a bucket of their own,
so a feed going dark shows up as drift; string columns bucket by value. Empty buckets get a
share of ``EPS`` so the logarithm stays finite. Bands: < 0.1 stable, 0.1–0.25 moderate shift,
≥ 0.25 significant shift (the usual credit-scoring reading).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

EPS = 1e-4
MISSING = "missing"
BANDS = ((0.1, "stable"), (0.25, "moderate"), (float("inf"), "significant"))


def psi_band(value: float) -> str:
    """``stable`` (< 0.1), ``moderate`` (0.1–0.25) or ``significant`` (≥ 0.25)."""
    return next(name for limit, name in BANDS if value < limit)


def psi_from_counts(expected: dict[str, float], actual: dict[str, float]) -> float:
    """PSI of two bucket → count maps (buckets missing from one side count 0)."""
    buckets = sorted(set(expected) | set(actual))
    e = np.array([expected.get(b, 0.0) for b in buckets], dtype=float)
    a = np.array([actual.get(b, 0.0) for b in buckets], dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        raise ValueError("PSI needs rows on both sides")
    e = np.maximum(e / e.sum(), EPS)
    a = np.maximum(a / a.sum(), EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def decile_edges(values: np.ndarray, bins: int = 10) -> list[float]:
    """Interior bucket edges: the reference's quantiles 1/bins .. (bins-1)/bins, deduplicated."""
    finite = values[~np.isnan(values)]
    if len(finite) == 0:
        return []
    return sorted(set(np.quantile(finite, np.arange(1, bins) / bins).tolist()))


def bucket_of(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Bucket labels: ``missing`` for NaN, else ``b<i>`` with i = number of edges below the value
    (a value equal to an edge goes to the lower bucket)."""
    idx = np.searchsorted(np.asarray(edges, dtype=float), values, side="left")
    return np.where(np.isnan(values), MISSING, np.char.add("b", idx.astype(str)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """PSI of numeric ``actual`` against ``expected`` with the reference's decile buckets."""
    expected, actual = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    edges = decile_edges(expected, bins)
    count = lambda v: pd.Series(bucket_of(v, edges)).value_counts().to_dict()  # noqa: E731
    return psi_from_counts(count(expected), count(actual))


def spark_edges(reference: DataFrame, columns: list[str], bins: int, rel_error: float) -> dict[str, list[float]]:
    """Decile edges of every numeric column of ``reference`` in one ``approxQuantile`` pass."""
    numeric = [c for c in columns if not isinstance(reference.schema[c].dataType, T.StringType)]
    if not numeric:
        return {}
    probs = [i / bins for i in range(1, bins)]
    quantiles = reference.select(*[F.col(c).cast("double").alias(c) for c in numeric]) \
        .approxQuantile(numeric, probs, rel_error)
    return {c: sorted(set(q)) for c, q in zip(numeric, quantiles)}


def _bucket_expr(column: str, edges: list[float] | None) -> F.Column:
    if edges is None:  # string column: the value is the bucket
        return F.coalesce(F.col(column).cast("string"), F.lit(MISSING))
    value = F.col(column).cast("double")
    expr = F.when(value.isNull() | F.isnan(value), F.lit(MISSING))
    for i, edge in enumerate(edges):
        expr = expr.when(value <= F.lit(edge), F.lit(f"b{i}"))
    return expr.otherwise(F.lit(f"b{len(edges)}"))


def bucket_counts(df: DataFrame, columns: list[str], edges: dict[str, list[float]]) -> pd.DataFrame:
    """(feature, bucket, rows) for every column of ``df``: one pass, one shuffle of tiny rows."""
    pairs = F.array(*[F.struct(F.lit(c).alias("feature"), _bucket_expr(c, edges.get(c)).alias("bucket"))
                      for c in columns])
    return df.select(F.explode(pairs).alias("p")).groupBy("p.feature", "p.bucket").count() \
        .withColumnRenamed("count", "rows").toPandas()


def psi_table(reference: DataFrame, current: DataFrame, columns: list[str], bins: int = 10,
              rel_error: float = 0.001) -> pd.DataFrame:
    """PSI of every column of ``current`` against ``reference``: (feature, psi, band), worst first."""
    edges = spark_edges(reference, columns, bins, rel_error)
    ref, cur = bucket_counts(reference, columns, edges), bucket_counts(current, columns, edges)
    rows = []
    for c in columns:
        e = dict(zip(ref.loc[ref["feature"] == c, "bucket"], ref.loc[ref["feature"] == c, "rows"]))
        a = dict(zip(cur.loc[cur["feature"] == c, "bucket"], cur.loc[cur["feature"] == c, "rows"]))
        value = psi_from_counts(e, a)
        rows.append({"feature": c, "psi": value, "band": psi_band(value)})
    return pd.DataFrame(rows).sort_values("psi", ascending=False, kind="stable").reset_index(drop=True)
