"""Neural training defaults chosen on training owners: numeric encoding, epoch budget and stopping metric.

Issue 23 asks for defaults of the neural base models that work at the demo's scale, chosen on training
owners' early-stopping/OOF rows only. This study reproduces train-base's fold-0 fit of each configured
neural model in one process (the same fit rows, early-stopping rows, feature group, label columns and
epoch loop as :func:`remedi_spark.training.oof.train_model_oof`; batch sizes as the distributed run's
global batch: ``min_steps_per_epoch`` steps an epoch) and trains it for ``--epochs`` epochs without
early stopping, once per numeric encoding. After every epoch it keeps the early-stopping rows' AUC and
log loss and the predictions of fold 0's OOF rows (training owners the fit never saw). Early stopping
with patience ``p`` on either metric and any epoch budget up to ``--epochs`` is then a choice among
those epochs (the learning-rate schedule reads the log loss whatever the stopping metric, so a shorter
budget is the same run cut short): every rule is scored on the same OOF rows, each against the
LightGBM on the same columns (paired owner bootstrap, :func:`remedi_spark.metrics.bootstrap`).

Held-out owners and the evaluation month are never read. Reads the tables of ``make demo-full``
(``make neural-defaults`` runs it, ~35 min here). Writes bench/results/neural_defaults.json.
"""
from __future__ import annotations

import argparse
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

from remedi_spark.config import load_config  # noqa: E402
from remedi_spark.features.labels import HORIZON_LABELS  # noqa: E402
from remedi_spark.io.store import TableStore  # noqa: E402
from remedi_spark.metrics import bootstrap  # noqa: E402
from remedi_spark.models.base import LABEL, FeatureSpec, keyed_pandas  # noqa: E402
from remedi_spark.models.neural.base import build_config  # noqa: E402
from remedi_spark.models.neural.feature_map import FeatureMap  # noqa: E402
from remedi_spark.models.neural.loop import (array_batches, base_rate, epoch_batch_size, fit_epochs,  # noqa: E402
                                             logit_metrics, make_module, predict_logits, stopping_score,
                                             validation_metrics)
from remedi_spark.models.neural.model import TorchTrainParams  # noqa: E402
from remedi_spark.models.registry import aux_labels, needs_horizons  # noqa: E402
from remedi_spark.report.matching import matching_pairs  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402
from remedi_spark.training.oof import ES, OPEN, fold_fit_rows, training_frame  # noqa: E402

FOLD = 0
BOOT = {"replicates": 1000, "seed": 7, "level": 0.9}


def stopped_epoch(curve: list[dict], budget: int, metric: str, patience: int) -> int:
    """The epoch (1-based) early stopping on ``metric`` of the early-stopping rows keeps, with ``patience``
    epochs without improvement and at most ``budget`` epochs (the loop's rule in
    :func:`remedi_spark.models.neural.loop.fit_epochs`, on the recorded curve)."""
    best, best_epoch, stale = -np.inf, 1, 0
    for row in curve[:budget]:
        score = stopping_score({"auc": row["valid_auc"], "logloss": row["valid_logloss"]}, metric)
        if score > best:
            best, best_epoch, stale = score, row["epoch"], 0
        else:
            stale += 1
            if stale >= patience:
                break
    return best_epoch


def fold_arrays(rows, fmap: FeatureMap, extra: list[str]) -> tuple:
    pdf = keyed_pandas(rows, "user_id", *fmap.columns, LABEL, *extra)
    dense, ids = fmap.transform(pdf)
    labels = {c: pdf[c].astype("float64").to_numpy(dtype=np.float32) for c in [LABEL, *extra]}
    return dense, ids, labels, pdf["user_id"].to_numpy()


def run_model(spec, cfg, data, encoding: str, epochs: int) -> dict:
    """Fold 0's fit of ``spec`` for ``epochs`` epochs: the early-stopping curve and each epoch's OOF logits."""
    params = build_config(TorchTrainParams, {**spec.params, "numeric_encoding": encoding})
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    train = data.filter(F.col("split") == "train")
    features = FeatureSpec.from_frame(train.drop("fold", "split", ES), members)
    horizons = list(HORIZON_LABELS) if needs_horizons(spec) else []
    aux = list(aux_labels(spec))
    encoded = features.encode(data, extra=("y", *horizons, *aux, "fold", "split", ES))
    pool = encoded.filter(F.col("split").isin("train", OPEN)) if horizons else encoded.filter(F.col("split") == "train")
    fold_pool = fold_fit_rows(pool, FOLD)
    fit_rows = fold_pool.filter(~F.col(ES))
    stop_rows = fold_pool.filter(F.col(ES) & (F.col("split") == "train"))
    oof_rows = encoded.filter((F.col("split") == "train") & (F.col("fold") == FOLD))
    fmap = FeatureMap.fit(fit_rows, features.columns, vocab=features.categorical,
                          numeric_encoding=params.numeric_encoding, n_buckets=params.n_buckets)
    f_dense, f_ids, f_labels, _ = fold_arrays(fit_rows, fmap, [*horizons, *aux])
    s_dense, s_ids, s_labels, _ = fold_arrays(stop_rows, fmap, [])
    o_dense, o_ids, o_labels, o_users = fold_arrays(oof_rows, fmap, [])

    loop = {**params.loop_params(), "epochs": epochs, "patience": epochs + 1}
    model = make_module(spec.family, params.model, fmap.vocab_sizes, len(fmap.numeric), seed=params.seed)
    y = f_labels[LABEL]
    model.init_output_bias(base_rate(y))
    batch_size = epoch_batch_size(len(y), loop, world=params.num_processes) * params.num_processes
    steps = max(1, len(y) // batch_size)
    batches = array_batches(f_dense, f_ids, y, batch_size, seed=params.seed,
                            horizons=np.stack([f_labels[c] for c in horizons], 1) if horizons else None,
                            aux=np.stack([f_labels[c] for c in aux], 1) if aux else None)
    oof_logits = []

    def validate(m):
        oof_logits.append(predict_logits(m, o_dense, o_ids).astype(np.float64))
        return validation_metrics(m, (s_dense, s_ids, s_labels[LABEL]))

    start = time.perf_counter()
    result = fit_epochs(model, model, batches, steps, loop, validate)
    return {"curve": result["curve"], "oof_logits": oof_logits, "oof_y": o_labels[LABEL], "oof_users": o_users,
            "seconds": time.perf_counter() - start, "batch_size": batch_size, "steps_per_epoch": steps,
            "fit_rows": len(y), "stop_positives": int(s_labels[LABEL].sum())}


def lgbm_oof(store: TableStore, name: str):
    pdf = (store.read("oof_predictions").filter((F.col("model") == name) & (F.col("fold") == FOLD)
                                                & (F.col("split") == "train"))
           .select("user_id", "month", "p").toPandas())
    return pdf.sort_values(["user_id", "month"]).reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo_full.yaml"))
    parser.add_argument("--models", default="deepfm,xdeepfm,kdef,kaml,hm3,mlp")
    parser.add_argument("--encodings", default="standardize",
                        help="numeric encodings compared, e.g. standardize,buckets")
    parser.add_argument("--epochs", type=int, default=10, help="epochs each run trains (the largest budget)")
    parser.add_argument("--budgets", default="3,5,10")
    parser.add_argument("--patience", default="2,3", help="early-stopping patiences compared")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "neural_defaults.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf, overrides=TEST_SETTINGS[:3] + ["spark.driver_memory=8g"])
    spark = get_spark(cfg.spark, app_name="remedi-bench-neural-defaults")
    store = TableStore(spark, cfg.tables.root)
    data = training_frame(store, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    specs = {s.name: s for s in cfg.base_models.models}
    pairs = {name: match for name, match, _ in matching_pairs(cfg.base_models.models, list(specs))}
    budgets = [int(b) for b in args.budgets.split(",") if int(b) <= args.epochs]
    patiences = [int(p) for p in args.patience.split(",")]
    rows = []
    for name in args.models.split(","):
        spec = specs[name]
        reference = lgbm_oof(store, pairs[name])
        for encoding in args.encodings.split(","):
            run = run_model(spec, cfg, data, encoding, args.epochs)
            ref = reference["p"].to_numpy()
            if not np.array_equal(reference["user_id"].to_numpy(), run["oof_users"]):
                raise RuntimeError(f"{name}: the LightGBM's fold-{FOLD} OOF rows are not the study's rows")
            scores = {"lgbm": ref}
            rules = {}
            for budget in budgets:
                for metric in ("auc", "logloss"):
                    for patience in patiences:
                        epoch = stopped_epoch(run["curve"], budget, metric, patience)
                        rule = f"epochs{budget}_stop_{metric}_patience{patience}"
                        rules[rule] = epoch
                        scores[rule] = 1.0 / (1.0 + np.exp(-run["oof_logits"][epoch - 1]))
            boot = bootstrap(run["oof_y"], scores, run["oof_users"], cfg.base_models.metric_k_fraction,
                             pairs=[(r, "lgbm") for r in rules], **BOOT)
            for rule, epoch in rules.items():
                rows.append({"model": name, "reference": pairs[name], "encoding": encoding, "rule": rule,
                             "epoch": epoch, "auc": interval_fields(boot["intervals"][rule]["auc"]),
                             "logloss": interval_fields(boot["intervals"][rule]["logloss"]),
                             "auc_minus_reference": interval_fields(boot["differences"][(rule, "lgbm")]["auc"]),
                             "logloss_minus_reference":
                                 interval_fields(boot["differences"][(rule, "lgbm")]["logloss"])})
            print(f"{name} {encoding}: " + ", ".join(
                f"{r} e{e} {boot['differences'][(r, 'lgbm')]['auc'].estimate:+.4f}" for r, e in rules.items()),
                flush=True)
            per_epoch = [{"epoch": e + 1, **{f"oof_{k}": v for k, v in logit_metrics(z, run["oof_y"]).items()}}
                         for e, z in enumerate(run["oof_logits"])]
            print(f"  {name} {encoding} OOF AUC by epoch: " + " ".join(f"{r['oof_auc']:.4f}" for r in per_epoch)
                  + f" (LightGBM {boot['intervals']['lgbm']['auc'].estimate:.4f})", flush=True)
            rows.append({"model": name, "reference": pairs[name], "encoding": encoding, "rule": "curve",
                         "curve": run["curve"], "oof_by_epoch": per_epoch, "seconds": round(run["seconds"], 1),
                         "batch_size": run["batch_size"],
                         "steps_per_epoch": run["steps_per_epoch"], "fit_rows": run["fit_rows"],
                         "stop_positives": run["stop_positives"], "oof_rows": len(run["oof_y"]),
                         "oof_positives": int(run["oof_y"].sum()),
                         "reference_auc": interval_fields(boot["intervals"]["lgbm"]["auc"])})
            # after every run: a long study interrupted keeps what it measured
            write_result({"conf": args.conf, "fold": FOLD, "epochs": args.epochs, "patience": patiences,
                          "bootstrap": BOOT, "rows": rows}, args.out)
    data.unpersist()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
