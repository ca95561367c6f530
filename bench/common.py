"""Shared by the benchmarks: where results go and what machine produced them."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import psutil


REPO = Path(__file__).resolve().parents[1]
# conf/local.yaml as the tests run it (tests/conftest.py TEST_SETTINGS): for benchmarks on the demo profile
TEST_SETTINGS = ["spark.shuffle_partitions=4", "spark.driver_memory=4g", f"spark.jars_dir={REPO / '.jars'}",
                 "spark.conf={'spark.ui.enabled': 'false'}", "tracking.enabled=false"]


def interval_fields(iv) -> dict:
    """A metrics Interval as JSON fields: estimate, ci_low, ci_high."""
    return {"estimate": iv.estimate, "ci_low": iv.low, "ci_high": iv.high}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def write_result(out: dict, path: str) -> None:
    """Write one benchmark's JSON (with the machine description) and say where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**out, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")


def labelled_features(cfg, app_name: str):
    """(spark, labelled feature rows, FeatureSpec) of ``cfg``'s table root; the foundation is built
    first when the features table is missing."""
    from remedi_spark.io.store import TableStore
    from remedi_spark.models.base import FeatureSpec
    from remedi_spark.pipeline import run_foundation
    from remedi_spark.spark import get_spark

    spark = get_spark(cfg.spark, app_name=app_name)
    store = TableStore(spark, cfg.tables.root)
    if not store.exists("features"):
        run_foundation(spark, cfg)
    labelled = store.read("features").filter("label_complete")
    return spark, labelled, FeatureSpec.from_frame(labelled)
