"""`make backtest`: generate → features → the backtest stage on one profile (conf/backtest.yaml), in
one Spark session, timed. Prints the backtest's tables and writes bench/results/backtest.json:
seconds in all and per phase, per backtest month (copy, each stage of its chain, reading the
rankers) and for the bootstrap, with the rows, owners and machine behind them.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from remedi_spark.backtest.stage import format_backtest  # noqa: E402
from remedi_spark.config import load_config  # noqa: E402
from remedi_spark.io.store import TableStore  # noqa: E402
from remedi_spark.months import parse_month_spec  # noqa: E402
from remedi_spark.pipeline import run_stage  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conf", default=str(REPO / "conf" / "backtest.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--feature-months", default=None, help="months to build features for (default: all)")
    parser.add_argument("--reuse", action="store_true", help="keep the root's raw tables and features if they exist")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "backtest.json"))
    args = parser.parse_args(argv)
    cfg = load_config(args.conf, args.set)
    months = parse_month_spec(args.feature_months) if args.feature_months else None
    started = time.perf_counter()
    spark = get_spark(cfg.spark, app_name="remedi-backtest")
    phases = {"spark_session": round(time.perf_counter() - started, 1)}
    summaries = {}
    if not (args.reuse and TableStore(spark, cfg.tables.root).exists("features")):
        for stage, options in (("generate", {}), ("features", {"months": months})):
            t0 = time.perf_counter()
            summaries[stage] = run_stage(spark, cfg, stage, **options)
            phases[stage] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    summary = run_stage(spark, cfg, "backtest")
    phases["backtest"] = round(time.perf_counter() - t0, 1)
    total = round(time.perf_counter() - started, 1)
    print(format_backtest(summary))
    per_month = {m: {"seconds": v["seconds"], "training_months": v["training_months"], "owners": v["owners"],
                     "positives": v["positives"], "training_owner_rows": v["folds"]["training_owner_rows"],
                     "copied_rows": v["copied_rows"]} for m, v in summary["months"].items()}
    result = {"profile": str(args.conf), "overrides": args.set, "seconds_total": total, "phases": phases,
              "backtest_months": per_month, "bootstrap_seconds": summary["evaluate_seconds"],
              "replicates": cfg.evaluation.bootstrap.replicates, "owners": summary["owners"],
              "evaluated_owner_months": summary["rows"], "models": summary["models"],
              "feature_rows": sum(summaries["features"]["per_month"][m]["rows"]
                                  for m in summaries["features"]["per_month"]) if "features" in summaries else None,
              "spark_master": cfg.spark.master, "run_id": summary["run_id"], "report": summary["report"],
              "mean": [{k: r[k] for k in ("kind", "ranker", "model", "hits", "precision_at_k", "precision_at_k_ci_low",
                                          "precision_at_k_ci_high", "business_recall_at_k", "recall_at_k", "auc",
                                          "auc_ci_low", "auc_ci_high")}
                       for r in summary["results"] if r["month"] == "mean"]}
    write_result(result, args.out)
    print(f"backtest: {total:.0f} s in all ({phases})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
