"""Scoring benchmark: the scoring job (student over every owner of a month: read, score, rank, Delta
write) at 100k and 800k owners on local[2], versus in-process `lightgbm` predict on the same rows
(target: job <= 1.3x), the growth time(800k) / time(100k) (target <= 8.5), and the teacher vs student
inference time per 1,000 owners from the distillation run (target: student >= 10x faster).

The student comes from --model-root (default: the demo, `make demo` first); the populations are the
foundation benchmark's (data/bench/<n>, built here when missing: one month of features).
Writes bench/results/scoring.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from remedi_spark.config import load_config, replace  # noqa: E402
from remedi_spark.io.store import TableStore  # noqa: E402
from remedi_spark.models.base import load_model, model_roots, saved_model_dir  # noqa: E402
from remedi_spark.pipeline import run_stage  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,800000")
    parser.add_argument("--month", default="2025-01")
    parser.add_argument("--root", default=str(REPO / "data" / "bench"))
    parser.add_argument("--model-root", default=str(REPO / "data" / "demo"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "scoring.json"))
    args = parser.parse_args(argv)
    base = load_config(REPO / "conf" / "local.yaml")
    spark = get_spark(base.spark, app_name="remedi-bench-scoring")
    model_dir = saved_model_dir(args.model_root, "student")
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        cfg = replace(base, synthetic={"n_users": n}, tables={"root": f"{args.root}/{n}", "allowed_roots": [args.model_root]},
                      scoring={"model_dir": model_dir})
        store = TableStore(spark, cfg.tables.root)
        if not store.exists("features") or not store.read("features", months=[args.month]).limit(1).count():
            run_stage(spark, cfg, "generate")
            run_stage(spark, cfg, "features", months=[args.month])
        run_stage(spark, cfg, "score", month=args.month)  # warm-up: JVM, Python workers, model parse
        start = time.perf_counter()
        summary = run_stage(spark, cfg, "score", month=args.month)
        job_seconds = time.perf_counter() - start
        student = load_model(spark, model_dir, cfg.base_models, model_roots(cfg, store.root))
        start = time.perf_counter()
        pdf = student.features.encode(store.read("features", months=[args.month])).toPandas()
        collect_seconds = time.perf_counter() - start
        start = time.perf_counter()
        booster = lgb.Booster(model_str=student.artifact().decode("utf-8"))
        booster.predict(pdf[student.features.columns].to_numpy(np.float64), num_threads=2)
        predict_seconds = time.perf_counter() - start
        row = {"owners": summary["owners"], "job_seconds": round(job_seconds, 2),
               "in_process_predict_seconds": round(predict_seconds, 2),
               "collect_seconds": round(collect_seconds, 2),
               "job_vs_in_process": round(job_seconds / predict_seconds, 2),
               "job_vs_in_process_with_collect": round(job_seconds / (predict_seconds + collect_seconds), 2),
               "owners_per_second": round(summary["owners"] / job_seconds)}
        results.append(row)
        print(json.dumps(row), flush=True)
    out = {"benchmark": "scoring", "target_ratio": 1.3, "target_growth": 8.5, "spark_master": base.spark.master,
           "results": results}
    if len(results) >= 2:
        out["growth_large_to_small"] = {"owners": results[-1]["owners"] / results[0]["owners"],
                                        "job_seconds": round(results[-1]["job_seconds"] / results[0]["job_seconds"], 2)}
    demo = TableStore(spark, args.model_root)
    if demo.exists("distill_results"):
        timing = demo.read("distill_results").filter("seconds_per_1000 IS NOT NULL").toPandas()
        per = dict(zip(timing["kind"], timing["seconds_per_1000"]))
        out["inference_seconds_per_1000_owners"] = {**per, "student_speedup": round(per["teacher"] / per["student"], 1)}
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
