"""Neural benchmark: one training epoch through TorchDistributor + Petastorm on local Spark versus the
same epoch loop in one plain torch process over the same rows (target: distributed <= 1.5x), and rows/s.

Uses the demo profile's features (built first if missing; another profile with --conf). Both sides run
the same model, batch size and loop (remedi_spark.models.neural.loop.fit_epochs) for exactly one epoch.
Reported per model: the in-loop epoch seconds (rank 0 / the single process) and the wall time of the whole
fit (distributed: feature map, Petastorm conversion, process launch, epoch, validation; single process:
collecting the rows to pandas, encoding them, epoch, validation). Writes bench/results/neural.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import labelled_features, write_result  # noqa: E402

from remedi_spark.config import ModelSpec, load_config  # noqa: E402
from remedi_spark.models.base import FeatureSpec  # noqa: E402
from remedi_spark.models.neural.feature_map import FeatureMap  # noqa: E402
from remedi_spark.models.neural.loop import make_module, train_in_process  # noqa: E402
from remedi_spark.models.registry import build_model  # noqa: E402


def single_process(train, valid, features: FeatureSpec, spec: ModelSpec, params) -> dict:
    """Collect, encode and train one epoch in this process with torch's default threads."""
    start = time.perf_counter()
    fmap = FeatureMap.fit(train, features.columns, vocab=features.categorical)
    arrays = []
    for df in (train, valid):
        pdf = df.select(*fmap.columns, "y").toPandas()
        dense, ids = fmap.transform(pdf)
        arrays.append((dense, ids, pdf["y"].to_numpy(dtype=np.float32)))
    prepare = time.perf_counter() - start
    run = params.loop_params()
    model = make_module(spec.family, params.model, fmap.vocab_sizes, len(fmap.numeric), seed=params.seed)
    result = train_in_process(model, arrays[0], {**run, "epochs": 1}, arrays[1])
    return {"epoch_seconds": result["epoch_seconds"][0], "wall_seconds": time.perf_counter() - start,
            "prepare_seconds": prepare, "steps": result["steps_per_epoch"], "valid_auc": result["valid_auc"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    parser.add_argument("--rows", type=int, default=200_000, help="training rows")
    parser.add_argument("--models", default="mlp,deepfm", help="configured neural base models to time")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "neural.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    spark, labelled, features = labelled_features(cfg, "remedi-bench-neural")
    encoded = features.encode(labelled, extra=("y",)).orderBy(F.xxhash64("user_id", "month")).limit(args.rows + 20_000)
    encoded = encoded.withColumn("_r", F.monotonically_increasing_id()).cache()
    encoded.count()  # materialise the cache before timing
    valid = encoded.filter(F.col("_r") < 20_000).drop("_r").cache()
    train = encoded.filter(F.col("_r") >= 20_000).drop("_r").repartition(cfg.base_models.num_workers).cache()
    rows = train.count()
    valid.count()
    specs = {s.name: s for s in cfg.base_models.models}
    results = []
    for name in args.models.split(","):
        spec = specs[name]
        spec = ModelSpec(**{**asdict(spec), "params": {**spec.params, "epochs": 1}})
        model = build_model(spec, cfg.base_models, features)
        params = model.train_params
        start = time.perf_counter()
        model.fit(train, valid)
        dist_wall = time.perf_counter() - start
        dist_epoch = model.info["epoch_seconds"][0]
        single = single_process(train, valid, features, spec, params)
        row = {"model": name, "train_rows": rows, "batch_size": params.batch_size,
               "num_processes": params.num_processes, "model_config": params.model,
               "distributed": {"epoch_seconds": round(dist_epoch, 2), "wall_seconds": round(dist_wall, 2),
                               "steps_per_rank": model.info["steps_per_epoch"],
                               "rows_per_second_epoch": round(rows / dist_epoch),
                               "rows_per_second_wall": round(rows / dist_wall),
                               "valid_auc": round(model.info["valid_auc"], 4)},
               "single_process": {"epoch_seconds": round(single["epoch_seconds"], 2),
                                  "wall_seconds": round(single["wall_seconds"], 2),
                                  "prepare_seconds": round(single["prepare_seconds"], 2),
                                  "steps": single["steps"],
                                  "rows_per_second_epoch": round(rows / single["epoch_seconds"]),
                                  "rows_per_second_wall": round(rows / single["wall_seconds"]),
                                  "valid_auc": round(single["valid_auc"], 4)}}
        row["epoch_ratio"] = round(dist_epoch / single["epoch_seconds"], 2)
        row["wall_ratio"] = round(dist_wall / single["wall_seconds"], 2)
        results.append(row)
        print(json.dumps(row), flush=True)
    out = {"benchmark": "neural", "target_ratio": 1.5, "spark_master": cfg.spark.master, "results": results}
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
