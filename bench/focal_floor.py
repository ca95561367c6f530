"""Focal hessian floor re-check (issue 21 item 4): ``base_models.focal.min_hessian`` on training owners only.

The focal-loss LightGBM (the ``objective: focal`` entry of ``base_models.models``) is fitted once per
floor on the same rows with the same seed: the training rows (``split = train`` of
``training_frame``: training owners outside the evaluation month; held-out owners and the evaluation
month are never read) of folds != ``--fold``, early stopping on their seeded early-stopping share
exactly as the OOF job's ``_fit`` does, and scores fold ``--fold``'s training rows. Metrics with a
paired owner-level bootstrap (``metrics.bootstrap``), differences against the default 0.01; the
criterion is log loss (``metrics.difference_verdict``: an interval containing 0 is no difference).

Reads an existing table root (read-only; --set tables.root=...). Writes bench/results/focal_floor.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
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
from remedi_spark.spark import get_spark  # noqa: E402
from remedi_spark.training.oof import ES, _fit, fold_fit_rows, training_frame  # noqa: E402

DEFAULT = "0.01"
BASE_RATE = "base_rate"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--floors", default="0.001,0.003,0.01,0.03,0.1")
    parser.add_argument("--fold", type=int, default=0, help="training fold scored (the others are fitted on)")
    parser.add_argument("--model", default=None, help="focal model name (default: the first objective: focal)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "focal_floor.json"))
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    cfg = load_config(args.conf, [*TEST_SETTINGS, *args.set])
    spec = next(s for s in cfg.base_models.models
                if (s.name == args.model if args.model else s.objective == "focal"))
    floors = [f.strip() for f in args.floors.split(",")]
    if DEFAULT not in floors:
        raise SystemExit(f"--floors must include the default {DEFAULT}")
    spark = get_spark(cfg.spark, app_name="remedi-bench-focal-floor")
    store = TableStore(spark, cfg.tables.root)
    eval_month = evaluation_month(store.read("folds"))
    # training owners outside the evaluation month only: nothing else is read from here on
    train = training_frame(store, cfg).filter(F.col("split") == "train")
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = FeatureSpec.from_frame(train.drop("fold", "split", ES), members)
    encoded = features.encode(train, extra=("y", "fold", "split", ES)).persist(StorageLevel.MEMORY_AND_DISK)
    fit_rows = fold_fit_rows(encoded, args.fold)
    scored_rows = encoded.filter(F.col("fold") == args.fold)
    months = sorted(r[0] for r in encoded.select("month").distinct().collect())
    fit_stats = fit_rows.agg(F.count(F.lit(1)).alias("n"), F.sum("y").alias("pos"),
                             F.sum(F.col(ES).cast("int")).alias("es")).first()
    labels = scored_rows.select("user_id", "month", "y").toPandas().sort_values(["user_id", "month"],
                                                                                 ignore_index=True)
    print(f"{spec.name}: fit rows {fit_stats['n']} ({fit_stats['pos']} positives, {fit_stats['es']} early-stopping), "
          f"scored fold {args.fold}: {len(labels)} rows, {int(labels['y'].sum())} positives; months {months}; "
          f"evaluation month {eval_month} left out", flush=True)
    scores, fits = {}, {}
    for floor in floors:
        settings = replace(cfg, base_models={"focal": {"min_hessian": float(floor)}})
        start = time.perf_counter()
        model = _fit(spec, settings, features, fit_rows)
        seconds = time.perf_counter() - start
        pred = model.predict(scored_rows).toPandas()
        merged = labels.merge(pred, on=["user_id", "month"], how="left", validate="one_to_one")
        if merged["p"].isna().any():
            raise RuntimeError(f"min_hessian {floor}: {int(merged['p'].isna().sum())} rows without a prediction")
        scores[floor] = merged["p"].to_numpy()
        fits[floor] = {"best_iteration": int(model.info["best_iteration"]), "fit_seconds": round(seconds, 1),
                       "timings": model.info.get("timings")}
        print(f"min_hessian {floor}: best_iteration {fits[floor]['best_iteration']}, {seconds:.1f}s", flush=True)
    encoded.unpersist()
    y, owners = labels["y"].to_numpy(), labels["user_id"].to_numpy()
    b = {"replicates": 1000, "seed": 7, "level": 0.9}
    pairs = [(f, DEFAULT) for f in floors if f != DEFAULT]
    # reference: the fit rows' base rate for every row (what log loss a score with no ranking gets);
    # it takes no part in the verdict
    base_rate = fit_stats["pos"] / fit_stats["n"]
    boot = bootstrap(y, {**scores, BASE_RATE: np.full(len(y), base_rate)}, owners,
                     cfg.base_models.metric_k_fraction, pairs=[*pairs, (DEFAULT, BASE_RATE)], **b)
    reference = {"constant": base_rate, "logloss": interval_fields(boot["intervals"][BASE_RATE]["logloss"]),
                 f"{DEFAULT} - {BASE_RATE}": {"logloss": {
                     **interval_fields(boot["differences"][(DEFAULT, BASE_RATE)]["logloss"]),
                     "verdict": difference_verdict(boot["differences"][(DEFAULT, BASE_RATE)]["logloss"], True)}}}
    settings_out = {f: {**fits[f], "metrics": {m: interval_fields(boot["intervals"][f][m]) for m in BOOTSTRAP_METRICS}}
                    for f in floors}
    differences, verdicts = {}, {}
    for a, ref in pairs:
        d = boot["differences"][(a, ref)]
        differences[f"{a} - {ref}"] = {m: {**interval_fields(d[m]), "verdict": difference_verdict(d[m], m == "logloss")}
                                       for m in BOOTSTRAP_METRICS}
        verdicts[a] = differences[f"{a} - {ref}"]["logloss"]["verdict"]
    differing = {a: v for a, v in verdicts.items() if v != "no difference"}
    better = [a for a, v in differing.items() if v == "better"]
    verdict = ("log loss: every floor's difference from 0.01 has an interval containing 0 (no difference); keep 0.01"
               if not differing else
               "log loss differs from 0.01 beyond the interval for " +
               ", ".join(f"{a} ({v})" for a, v in differing.items()) +
               ("; keep 0.01" if not better else f"; lower log loss at {', '.join(better)}"))
    out = {
        "benchmark": "focal_floor", "issue": "21 item 4",
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": spark.sparkContext.defaultParallelism, "spark_master": cfg.spark.master,
        "table_root": cfg.tables.root, "model": spec.name, "focal": {"alpha": cfg.base_models.focal.alpha,
                                                                     "gamma": cfg.base_models.focal.gamma},
        "protocol": (f"training owners only (training_frame split == 'train': held-out owners and the evaluation "
                     f"month {eval_month} excluded); fit on folds != {args.fold} (early stopping on their "
                     f"{cfg.base_models.early_stopping_fraction:.0%} ES share, as oof._fit), score fold {args.fold}; "
                     "same rows and seed for every floor; paired owner bootstrap"),
        "months": months, "evaluation_month_excluded": eval_month,
        "fit_rows": int(fit_stats["n"]), "fit_positives": int(fit_stats["pos"]),
        "early_stopping_rows": int(fit_stats["es"]),
        "rows": int(len(y)), "positives": int(y.sum()), "owners": int(len(np.unique(owners))),
        "k_fraction": cfg.base_models.metric_k_fraction, "bootstrap": b, "criterion": "logloss", "default": DEFAULT,
        "settings": settings_out, "differences": differences, "base_rate_reference": reference, "logloss_verdicts": verdicts, "verdict": verdict,
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    print(verdict)
    write_result(out, args.out)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
