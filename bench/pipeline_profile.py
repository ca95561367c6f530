"""Where a pipeline run's time goes: seconds per stage and per model fit, each fit split into compute
(LightGBM's own training loop, the neural epochs) and fixed cost (everything around it: Spark jobs and
shuffles that feed it, a TorchDistributor launch, a Petastorm conversion, collecting rows).

Subcommands, each merging its part into ``--out`` (bench/results/pipeline_profile.json):

* ``run --conf C --label L``: the whole pipeline of profile ``C`` (as ``make demo`` runs it) in this
  process, timed per stage and per fit; JVM start apart. The run's quality numbers (teacher and best
  base model on OOF and held-out rows, the lead list on the evaluation month) go beside its times, so
  a faster configuration shows what it cost. Stored under ``runs.L``; ``L = demo`` also sets
  ``demo_wall_seconds``.
* ``launchers --conf C --model M``: the fixed cost of one neural fit: base model ``M`` fitted on fold
  0's rows of ``C``'s tables (run ``C`` first) once with TorchDistributor on Petastorm and once on the
  driver, same params; wall, epoch seconds and the early-stopping AUC of each.
* ``fold-costs --conf C --model M``: one fold of base model ``M`` on ``C``'s tables (run ``C``'s foundation
  stages first), read and fitted as train-base did before one encoding was shared by every model and
  as it does now; seconds of each step (``fold_costs.M``).
* ``record KEY SECONDS --how TEXT``: a wall time measured outside this script (``setup_wall_seconds``,
  ``test_wall_seconds``, ``paper_wall_seconds``...), with how it was measured.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import machine  # noqa: E402

IMPORT_START = time.perf_counter()


def _load(path: str) -> dict[str, Any]:
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def _save(data: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**data, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")


def fit_compute_seconds(info: dict[str, Any]) -> float | None:
    """The seconds a fitted model spent in its own training loop, from what it records: the native
    LightGBM's ``timings.train_seconds``, a neural model's epochs; None when it records none (SynapseML)."""
    if "timings" in info:
        return float(info["timings"]["train_seconds"])
    if "epoch_seconds" in info:
        return float(sum(info["epoch_seconds"]))
    return None


def split_fit(name: str, wall: float, info: dict[str, Any]) -> dict[str, Any]:
    """One fit's row: wall seconds, compute and fixed (= wall − compute, None when compute is unknown)."""
    compute = fit_compute_seconds(info)
    return {"model": name, "wall_seconds": round(wall, 2),
            "compute_seconds": None if compute is None else round(compute, 2),
            "fixed_seconds": None if compute is None else round(wall - compute, 2)}


def quality(out: dict[str, Any]) -> dict[str, Any]:
    """The numbers a faster run must not lose, read from the pipeline's own summaries."""
    models = out["train-base"]["models"]
    summary: dict[str, Any] = {"base_models": {
        name: {split: {k: rows[split][k] for k in ("auc", "auc_ci_low", "auc_ci_high", "positives")}
               for split in ("oof", "test") if split in rows} for name, rows in models.items()}}
    evaluation = out.get("evaluation") or {}
    if evaluation:
        summary["lead_list_evaluation"] = evaluation
    return summary


def run_profile(conf: str, label: str, out_path: str, settings: list[str]) -> None:
    """``run``: the pipeline of ``conf`` timed per stage and per fit."""
    import remedi_spark.pipeline as pipeline
    import remedi_spark.training.oof as oof
    from remedi_spark.config import load_config
    from remedi_spark.spark import get_spark

    import_seconds = time.perf_counter() - IMPORT_START
    cfg = load_config(conf, settings)
    stages: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []

    def timed_stage(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                stages.append({"stage": name, "seconds": round(time.perf_counter() - start, 2)})
        return run

    for name, fn in list(pipeline.STAGES.items()):
        pipeline.STAGES[name] = timed_stage(name, fn)
    original_fit = oof._fit

    def timed_fit(spec, *args, **kwargs):
        start = time.perf_counter()
        model = original_fit(spec, *args, **kwargs)
        fits.append(split_fit(spec.name, time.perf_counter() - start, model.info))
        return model
    oof._fit = timed_fit

    start = time.perf_counter()
    spark = get_spark(cfg.spark, app_name=f"profile-{label}")
    jvm_seconds = time.perf_counter() - start
    out = pipeline.run_pipeline(spark, cfg)
    wall = time.perf_counter() - start + import_seconds
    spark.stop()

    per_model: dict[str, dict[str, Any]] = {}
    for f in fits:
        m = per_model.setdefault(f["model"], {"fits": 0, "wall_seconds": 0.0, "compute_seconds": 0.0,
                                              "fixed_seconds": 0.0, "compute_known": True})
        m["fits"] += 1
        m["wall_seconds"] += f["wall_seconds"]
        if f["compute_seconds"] is None:
            m["compute_known"] = False
        else:
            m["compute_seconds"] += f["compute_seconds"]
            m["fixed_seconds"] += f["fixed_seconds"]
    for m in per_model.values():
        for k in ("wall_seconds", "compute_seconds", "fixed_seconds"):
            m[k] = round(m[k], 1) if m["compute_known"] or k == "wall_seconds" else None
    data = _load(out_path)
    data.setdefault("runs", {})[label] = {
        "conf": conf, "settings": settings, "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(wall, 1), "python_import_seconds": round(import_seconds, 1),
        "jvm_start_seconds": round(jvm_seconds, 1), "owners": cfg.synthetic.n_users, "folds": cfg.folds.n_folds,
        "models": [s.name for s in cfg.base_models.models], "stages": stages, "fits_per_model": per_model,
        "fits": fits, "quality": quality(out)}
    if label == "demo":
        data["demo_wall_seconds"] = round(wall, 1)
    _save(data, out_path)


def launcher_profile(conf: str, model: str, out_path: str, settings: list[str]) -> None:
    """``launchers``: one neural fit on fold 0's rows, TorchDistributor vs the driver."""
    from dataclasses import replace as dc_replace

    from pyspark.sql import functions as F

    from remedi_spark.config import load_config
    from remedi_spark.io.store import TableStore
    from remedi_spark.spark import get_spark
    from remedi_spark.training.oof import _fit, fold_fit_rows, training_frame
    from remedi_spark.models.base import FeatureSpec

    cfg = load_config(conf, settings)
    spec = next(s for s in cfg.base_models.models if s.name == model)
    spark = get_spark(cfg.spark, app_name="profile-launchers")
    store = TableStore(spark, cfg.tables.root)
    data = training_frame(store, cfg).cache()
    train = data.filter(F.col("split") == "train")
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = FeatureSpec.from_frame(train.drop("fold", "split", "_early_stop"), members)
    rows = features.encode(train, extra=("y", "fold", "split", "_early_stop")).cache()
    rows.count()
    result = {}
    for launcher in ("distributor", "driver"):
        launched = dc_replace(spec, params={**spec.params, "launcher": launcher, "num_processes": 1})
        start = time.perf_counter()
        fitted = _fit(launched, cfg, features, fold_fit_rows(rows, 0))
        wall = time.perf_counter() - start
        result[launcher] = {**split_fit(model, wall, fitted.info), "epochs": fitted.info["epochs"],
                            "early_stopping_auc": round(float(fitted.info["valid_auc"]), 4)}
        print(launcher, result[launcher], flush=True)
    spark.stop()
    payload = _load(out_path)
    payload.setdefault("launchers", {})[model] = {
        "conf": conf, "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "rows": "fold 0's fit rows (every training fold but 0) of the profile's tables", **result}
    _save(payload, out_path)


def fold_cost_profile(conf: str, model: str, out_path: str, settings: list[str]) -> None:
    """``fold-costs``: fold 0 of base model ``model`` on ``conf``'s tables (run its foundation stages
    first), read, fitted and predicted as train-base did before it shared one encoding between models
    (the model encoded and cached the training frame itself, each fit filtered and sampled that whole
    table) and as it does now (:func:`~remedi_spark.training.oof.encode_training_frame` once, the
    model's sampled rows cached once: :func:`~remedi_spark.training.oof.model_rows`). Seconds of each
    step; the fit split into compute and fixed cost."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from remedi_spark.config import load_config
    from remedi_spark.io.store import TableStore
    from remedi_spark.models.base import FeatureSpec
    from remedi_spark.spark import get_spark
    from remedi_spark.training.oof import ES, _fit, encode_training_frame, fold_fit_rows, model_rows, training_frame

    cfg = load_config(conf, settings)
    spec = next(s for s in cfg.base_models.models if s.name == model)
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    spark = get_spark(cfg.spark, app_name="profile-fold-costs")
    store = TableStore(spark, cfg.tables.root)
    memory = StorageLevel.MEMORY_AND_DISK

    def timed(step: Any) -> tuple[Any, float]:
        start = time.perf_counter()
        out = step()
        return out, round(time.perf_counter() - start, 2)

    def fit_and_predict(features: Any, pool: Any, train: Any) -> dict[str, Any]:
        fitted, wall = timed(lambda: _fit(spec, cfg, features, fold_fit_rows(pool, 0)))
        _, predict = timed(lambda: fitted.predict(train.filter(F.col("fold") == 0)).persist(memory).count())
        return {"fit": split_fit(model, wall, fitted.info), "predict_fold_seconds": predict}

    # before: the training frame cached, then this model's own vocabulary pass and encoded copy
    data = training_frame(store, cfg).persist(memory)
    _, read = timed(data.count)
    train = data.filter(F.col("split") == "train")
    features, vocab = timed(lambda: FeatureSpec.from_frame(train.drop("fold", "split", ES), members))
    encoded = features.encode(data, extra=("y", "fold", "split", ES)).persist(memory)
    _, encode = timed(encoded.count)
    before = {"read_and_cache_seconds": read, "model_vocabulary_seconds": vocab, "model_encode_seconds": encode,
              **fit_and_predict(features, encoded.filter(F.col("split") == "train"),
                                encoded.filter(F.col("split") == "train"))}
    encoded.unpersist()
    data.unpersist()
    # now: one encoding for every model of the stage, then this model's sampled rows
    full, table = encode_training_frame(training_frame(store, cfg), [spec])
    table = table.persist(memory)
    _, shared = timed(table.count)
    rows, sample = timed(lambda: model_rows(cfg, spec, full, table, None))
    _, sample_count = timed(rows.pool.count)
    after = {"shared_encode_seconds": shared, "model_sample_seconds": round(sample + sample_count, 2),
             **fit_and_predict(rows.features, rows.pool, rows.train)}
    rows.release()
    table.unpersist()
    spark.stop()
    payload = _load(out_path)
    payload.setdefault("fold_costs", {})[model] = {
        "conf": conf, "settings": settings,
        "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "negative_rate": cfg.training.negative_rate, "fit_rows": "fold 0's (every training fold but 0)",
        "before": before, "after": after,
        "note": "before: once per model (read and cache: once per stage); after: shared_encode once per stage, "
                "the rest once per model and fit"}
    _save(payload, out_path)


def record(key: str, seconds: float, how: str, out_path: str) -> None:
    """``record``: a wall time measured elsewhere, with how."""
    data = _load(out_path)
    data[key] = round(seconds, 1)
    data.setdefault("how_measured", {})[key] = {
        "how": how, "recorded_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    _save(data, out_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline_profile.json"))
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    run.add_argument("--label", default="demo")
    run.add_argument("--set", action="append", default=[], dest="settings")
    launch = sub.add_parser("launchers")
    launch.add_argument("--conf", default=str(REPO / "conf" / "demo.yaml"))
    launch.add_argument("--model", default="mlp")
    launch.add_argument("--set", action="append", default=[], dest="settings")
    costs = sub.add_parser("fold-costs")
    costs.add_argument("--conf", default=str(REPO / "conf" / "paper.yaml"))
    costs.add_argument("--model", default="mlp")
    costs.add_argument("--set", action="append", default=[], dest="settings")
    rec = sub.add_parser("record")
    rec.add_argument("key")
    rec.add_argument("seconds", type=float)
    rec.add_argument("--how", required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        run_profile(args.conf, args.label, args.out, args.settings)
    elif args.command == "launchers":
        launcher_profile(args.conf, args.model, args.out, args.settings)
    elif args.command == "fold-costs":
        fold_cost_profile(args.conf, args.model, args.out, args.settings)
    else:
        record(args.key, args.seconds, args.how, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
