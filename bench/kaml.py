"""KAML benchmark: seconds of one training epoch of the KAML base model against the MLP on the same rows.

Uses the demo profile's features (built first if missing; another profile with --conf): a seeded
sample of every month's rows, fully labelled and open-window ones alike, encoded with the configured KAML model's
feature group. Both models run the same in-process epoch loop (remedi_spark.models.neural.loop,
one process, torch's default threads) for exactly one epoch over the same rows and batch size; the
MLP gets KAML's embedding size and trunk, so the difference is the three horizon heads, the union
and the masked + ranking losses. The MLP, which cannot use unknown labels, trains on the same
rows with their unknown labels set to 0 (timing only). Writes bench/results/kaml.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from pyspark.sql import functions as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from remedi_spark.config import load_config  # noqa: E402
from remedi_spark.io.store import TableStore  # noqa: E402
from remedi_spark.models.base import FeatureSpec  # noqa: E402
from remedi_spark.models.neural.base import build_config  # noqa: E402
from remedi_spark.models.neural.feature_map import FeatureMap  # noqa: E402
from remedi_spark.models.neural.loop import make_module, train_in_process  # noqa: E402
from remedi_spark.models.neural.model import HORIZON_COLS, TorchTrainParams  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402


def epoch(family: str, model_cfg: dict, arrays: tuple, valid: tuple, params: dict, fmap: FeatureMap) -> dict:
    """One epoch of ``family`` in this process; its seconds, steps and validation AUC."""
    model = make_module(family, model_cfg, fmap.vocab_sizes, len(fmap.numeric), seed=params["seed"])
    result = train_in_process(model, arrays, {**params, "epochs": 1}, valid)
    return {"epoch_seconds": round(result["epoch_seconds"][0], 2), "steps": result["steps_per_epoch"],
            "parameters": sum(p.numel() for p in model.parameters()), "valid_auc": round(result["valid_auc"], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    parser.add_argument("--rows", type=int, default=100_000, help="training rows (a seeded sample of every month)")
    parser.add_argument("--model", default="kaml", help="configured KAML base model")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "kaml.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf)
    spark = get_spark(cfg.spark, app_name="remedi-bench-kaml")
    store = TableStore(spark, cfg.tables.root)
    if not store.exists("features"):
        from remedi_spark.pipeline import run_foundation

        run_foundation(spark, cfg)
    specs = {s.name: s for s in cfg.base_models.models}
    if args.model not in specs or specs[args.model].family != "kaml":
        raise SystemExit(f"--model {args.model!r}: not a configured base model of family kaml")
    spec = specs[args.model]
    params = build_config(TorchTrainParams, spec.params)
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    feats = store.read("features")
    features = FeatureSpec.from_frame(feats.filter("label_complete"), members)
    encoded = features.encode(feats, extra=("y", *HORIZON_COLS, "label_complete")) \
        .orderBy(F.xxhash64("user_id", "month")).limit(args.rows + 20_000).cache()
    fmap = FeatureMap.fit(encoded, features.columns, vocab=features.categorical,
                          numeric_encoding=params.numeric_encoding, n_buckets=params.n_buckets)
    rows = encoded.toPandas()
    valid_pdf = rows[rows["label_complete"]].tail(20_000)
    train_pdf = rows.drop(valid_pdf.index)
    dense, ids = fmap.transform(train_pdf)
    horizons = train_pdf[list(HORIZON_COLS)].astype("float64").to_numpy(dtype=np.float32)
    y = train_pdf["y"].astype("float64").fillna(0.0).to_numpy(dtype=np.float32)
    v_dense, v_ids = fmap.transform(valid_pdf)
    valid = (v_dense, v_ids, valid_pdf["y"].to_numpy(dtype=np.float32))
    run = params.loop_params()
    mlp_cfg = {k: params.model[k] for k in ("emb_dim", "hidden", "dropout") if k in params.model}
    mlp = epoch("mlp", mlp_cfg, (dense, ids, y), valid, run, fmap)
    kaml = epoch("kaml", params.model, (dense, ids, y, horizons), valid, run, fmap)
    out = {"benchmark": "kaml", "train_rows": len(y), "open_window_rows": int(np.isnan(horizons).any(axis=1).sum()),
           "no_observed_horizon_rows": int(np.isnan(horizons).all(axis=1).sum()), "fields": len(fmap.columns),
           "batch_size": params.batch_size, "kaml_config": params.model, "mlp_config": mlp_cfg,
           "kaml": kaml, "mlp": mlp, "epoch_ratio": round(kaml["epoch_seconds"] / mlp["epoch_seconds"], 2)}
    print(out, flush=True)
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
