"""GBDT benchmark: training time of SynapseML and of the barrier backend on local Spark versus a
single-process ``lightgbm.train`` on the same rows (target: Spark backends <= 1.3x), at two sizes.

Uses the demo profile's features (built first if missing; another profile with --conf). A fixed number of
rounds (no early stopping) keeps the work equal across backends. Writes bench/results/gbdt.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import labelled_features, write_result  # noqa: E402

from remedi_spark.config import ModelSpec, load_config, replace  # noqa: E402
from remedi_spark.models.registry import build_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    parser.add_argument("--sizes", default="100000,240000", help="training rows")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "gbdt.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    cfg = replace(cfg, base_models={"early_stopping_rounds": args.rounds + 1})
    spark, labelled, features = labelled_features(cfg, "remedi-bench-gbdt")
    params = {**cfg.base_models.lightgbm, "num_iterations": args.rounds}
    results = []
    for size in [int(s) for s in args.sizes.split(",")]:
        encoded = features.encode(labelled, extra=("y",)).orderBy(F.xxhash64("user_id", "month")).limit(size + 20_000)
        encoded = encoded.withColumn("_r", F.monotonically_increasing_id()).cache()
        encoded.count()  # materialise the cache before timing
        valid = encoded.orderBy("_r").limit(20_000)
        train = encoded.join(valid.select("_r"), "_r", "left_anti").drop("_r")
        valid = valid.drop("_r")
        train = train.cache()
        rows = train.count()
        row = {"train_rows": rows, "features": len(features.columns), "rounds": args.rounds}
        for backend in ("synapseml", "native"):
            spec = ModelSpec(name=backend, family="lgbm", backend=backend, objective="logloss", feature_group=None,
                             params={"num_iterations": args.rounds})
            model = build_model(spec, cfg.base_models, features)
            start = time.perf_counter()
            model.fit(train, valid)
            row[f"{backend}_seconds"] = round(time.perf_counter() - start, 2)
            if "timings" in model.info:
                row[f"{backend}_rank0_timings"] = model.info["timings"]
        start = time.perf_counter()
        pdf = train.select(*features.columns, "y").toPandas()
        collect_seconds = time.perf_counter() - start
        single = {k: v for k, v in params.items() if k != "num_iterations"}
        single.update(objective="binary", num_threads=2)
        start = time.perf_counter()
        ds = lgb.Dataset(pdf[features.columns].to_numpy(np.float64), label=pdf["y"].to_numpy(np.float64),
                         categorical_feature=features.categorical_indexes)
        lgb.train(single, ds, num_boost_round=args.rounds)
        row["single_process_seconds"] = round(time.perf_counter() - start, 2)
        # what a Spark user pays to train on one machine instead: collect the rows first
        row["single_process_with_collect_seconds"] = round(row["single_process_seconds"] + collect_seconds, 2)
        for backend in ("synapseml", "native"):
            row[f"{backend}_vs_single"] = round(row[f"{backend}_seconds"] / row["single_process_seconds"], 2)
            row[f"{backend}_vs_single_with_collect"] = round(
                row[f"{backend}_seconds"] / row["single_process_with_collect_seconds"], 2)
        results.append(row)
        print(json.dumps(row), flush=True)
        encoded.unpersist()
        train.unpersist()
    out = {"benchmark": "gbdt", "target_ratio": 1.3, "spark_master": cfg.spark.master, "results": results}
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
