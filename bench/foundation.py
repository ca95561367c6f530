"""Foundation benchmark: wall time (and peak memory) of the generator and the feature job.

For each population size: generate the default 8 months of synthetic data, then build the
features of one month (the newest, so the full look-back is read). Writes one JSON file.
Run with `make bench`; sizes and months are flags. Numbers, never assertions: machines are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from common import write_result  # noqa: E402

from remedi_spark.config import load_config, replace  # noqa: E402
from remedi_spark.pipeline import run_stage  # noqa: E402
from remedi_spark.spark import get_spark  # noqa: E402


class PeakRSS:
    """Samples the resident memory of this process and all its children (JVM, Python workers)."""

    def __init__(self, interval: float = 0.5):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _sample(self) -> int:
        me = psutil.Process(os.getpid())
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def __enter__(self):
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(fn):
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,800000")
    parser.add_argument("--month", default="2025-01", help="the month whose features are built")
    parser.add_argument("--root", default=str(REPO / "data" / "bench"))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "foundation.json"))
    args = parser.parse_args(argv)
    base = load_config(REPO / "conf" / "local.yaml")
    spark = get_spark(base.spark, app_name="remedi-bench")
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        cfg = replace(base, synthetic={"n_users": n}, tables={"root": f"{args.root}/{n}"})
        months = (cfg.synthetic.start_month, cfg.synthetic.end_month)
        gen, gen_s, gen_mem = timed(lambda: run_stage(spark, cfg, "generate"))
        feats, feat_s, feat_mem = timed(lambda: run_stage(spark, cfg, "features", months=[args.month]))
        row = {
            "users": n, "generated_months": len(gen["months"]), "generate_seconds": round(gen_s, 1),
            "generate_seconds_per_month": round(gen_s / len(gen["months"]), 1),
            "features_one_month_seconds": round(feat_s, 1), "features_month": args.month,
            "generate_peak_rss_gib": round(gen_mem, 2), "features_peak_rss_gib": round(feat_mem, 2),
            "feature_rows": feats["per_month"][args.month]["rows"], "month_range": months,
        }
        results.append(row)
        print(json.dumps(row), flush=True)
    out = {"benchmark": "foundation", "spark_master": base.spark.master, "results": results}
    if len(results) >= 2:
        small, large = results[0], results[-1]
        out["ratio_large_to_small"] = {
            "users": large["users"] / small["users"],
            "generate_seconds": round(large["generate_seconds"] / small["generate_seconds"], 2),
            "features_one_month_seconds": round(large["features_one_month_seconds"]
                                                / small["features_one_month_seconds"], 2),
        }
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
