"""Neural benchmark: training through TorchDistributor + Petastorm on local Spark versus the same epoch
loop in one plain torch process over the same rows (target: distributed epoch <= 1.5x), rows/s, and
whether both learn the same: validation AUC after the configured epochs.

Uses the full demo profile's features (conf/demo_full.yaml: it has the MLP and DeepFM) (built first if missing; another profile with --conf). Both sides run
the same model, parameters and loop (remedi_spark.models.neural.loop.fit_epochs) for the model's
configured epochs (early stopping and the lr schedule included). Reported per model: the in-loop
seconds of the first epoch and their mean (rank 0 / the single process), the wall time of the whole
fit (distributed: feature map, Petastorm conversion, process launch, epochs, validation; single
process: collecting the rows to pandas, encoding them, epochs, validation), each side's validation
curve and the AUC of its kept (best) epoch on the validation rows, and the paired owner bootstrap of
distributed − single-process AUC on those rows (remedi_spark.metrics.bootstrap). The validation rows
serve early stopping on both sides, as in training; no held-out owners or evaluation month are read.
Writes bench/results/neural.json.
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

from common import labelled_features, write_result  # noqa: E402

from remedi_spark.config import load_config  # noqa: E402
from remedi_spark.metrics import bootstrap  # noqa: E402
from remedi_spark.models.base import FeatureSpec  # noqa: E402
from remedi_spark.models.neural.feature_map import FeatureMap  # noqa: E402
from remedi_spark.models.neural.loop import make_module, predict_logits, train_in_process  # noqa: E402
from remedi_spark.models.neural import model as neural_model  # noqa: E402
from remedi_spark.models.registry import build_model  # noqa: E402


KEYS = ["user_id", "month"]
BOOT = {"replicates": 1000, "seed": 7, "level": 0.9}


def single_process(train, valid, features: FeatureSpec, family: str, params) -> dict:
    """Collect, encode and train for the configured epochs in this process with torch's default threads;
    the kept epoch's validation predictions keyed by owner and month."""
    start = time.perf_counter()
    fmap = FeatureMap.fit(train, features.columns, vocab=features.categorical,
                          numeric_encoding=params.numeric_encoding, n_buckets=params.n_buckets)
    arrays, frames = [], []
    for df in (train, valid):
        pdf = df.select(*KEYS, *fmap.columns, "y").toPandas()
        dense, ids = fmap.transform(pdf)
        arrays.append((dense, ids, pdf["y"].to_numpy(dtype=np.float32)))
        frames.append(pdf[KEYS])
    prepare = time.perf_counter() - start
    model = make_module(family, params.model, fmap.vocab_sizes, len(fmap.numeric), seed=params.seed)
    result = train_in_process(model, arrays[0], params.loop_params(), arrays[1])
    wall = time.perf_counter() - start
    model.load_state_dict(result["state"])
    logit = predict_logits(model, arrays[1][0], arrays[1][1]).astype(np.float64)
    scored = frames[1].assign(p_single=1.0 / (1.0 + np.exp(-logit)))
    return {**result, "wall_seconds": wall, "prepare_seconds": prepare, "scored": scored}


def _curve(curve: list[dict]) -> list[dict]:
    return [{"epoch": c["epoch"], "lr": c["lr"], "train_loss": round(c["train_loss"], 5),
             "valid_logloss": round(c["valid_logloss"], 5), "valid_auc": round(c["valid_auc"], 4)} for c in curve]


def paired_auc_difference(valid_keys, distributed, single) -> dict:
    """Distributed − single-process AUC on the validation rows both scored, a paired owner bootstrap."""
    rows = valid_keys.merge(distributed, on=KEYS).merge(single, on=KEYS)
    if len(rows) != len(valid_keys):
        raise RuntimeError(f"{len(valid_keys)} validation rows, but only {len(rows)} scored by both sides")
    scores = {"distributed": rows["p"].to_numpy(), "single_process": rows["p_single"].to_numpy()}
    boot = bootstrap(rows["y"].to_numpy(), scores, rows["user_id"].to_numpy(), 0.1, **BOOT,
                     pairs=[("distributed", "single_process")])
    iv = boot["differences"][("distributed", "single_process")]["auc"]
    aucs = {name: boot["intervals"][name]["auc"] for name in scores}
    return {"rows": len(rows), "positives": int(rows["y"].sum()), "owners": int(rows["user_id"].nunique()),
            "replicates": BOOT["replicates"], "level": BOOT["level"],
            "auc": {name: {"estimate": round(a.estimate, 4), "low": round(a.low, 4), "high": round(a.high, 4)}
                    for name, a in aucs.items()},
            "difference": {"estimate": round(iv.estimate, 4), "low": round(iv.low, 4), "high": round(iv.high, 4),
                           "contains_zero": not iv.excludes_zero()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo_full.yaml"))
    parser.add_argument("--rows", type=int, default=200_000, help="training rows")
    parser.add_argument("--models", default="mlp,deepfm", help="configured neural base models to time")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "neural.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    spark, labelled, features = labelled_features(cfg, "remedi-bench-neural")
    # whole owners on either side: an owner's later months reveal an earlier month's purchase (months since
    # the last purchase, vehicle age), so a split by row would score validation rows the model has seen
    encoded = (features.encode(labelled, extra=("y",)).withColumn("_h", F.xxhash64("user_id"))
               .orderBy("_h", "month").limit(args.rows + 20_000).cache())
    encoded.count()  # materialise the cache before timing
    cut = encoded.select("_h").orderBy("_h").limit(20_000).agg(F.max("_h")).first()[0]
    valid = encoded.filter(F.col("_h") <= cut).drop("_h").cache()
    train = encoded.filter(F.col("_h") > cut).drop("_h").repartition(cfg.base_models.num_workers).cache()
    rows = train.count()
    valid.count()
    specs = {s.name: s for s in cfg.base_models.models}
    valid_keys = valid.select(*KEYS, "y").toPandas()
    results = []
    for name in args.models.split(","):
        spec = specs[name]
        model = build_model(spec, cfg.base_models, features)
        params = model.train_params
        start = time.perf_counter()
        # the distributed trainer's own result (curve, best epoch), as NeuralModel.fit computes it
        captured, original = {}, neural_model.train_distributed_call

        def capture(*a, **k):
            captured.update(original(*a, **k))
            return captured

        neural_model.train_distributed_call = capture
        try:
            model.fit(train, valid)
        finally:
            neural_model.train_distributed_call = original
        dist_wall = time.perf_counter() - start
        distributed = model.predict(valid).toPandas()
        single = single_process(train, valid, features, spec.family, params)
        dist_epochs, single_epochs = captured["epoch_seconds"], single["epoch_seconds"]
        row = {"model": name, "train_rows": rows, "valid_rows": len(valid_keys), "epochs_configured": params.epochs,
               "batch_size_configured": params.batch_size, "min_steps_per_epoch": params.min_steps_per_epoch,
               "num_processes": params.num_processes, "model_config": params.model,
               "distributed": {"epochs_run": captured["epochs"], "best_epoch": captured["best_epoch"],
                               "batch_size": captured["batch_size"], "steps_per_rank": captured["steps_per_epoch"],
                               "first_epoch_seconds": round(dist_epochs[0], 2),
                               "mean_epoch_seconds": round(float(np.mean(dist_epochs)), 2),
                               "wall_seconds": round(dist_wall, 2),
                               "rows_per_second_epoch": round(rows / float(np.mean(dist_epochs))),
                               "rows_per_second_wall": round(rows * captured["epochs"] / dist_wall),
                               "valid_auc": round(captured["valid_auc"], 4),
                               "valid_logloss": round(captured["valid_logloss"], 5),
                               "curve": _curve(captured["curve"])},
               "single_process": {"epochs_run": single["epochs"], "best_epoch": single["best_epoch"],
                                  "batch_size": single["batch_size"], "steps": single["steps_per_epoch"],
                                  "first_epoch_seconds": round(single_epochs[0], 2),
                                  "mean_epoch_seconds": round(float(np.mean(single_epochs)), 2),
                                  "wall_seconds": round(single["wall_seconds"], 2),
                                  "prepare_seconds": round(single["prepare_seconds"], 2),
                                  "rows_per_second_epoch": round(rows / float(np.mean(single_epochs))),
                                  "rows_per_second_wall": round(rows * single["epochs"] / single["wall_seconds"]),
                                  "valid_auc": round(single["valid_auc"], 4),
                                  "valid_logloss": round(single["valid_logloss"], 5),
                                  "curve": _curve(single["curve"])}}
        row["epoch_ratio"] = round(float(np.mean(dist_epochs)) / float(np.mean(single_epochs)), 2)
        row["wall_ratio"] = round(dist_wall / single["wall_seconds"], 2)
        row["valid_auc_distributed_minus_single"] = paired_auc_difference(valid_keys, distributed, single["scored"])
        results.append(row)
        print(json.dumps(row), flush=True)
    out = {"benchmark": "neural", "target_ratio": 1.5, "target_valid_auc": 0.7, "spark_master": cfg.spark.master,
           "results": results}
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
