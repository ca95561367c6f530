"""Stage runner: each stage is ``(spark, cfg, store, **options) -> summary``; this module wraps
one in a run manifest (run id, conf, Delta versions read and written) and chains stages."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark.sql import SparkSession

from .config import Config
from .data.generate import generate_synthetic
from .features.build import build_features
from .folds.assign import assign_folds
from .fusion.meta_features import build_meta_features
from .fusion.train import train_fusion
from .io.store import RunManifest, TableStore
from .training.kdef_study import run_kdef_study
from .training.oof import train_base_models

StageFn = Callable[..., dict[str, Any]]

STAGES: dict[str, StageFn] = {
    "generate": generate_synthetic,
    "features": build_features,
    "folds": assign_folds,
    "train-base": train_base_models,
    "kdef-study": run_kdef_study,
    "meta-features": build_meta_features,
    "fusion": train_fusion,
}


def run_stage(spark: SparkSession, cfg: Config, stage: str, **options: Any) -> dict[str, Any]:
    """Run one stage with its own run manifest; returns its summary plus ``run_id``."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
    store = TableStore(spark, cfg.tables.root, RunManifest(stage, cfg.to_dict()))
    summary = STAGES[stage](spark, cfg, store, **options)
    store.run.info = summary
    summary["run_id"] = store.save_manifest()
    return summary


def run_foundation(spark: SparkSession, cfg: Config) -> dict[str, dict[str, Any]]:
    """generate → features → folds, each as its own run. Returns the three summaries."""
    return {stage: run_stage(spark, cfg, stage) for stage in ("generate", "features", "folds")}
