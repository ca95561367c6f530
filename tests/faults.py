"""Fault-injection driver for tests/test_reliability_faults.py, run as its own process so the test
can kill it: ``python -m tests.faults <scenario> --root <tables root> [--master local[2,2]]``.

* ``slow-features``: the feature job with every Delta write slowed down (each write task sleeps
  before yielding its rows), so the test can SIGKILL the process while data files are being
  written and before the commit.
* ``flaky-write``: writes the ``owners`` table through a task that fails on its first attempt
  (an injected executor failure); succeeds only where Spark retries tasks.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

from tests.conftest import REPO, TEST_SETTINGS


def _config(root: str, master: str):
    from remedi_spark.config import load_config

    # a second driver beside the test session's: less driver memory
    return load_config(REPO / "conf" / "local.yaml", [*TEST_SETTINGS, f"tables.root={root}", "spark.driver_memory=2g",
                                                      f"spark.master={master}"])


def slow_features(spark, cfg) -> None:
    import remedi_spark.io.store as store_module
    from remedi_spark.pipeline import run_stage

    conform = store_module.conform

    def slow_conform(df, table):
        out = conform(df, table)

        def sleepy(batches: Iterator) -> Iterator:
            time.sleep(2.0)
            yield from batches

        print(f"WRITING {table}", flush=True)
        return out.repartition(8).mapInPandas(sleepy, out.schema)

    store_module.conform = slow_conform  # _write calls conform(df, table) to build what it saves
    run_stage(spark, cfg, "features")


def flaky_write(spark, cfg) -> None:
    from pyspark import TaskContext

    from remedi_spark.io.store import TableStore
    from tests.tiny import frame, owner

    owners = frame(spark, "owners", [owner(i) for i in range(1, 41)]).repartition(4)

    def fail_first_attempt(batches: Iterator) -> Iterator:
        ctx = TaskContext.get()
        if ctx.partitionId() == 1 and ctx.attemptNumber() == 0:
            raise RuntimeError("injected executor failure")
        yield from batches

    store = TableStore(spark, cfg.tables.root)
    store.write_table(owners.mapInPandas(fail_first_attempt, owners.schema), "owners")
    print(json.dumps({"rows": store.read("owners").count()}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["slow-features", "flaky-write"])
    parser.add_argument("--root", required=True)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    from remedi_spark.spark import get_spark

    cfg = _config(args.root, args.master)
    spark = get_spark(cfg.spark, app_name=f"remedi-fault-{args.scenario}")
    {"slow-features": slow_features, "flaky-write": flaky_write}[args.scenario](spark, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
