"""Negative sampling benchmark (issue 22 item 3): ``training.negative_rate`` 1.0 against smaller rates on OOF rows.

A demo-like world (the demo profile at ``--users`` owners, 20k by default; built first under ``--root`` when its
folds table is missing). One LightGBM base model (default ``lgbm_logloss``, SynapseML) is trained out-of-fold on
the training rows (``training_frame`` split = train: training owners outside the evaluation month; held-out
owners and the evaluation month are never read) exactly as the OOF job's ``_fit`` does, once per rate: every
fold k fitted on the other folds (their early-stopping share sampled the same way), predictions for fold k
corrected by log(rate). Every rate scores the same rows: AUC, P@K, Business Recall@K, lift and log loss with a
paired owner bootstrap (``metrics.bootstrap``), differences ``rate - 1.0`` with their intervals
(``metrics.difference_verdict``), mean prediction against the base rate, positives and fit rows per fold, and
the seconds of the fits.

    .venv/bin/python bench/negative_sampling.py            # writes bench/results/negative_sampling.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import TEST_SETTINGS, interval_fields, write_result  # noqa: E402

from remedi_spark.config import load_config, replace  # noqa: E402
from remedi_spark.folds.assign import evaluation_month  # noqa: E402
from remedi_spark.io.store import TableStore  # noqa: E402
from remedi_spark.metrics import BOOTSTRAP_METRICS, bootstrap, difference_verdict  # noqa: E402
from remedi_spark.models.base import FeatureSpec  # noqa: E402
from remedi_spark.pipeline import run_foundation  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402
from remedi_spark.training.oof import ES, _fit, fold_fit_rows, negative_sample, training_frame  # noqa: E402

REFERENCE = "1.0"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    parser.add_argument("--users", type=int, default=20_000, help="owners of the synthetic world")
    parser.add_argument("--root", default=str(REPO / "data" / "bench_negative_sampling"), help="its table root")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--rates", default="1.0,0.25,0.1", help="negative rates; 1.0 (the reference) is required")
    parser.add_argument("--model", default="lgbm_logloss", help="a LightGBM base model of base_models.models")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "negative_sampling.json"))
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    rates = [r.strip() for r in args.rates.split(",")]
    if REFERENCE not in rates:
        raise SystemExit(f"--rates must include the reference {REFERENCE}")
    cfg = load_config(args.conf, [*TEST_SETTINGS, f"tables.root={args.root}", f"synthetic.n_users={args.users}",
                                  f"synthetic.chunk_users={min(args.users, 12_500)}", *args.set])
    spec = next(s for s in cfg.base_models.models if s.name == args.model)
    if spec.family != "lgbm":
        raise SystemExit(f"--model {args.model}: a LightGBM model is expected, got family {spec.family}")
    spark = get_spark(cfg.spark, app_name="remedi-bench-negative-sampling")
    store = TableStore(spark, cfg.tables.root)
    if not store.exists("folds"):
        start = time.perf_counter()
        run_foundation(spark, cfg)
        print(f"foundation of {args.users} owners: {time.perf_counter() - start:.0f}s", flush=True)
    eval_month = evaluation_month(store.read("folds"))
    # training owners outside the evaluation month only: nothing else is read from here on
    train = training_frame(store, cfg).filter(F.col("split") == "train")
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = FeatureSpec.from_frame(train.drop("fold", "split", ES), members)
    encoded = features.encode(train, extra=("y", "fold", "split", ES)).persist(StorageLevel.MEMORY_AND_DISK)
    labels = encoded.select("user_id", "month", "fold", "y").toPandas().sort_values(["user_id", "month"],
                                                                                    ignore_index=True)
    months = sorted(labels["month"].unique().tolist())
    print(f"{spec.name}: {len(labels)} OOF rows, {int(labels['y'].sum())} positives, months {months}; evaluation "
          f"month {eval_month} left out", flush=True)
    scores, fits = {}, {}
    for rate in rates:
        settings = replace(cfg, training={"negative_rate": float(rate)})
        parts, folds, seconds = [], [], 0.0
        for k in range(cfg.folds.n_folds):
            rows = fold_fit_rows(encoded, k)
            sampled = negative_sample(rows, float(rate), cfg.folds.seed)
            count = sampled.agg(F.count(F.lit(1)).alias("n"), F.sum("y").alias("pos"),
                                F.sum(F.col(ES).cast("int")).alias("es")).first()
            start = time.perf_counter()
            model = _fit(spec, settings, features, rows)
            seconds += time.perf_counter() - start
            parts.append(model.predict(encoded.filter(F.col("fold") == k)).toPandas())
            folds.append({"fold": k, "fit_rows": int(count["n"]) - int(count["es"]),
                          "fit_positives": int(model.info["train_positives"]),
                          "early_stopping_rows": int(count["es"]), "sampled_rows": int(count["n"]),
                          "sampled_positives": int(count["pos"]),
                          "best_iteration": int(model.info["best_iteration"])})
            print(f"rate {rate} fold {k}: {folds[-1]}, {time.perf_counter() - start:.1f}s", flush=True)
        pred = labels.merge(pd.concat(parts), on=["user_id", "month"], how="left",
                            validate="one_to_one")
        if pred["p"].isna().any():
            raise RuntimeError(f"rate {rate}: {int(pred['p'].isna().sum())} OOF rows without a prediction")
        scores[rate] = pred["p"].to_numpy()
        fits[rate] = {"train_seconds": round(seconds, 1), "folds": folds,
                      "fit_rows": sum(f["fit_rows"] for f in folds),
                      "fit_positives": sum(f["fit_positives"] for f in folds),
                      "mean_prediction": float(pred["p"].mean())}
        print(f"rate {rate}: {seconds:.1f}s of fits, mean p {pred['p'].mean():.5f}", flush=True)
    encoded.unpersist()
    y, owners = labels["y"].to_numpy(), labels["user_id"].to_numpy()
    b = {"replicates": cfg.evaluation.bootstrap.replicates, "seed": cfg.evaluation.bootstrap.seed,
         "level": cfg.evaluation.bootstrap.level}
    pairs = [(r, REFERENCE) for r in rates if r != REFERENCE]
    boot = bootstrap(y, scores, owners, cfg.base_models.metric_k_fraction, pairs=pairs, **b)
    per_rate = {r: {**fits[r], "metrics": {m: interval_fields(boot["intervals"][r][m]) for m in BOOTSTRAP_METRICS}}
                for r in rates}
    differences = {}
    for a, ref in pairs:
        d = boot["differences"][(a, ref)]
        differences[f"{a} - {ref}"] = {
            **{m: {**interval_fields(d[m]), "verdict": difference_verdict(d[m], m == "logloss")} for m in BOOTSTRAP_METRICS},
            "train_seconds_ratio": round(fits[a]["train_seconds"] / fits[ref]["train_seconds"], 2)}
    out = {
        "benchmark": "negative_sampling", "issue": "22 item 3",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/negative_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cores": spark.sparkContext.defaultParallelism, "spark_master": cfg.spark.master,
        "owners": args.users, "model": spec.name, "backend": spec.backend,
        "protocol": (f"training owners only (training_frame split == 'train': held-out owners and the evaluation "
                     f"month {eval_month} excluded); {cfg.folds.n_folds} folds, each fitted on the others as "
                     "oof._fit does (fit and early-stopping rows keep every positive and the rate's hashed share "
                     "of the negatives), predictions corrected by log(rate); every rate scores every OOF row; "
                     "paired owner bootstrap, differences rate - 1.0"),
        "months": months, "evaluation_month_excluded": eval_month,
        "rows": int(len(y)), "positives": int(y.sum()), "base_rate": float(y.mean()),
        "owners_scored": int(len(np.unique(owners))), "k_fraction": cfg.base_models.metric_k_fraction,
        "bootstrap": b, "reference": REFERENCE, "rates": per_rate, "differences": differences,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    for name, d in differences.items():
        print(name, {m: (round(d[m]["estimate"], 4), round(d[m]["ci_low"], 4), round(d[m]["ci_high"], 4), d[m]["verdict"])
                     for m in ("auc", "precision_at_k", "logloss")}, "time ratio", d["train_seconds_ratio"])
    write_result(out, args.out)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
