"""The shared tiny world: one synthetic population run once through every stage of ``run_pipeline``
(generate → features → folds → train-base → meta-features → fusion → distill → score → lead-list
→ report, with MLflow tracking and the registry), for the whole test session.

Built by the session fixture ``world`` (tests/conftest.py) on the session's tmp directory; under
pytest-xdist the first worker that needs it builds it under a file lock and the others read the
same tables. Tests only read it: a test that writes (reruns a stage, monitors a month, refits with a
patched function) copies what it needs into its own tmp root (:func:`copy_tables`, :func:`copy_world`).

Sized for the assertions that read it: 3,000 owners, 8 months, 2 folds (~40 training positives,
~30 in the evaluation month); three LightGBMs (one through SynapseML, as in conf/models.yaml, one
focal, one on the dealer features) and the tiny driver-trained MLP. One LightGBM worker per fit: on a
few thousand rows a second data-parallel worker only adds the network setup (tests/test_gbdt.py
checks the two-worker fits on its own rows).
"""
from __future__ import annotations

import os
import pickle
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from remedi_spark.config import Config, replace
from tests.tiny import TINY_MLP, lgbm_spec

FAST = {"num_iterations": 40, "learning_rate": 0.1, "min_data_in_leaf": 20}
MODELS = [lgbm_spec("lgbm_logloss", FAST, backend="synapseml"), lgbm_spec("lgbm_focal", FAST, "focal"),
          lgbm_spec("lgbm_dealer", FAST, feature_group="dealer"), TINY_MLP]
# ~40 training positives, halved again by the meta-level cross-fitting: 3 hold-out positives are
# allowed here (10 by default); the tests of meta_models check the default's behaviour
META = {"raw_hidden": [8], "relative_hidden": [16], "output_hidden": [8], "epochs": 15, "batch_size": 256, "lr": 0.01,
        "patience": 15, "min_valid_positives": 3}
STUDENTS = [{"name": "student", "objective": "mse", "target": "teacher", "params": FAST},
            {"name": "hard_label", "objective": "logloss", "target": "label", "params": FAST}]
K = 150
N_USERS, N_FOLDS = 3000, 2


@dataclass(frozen=True)
class World:
    cfg: Config  # the config the pipeline ran with (tables.root = the world's root)
    out: dict  # run_pipeline's summary

    @property
    def root(self) -> str:
        return self.cfg.tables.root


def world_config(base_cfg: Config, root: Path) -> Config:
    return replace(base_cfg, tables={"root": str(root / "t"), "allowed_roots": [str(root / "exports")]},
                   synthetic={"n_users": N_USERS, "chunk_users": 1500}, folds={"n_folds": N_FOLDS},
                   base_models={"models": MODELS, "early_stopping_rounds": 10, "num_workers": 1},
                   fusion={"meta_model": META}, distill={"students": STUDENTS, "timing_rows": 500},
                   lead_list={"k": K, "export_dir": str(root / "exports")}, tracking={"enabled": True},
                   report={"curve_points": 40, "top_features": 10},
                   # 200 bootstrap replicates (1000 by default): the intervals the tests check are still there
                   evaluation={"bootstrap": {"replicates": 200}})


def shared_world(spark, base_cfg: Config, tmp_path_factory) -> World:
    """Build the world once per session (once across xdist workers: the documented FileLock pattern)."""
    from filelock import FileLock

    from remedi_spark.pipeline import run_pipeline

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by every worker of this run
    root = base / "world"
    done = base / "world.pkl"
    cfg = world_config(base_cfg, root)
    with FileLock(str(base / "world.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # an earlier worker's failed attempt
            out = run_pipeline(spark, cfg)
            done.write_bytes(pickle.dumps(out))
    return World(cfg, pickle.loads(done.read_bytes()))


def copy_tables(spark, world: World, root: Path, tables=("features", "folds"), **sections) -> Config:
    """The world's config on ``root`` (tracking off unless ``sections`` say otherwise) holding a copy
    of ``tables`` (partitioned tables keep their partitions)."""
    from remedi_spark.io.schemas import load_schema
    from remedi_spark.io.store import TableStore

    cfg = replace(world.cfg, tables={"root": str(root), "allowed_roots": []},
                  tracking=sections.pop("tracking", {"enabled": False}),
                  lead_list={"export_dir": str(root / "exports"), **sections.pop("lead_list", {})}, **sections)
    src, dst = TableStore(spark, world.root), TableStore(spark, cfg.tables.root)
    for table in tables:
        frame, column = src.read(table), load_schema(table).partition_by
        if column:
            dst.write_partitions(frame, table, sorted(r[0] for r in frame.select(column).distinct().collect()))
        else:
            dst.write_table(frame, table)
    return cfg


def copy_world(world: World, path: Path) -> Config:
    """A full, independent copy of the world under ``path``: every table, model, manifest, export and
    the MLflow store, with the world's absolute paths rewritten to the copy's (so nothing a test
    does to the copy reaches the shared world). Returns the world's config on the copy."""
    src = Path(world.root).parent
    shutil.copytree(src, path)
    old, new = str(src), str(path)
    for file in path.rglob("*"):
        if file.is_file() and file.suffix in (".yaml", ".json", ".txt", ".MLmodel", "") and file.stat().st_size < 5e6:
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if old in text:
                file.write_text(text.replace(old, new), encoding="utf-8")
    for db in path.rglob("mlflow.db"):
        with sqlite3.connect(db) as con:
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for col in con.execute(f"PRAGMA table_info('{table}')").fetchall():
                    if col[2].upper().startswith(("VARCHAR", "TEXT")):
                        con.execute(f'UPDATE "{table}" SET "{col[1]}" = replace("{col[1]}", ?, ?)', (old, new))
    return replace(world.cfg, tables={"root": str(path / "t"), "allowed_roots": [str(path / "exports")]},
                   lead_list={"export_dir": str(path / "exports")})
