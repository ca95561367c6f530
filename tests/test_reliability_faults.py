"""Fault injection: a job killed in the middle of a Delta write leaves the table at its previous
version and a re-run gives the same rows as an uninterrupted run; a failed Spark task is
retried; a base model that fails to train stops the stage naming the model."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from remedi_spark.config import replace
from remedi_spark.features.build import build_features
from remedi_spark.io.store import TableStore
from remedi_spark.months import month_range
from remedi_spark.training.oof import BaseModelFailed
from tests.conftest import REPO
from tests.tiny import raw_world

pytestmark = [pytest.mark.reliability, pytest.mark.slow]
MONTHS = month_range("2024-06", "2024-10")


def _data_files(table: Path) -> set[str]:
    return {str(p.relative_to(table)) for p in table.rglob("*.parquet")}


def _driver(scenario: str, root: str, log: Path, master: str = "local[2]") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.faults", scenario, "--root", root, "--master", master],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                            start_new_session=True)  # its own process group: the kill reaches the JVM too


def test_a_job_killed_mid_write_leaves_the_previous_version_and_a_rerun_completes(spark, cfg_at, tmp_path):
    cfg = cfg_at()
    store = TableStore(spark, cfg.tables.root)
    raw_world(spark, store, MONTHS)
    build_features(spark, cfg, store)
    version, before = store.version("features"), store.fingerprint("features")
    raw_world(spark, store, MONTHS, visit_days=2)  # new raw data: the next run writes other rows
    table = Path(store.path("features"))
    files = _data_files(table)
    proc = _driver("slow-features", cfg.tables.root, tmp_path / "driver.log")
    try:
        # until the killed write has started writing data files; a driver that ends first (it finishes
        # its slowed write, or fails) ends the wait with its log
        while not (_data_files(table) - files):
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    orphans = _data_files(table) - files
    assert orphans, "the job was killed before it wrote any data file"
    assert store.version("features") == version  # no commit: readers see the previous version, intact
    assert store.fingerprint("features") == before
    summary = build_features(spark, cfg, store)  # the re-run completes...
    assert summary["version"] == version + 1
    clean = replace(cfg, tables={"root": str(tmp_path / "uninterrupted")})
    clean_store = TableStore(spark, clean.tables.root)
    raw_world(spark, clean_store, MONTHS, visit_days=2)
    build_features(spark, clean, clean_store)
    assert store.fingerprint("features") == clean_store.fingerprint("features") != before  # ...with the same rows


@pytest.mark.parametrize("master, retried", [("local[2,2]", True), ("local[2]", False)])
def test_a_failed_task_is_retried(tmp_path, master, retried):
    root = str(tmp_path / "t")
    proc = _driver("flaky-write", root, tmp_path / "driver.log", master)
    out, _ = proc.communicate()
    log = (tmp_path / "driver.log").read_text()
    assert "injected executor failure" in log  # the first attempt did fail
    if retried:  # Spark retried the task (spark.task.maxFailures; local[N,F] in local mode) and the write finished
        assert proc.returncode == 0, log[-3000:]
        assert '{"rows": 40}' in out
    else:  # no retries: the job fails and writes nothing
        assert proc.returncode != 0
        assert not (Path(root) / "owners" / "_delta_log").exists()


def test_a_base_model_that_fails_to_train_stops_the_stage_with_its_name(spark, cfg_at):
    from remedi_spark.folds.assign import assign_folds
    from remedi_spark.fusion.meta_features import build_meta_features
    from remedi_spark.io.schemas import DataValidationError
    from remedi_spark.training.oof import train_base_models

    fast = {"num_iterations": 5, "min_data_in_leaf": 1}
    models = [{"name": "good", "family": "lgbm", "backend": "native", "objective": "logloss", "feature_group": None,
               "params": fast},
              {"name": "broken", "family": "lgbm", "backend": "native", "objective": "logloss", "feature_group": None,
               "params": {**fast, "num_leaves": 1}}]
    cfg = cfg_at(base_models={"models": models}, folds={"n_folds": 2})
    store = TableStore(spark, cfg.tables.root)
    users = tuple(range(1, 201))
    raw_world(spark, store, MONTHS, purchases=[("2024-08", u) for u in users[:40]], users=users)
    build_features(spark, cfg, store)
    assign_folds(spark, cfg, store)
    with pytest.raises(BaseModelFailed, match=r"base model 'broken' \(lgbm, native\) failed to train: .*num_leaves"):
        train_base_models(spark, cfg, store)
    with pytest.raises(DataValidationError, match=r"(?s)oof_predictions.*\['broken'\]"):
        build_meta_features(spark, cfg, store)  # never a teacher with a missing column
