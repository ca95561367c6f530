"""The sub-root of one backtest month T: copies of the main root's tables restricted in time.

* ``features``: the training months (t + 3 ≤ T) and T — nothing later, so no stage can see it;
* ``owners``: as they are (static attributes);
* ``purchases``: months ≤ T (the lead list's recent-purchase filter reads them);
* ``oracle``: the same months as ``features``, where the main root has it (fusion's ceiling row; never
  a feature).

A sub-root that exists from an earlier run keeps its tables; month-partitioned copies first drop the
months this copy does not hold (a Delta delete), then replace the others, so the result is the
same as a fresh copy. The copy is a run of its own (job ``backtest-copy``, its parent the backtest
run) whose manifest records the versions written; the main root's versions read are in the
backtest run's manifest.
"""
from __future__ import annotations

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..io.store import RunManifest, TableStore
from .plan import BacktestMonth


def replace_months(store: TableStore, df: DataFrame, table: str, months: list[str]) -> int:
    """Make the month-partitioned ``table`` hold exactly ``df`` (whose rows lie in ``months``): months
    outside ``months`` are deleted, the others replaced. Returns the new Delta version."""
    if store.exists(table):
        stale = ~F.col("month").isin(months)
        target = DeltaTable.forPath(store.spark, store.path(table))
        if target.toDF().filter(stale).limit(1).count():
            target.delete(stale)
    return store.write_months(df, table, months)


def copy_tables(spark: SparkSession, main: TableStore, chain_cfg: Config, month: BacktestMonth,
                parent: str = "") -> dict[str, int]:
    """Write the sub-root of ``month`` (at ``chain_cfg.tables.root``) from ``main``; returns the rows
    copied per table."""
    sub = TableStore(spark, chain_cfg.tables.root, RunManifest("backtest-copy", chain_cfg.to_dict(), parent=parent))
    months = month.chain_months
    features = main.read("features", months=months)
    purchases = main.read("purchases").filter(F.col("month") <= F.lit(month.month))
    bought = sorted(r[0] for r in purchases.select("month").distinct().collect())
    replace_months(sub, features, "features", months)
    sub.write_table(main.read("owners"), "owners")
    replace_months(sub, purchases, "purchases", bought)
    copied = {"features": features.count(), "purchases": purchases.count()}
    oracle = main.read("oracle", months=months) if main.exists("oracle") else None
    present = sorted(r[0] for r in oracle.select("month").distinct().collect()) if oracle is not None else []
    if present:
        replace_months(sub, oracle, "oracle", present)
        copied["oracle"] = oracle.count()
    elif sub.exists("oracle"):  # left from an earlier run whose main root had one: empty it
        DeltaTable.forPath(spark, sub.path("oracle")).delete()
    sub.save_manifest()
    return copied
