"""Fusion benchmark: Algorithm 1 meta-features through the Spark pandas UDF over 800k rows x M models
versus the numpy reference on the same array in one process (target: UDF <= 1.5x).

The predictions are random (their values do not change the work), built inside Spark and cached
before timing. The Spark side is timed to a `noop` write, so every column of every row is computed
and nothing is written. The numpy side is timed on the collected array (collect time reported apart).
Writes bench/results/fusion.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from remedi_spark.config import load_config  # noqa: E402
from remedi_spark.fusion.meta_features import add_meta_features, relative_meta_features  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "local.yaml"))
    parser.add_argument("--rows", type=int, default=800_000)
    parser.add_argument("--models", default="5,9", help="values of M to time")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "fusion.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    spark = get_spark(cfg.spark, app_name="remedi-bench-fusion")
    results = []
    for m in [int(v) for v in args.models.split(",")]:
        names = [f"model{j}" for j in range(m)]
        df = spark.range(args.rows).select(F.col("id").alias("user_id"), F.lit("2025-01").alias("month"),
                                           *[(F.rand(seed=j) * 0.05).alias(f"p_{n}") for j, n in enumerate(names)])
        df = df.repartition(cfg.spark.shuffle_partitions).cache()
        df.count()
        meta = add_meta_features(df, names)
        udf_seconds = best_of(args.repeats, lambda: meta.write.format("noop").mode("overwrite").save())
        start = time.perf_counter()
        p = np.asarray(df.select(*[f"p_{n}" for n in names]).toPandas().to_numpy(np.float64))
        collect_seconds = time.perf_counter() - start
        numpy_seconds = best_of(args.repeats, lambda: relative_meta_features(p))
        row = {"rows": args.rows, "models": m, "meta_features": 4 * m + 6, "partitions": df.rdd.getNumPartitions(),
               "udf_seconds": round(udf_seconds, 3), "numpy_seconds": round(numpy_seconds, 3),
               "collect_seconds": round(collect_seconds, 3),
               "udf_vs_numpy": round(udf_seconds / numpy_seconds, 2),
               "udf_vs_numpy_with_collect": round(udf_seconds / (numpy_seconds + collect_seconds), 2),
               "udf_rows_per_second": round(args.rows / udf_seconds)}
        results.append(row)
        print(json.dumps(row), flush=True)
        df.unpersist()
    out = {"benchmark": "fusion", "target_ratio": 1.5, "spark_master": cfg.spark.master, "results": results}
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
