"""Tuning benchmark: trials per minute of LightGBM trials as Spark tasks (``tuning.parallelism:
tasks``: a batch of trials per Spark job, one single-threaded fit per task, rows broadcast once) versus
one by one on the driver (``driver``: LightGBM's own threads), on the same rows and the same trials.

Rows: the search rows of a base model of an existing world (``--conf`` whose tables root holds
features and folds, ``--model``), or, without one, a synthetic table of demo size (``--rows`` rows,
``--features`` columns, ~0.5% positives, 5 folds, a 10% early-stopping share): building the demo's
foundation takes longer than the measurement. Writes bench/results/tuning.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from remedi_spark.config import load_config, replace  # noqa: E402


def synthetic_rows(rows: int, features: int, seed: int = 7):
    from remedi_spark.tuning.data import TrialData

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features))
    logit = x[:, :10] @ rng.normal(scale=0.6, size=10) - 5.6
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    return TrialData(x=x, target=y, label=y, fold=rng.integers(0, 5, rows), early_stop=rng.random(rows) < 0.1,
                     columns=[f"f{i}" for i in range(features)], categorical=[])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "local.yaml"))
    parser.add_argument("--model", default=None, help="base model whose search rows to use (needs a world)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=144)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--inner-folds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "tuning.json"))
    args = parser.parse_args(argv)

    from remedi_spark.io.store import TableStore
    from remedi_spark.models.base import LABEL
    from remedi_spark.spark import get_spark
    from remedi_spark.tuning.data import training_rows
    from remedi_spark.tuning.lgbm import FoldRunner
    from remedi_spark.tuning.stage import Target, _job_factory
    from remedi_spark.tuning.study import run_study
    from remedi_spark.tuning.space import ranges

    cfg = load_config(args.conf, ["tracking.enabled=false"])
    spark = get_spark(cfg.spark, app_name="remedi-bench-tuning")
    spec = next(s for s in cfg.base_models.models if s.family == "lgbm" and s.objective == "logloss")
    if args.model:
        spec = next(s for s in cfg.base_models.models if s.name == args.model)
        data, features = training_rows(TableStore(spark, cfg.tables.root), cfg, spec, LABEL)
        source = f"{cfg.tables.root} ({spec.name})"
    else:
        from remedi_spark.models.base import FeatureSpec

        data = synthetic_rows(args.rows, args.features)
        features = FeatureSpec(numeric=data.columns, categorical={})
        source = "synthetic"
    # fixed rounds (early stopping set beyond them): every trial does the same work in both modes
    spec = replace(cfg, base_models={"models": [{**spec.__dict__, "params": {"num_iterations": args.rounds}}]}) \
        .base_models.models[0]
    results = {"benchmark": "tuning", "spark_master": cfg.spark.master, "rows": data.rows,
               "features": len(data.columns), "source": source, "trials": args.trials,
               "inner_folds": args.inner_folds, "rounds": args.rounds, "modes": {}}
    for mode in ("tasks", "driver"):
        run_cfg = replace(cfg, base_models={"early_stopping_rounds": args.rounds + 1},
                          tuning={"parallelism": mode, "max_trials": args.trials, "timeout_minutes": None,
                                  "inner_folds": args.inner_folds, "prune_startup_trials": args.trials})
        started = time.perf_counter()
        runner = FoldRunner(spark, data, mode, args.rounds + 1, "logloss", run_cfg.base_models.metric_k_fraction)
        try:
            _, records = run_study(spec.name, ranges(run_cfg, "lgbm"), run_cfg.tuning, data.folds()[: args.inner_folds],
                                   _job_factory(run_cfg, Target(spec, "lgbm"), features, data), runner.run,
                                   runner.slots, 0.9)
        finally:
            runner.close()
        seconds = time.perf_counter() - started
        results["modes"][mode] = {"seconds": round(seconds, 1), "trials_per_minute": round(60 * len(records) / seconds, 2),
                                  "fit_seconds": round(sum(r.seconds for r in records), 1),
                                  "values": [round(r.value, 6) for r in records]}
        print(f"{mode}: {len(records)} trials in {seconds:.1f} s", flush=True)
    modes = results["modes"]
    results["tasks_speedup"] = round(modes["driver"]["seconds"] / modes["tasks"]["seconds"], 2)
    write_result(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
