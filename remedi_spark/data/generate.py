"""Synthetic data job: owners, monthly activity, purchases and the oracle as Delta tables.

Users are simulated in chunks of ``synthetic.chunk_users``, one chunk per Spark task
(``mapInPandas``), so memory per task is bounded by the chunk size and the job scales with the
cluster; no frame of all users ever exists. Chunk ``c`` always holds the same user ids and
draws from its own random stream seeded by ``(seed, c)``, so the output is identical for a
given seed whatever the parallelism.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, SyntheticSettings
from ..io.schemas import load_schema
from ..io.store import TableStore
from ..months import format_month, month_range, parse_month
from .behaviour import AMOUNT_CHANNELS, BRANDS, COUNT_CHANNELS, WorldParams, chunk_rng, draw_owners, simulate_chunk

_SIM_EXTRA = "purchased boolean, new_brand string, p_h1 double, p_h2 double, p_h3 double"


def world_params(s: SyntheticSettings) -> WorldParams:
    """The simulation parameters named in the ``synthetic`` config section."""
    return WorldParams(
        seed=s.seed, hazard_scale=s.hazard_scale, missing_rate=s.missing_rate, burn_in_months=s.burn_in_months,
        drift_month_index=parse_month(s.drift_month) if s.drift_month else None, drift_strength=s.drift_strength,
    )


def chunk_user_ids(s: SyntheticSettings, chunk: int) -> np.ndarray:
    """User ids of chunk ``chunk`` (1-based ids, contiguous per chunk)."""
    first = chunk * s.chunk_users
    return np.arange(first + 1, min(first + s.chunk_users, s.n_users) + 1, dtype=np.int64)


def n_chunks(s: SyntheticSettings) -> int:
    return -(-s.n_users // s.chunk_users)


def _owners_frame(owners: dict[str, np.ndarray]) -> pd.DataFrame:
    cols = load_schema("owners").names
    frame = pd.DataFrame({k: v for k, v in owners.items() if k in cols})
    frame["vehicle_start_month"] = [format_month(int(i)) for i in owners["vehicle_start_index"]]
    return frame[cols]


def _month_frame(frame: pd.DataFrame, owners: dict[str, np.ndarray], rng: np.random.Generator) -> pd.DataFrame:
    out = frame.copy()
    out["month"] = format_month(int(frame["month_index"].iloc[0]))
    for c in COUNT_CHANNELS:
        out[c] = out[c].astype("Int32")  # nullable integers: NaN becomes null
    bought = out["purchased"].to_numpy()
    keep_brand = rng.random(len(out)) < 0.55
    other = rng.choice(BRANDS, len(out))
    out["new_brand"] = np.where(bought, np.where(keep_brand, owners["brand"], other), None)
    return out


def _simulate_partition(s: SyntheticSettings) -> Any:
    params = world_params(s)
    start, end = parse_month(s.start_month), parse_month(s.end_month)
    columns = ["user_id", "month", *COUNT_CHANNELS, *AMOUNT_CHANNELS, "purchased", "new_brand", "p_h1", "p_h2", "p_h3"]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for chunk in batch["id"].tolist():
                owners, frames = simulate_chunk(params, chunk, chunk_user_ids(s, chunk), start, end)
                brand_rng = np.random.default_rng(np.random.SeedSequence([s.seed, chunk, 1]))
                for frame in frames:
                    yield _month_frame(frame, owners, brand_rng)[columns]

    return run


def _owners_partition(s: SyntheticSettings) -> Any:
    start = parse_month(s.start_month)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for chunk in batch["id"].tolist():
                # the owners are the first draws of the chunk's stream, so this matches simulate_chunk
                yield _owners_frame(draw_owners(chunk_rng(s.seed, chunk), chunk_user_ids(s, chunk), start))

    return run


def _chunks(spark: SparkSession, s: SyntheticSettings) -> DataFrame:
    k = n_chunks(s)
    return spark.range(0, k, numPartitions=k)


def simulate(spark: SparkSession, s: SyntheticSettings) -> tuple[DataFrame, DataFrame]:
    """Lazy DataFrames (owners, per-user-month simulation) for the ``synthetic`` settings."""
    month_range(s.start_month, s.end_month)  # fails early on a bad range
    if s.n_users <= 0 or s.chunk_users <= 0:
        raise ValueError("synthetic.n_users and synthetic.chunk_users must be positive")
    owners_ddl = load_schema("owners").struct()
    activity = load_schema("monthly_activity").struct()
    sim_ddl = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in activity.fields) + ", " + _SIM_EXTRA
    owners = _chunks(spark, s).mapInPandas(_owners_partition(s), owners_ddl)
    sim = _chunks(spark, s).mapInPandas(_simulate_partition(s), sim_ddl)
    return owners, sim


def generate_synthetic(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Write ``owners``, ``monthly_activity``, ``purchases`` and ``oracle`` for the configured months.

    Re-running replaces exactly the configured months (and the owners table). Returns a summary.
    """
    s = cfg.synthetic
    months = month_range(s.start_month, s.end_month)
    owners, sim = simulate(spark, s)
    sim = sim.persist(StorageLevel.MEMORY_AND_DISK)  # simulated once, split into three tables
    try:
        store.write_table(owners, "owners")
        activity_cols = load_schema("monthly_activity").names
        store.write_months(sim.select(*activity_cols), "monthly_activity", months)
        purchases = sim.filter("purchased").select(
            "user_id", "month",
            F.make_date(F.substring("month", 1, 4).cast("int"), F.substring("month", 6, 2).cast("int"),
                        (1 + F.pmod(F.xxhash64("user_id", "month", F.lit(s.seed)), F.lit(28))).cast("int"))
            .alias("purchase_date"),
            "new_brand",
        )
        owners_brand = owners.select("user_id", F.col("brand").alias("_old_brand"))
        purchases = purchases.join(owners_brand, "user_id", "left") \
            .withColumn("same_brand", F.col("new_brand") == F.col("_old_brand")).drop("_old_brand")
        store.write_months(purchases, "purchases", months)
        oracle = sim.select("user_id", "month", "p_h1", "p_h2", "p_h3",
                            (F.col("p_h1") + F.col("p_h2") + F.col("p_h3")).alias("p_3m"))
        store.write_months(oracle, "oracle", months)
        counts = {r["month"]: (r["rows"], r["buyers"]) for r in
                  sim.groupBy("month").agg(F.count(F.lit(1)).alias("rows"),
                                           F.sum(F.col("purchased").cast("int")).alias("buyers")).collect()}
    finally:
        sim.unpersist()
    return {"months": months, "users": s.n_users,
            "rows_per_month": {m: counts[m][0] for m in months}, "buyers_per_month": {m: counts[m][1] for m in months}}
