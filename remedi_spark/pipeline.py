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
from .distill.students import train_students
from .io.store import RunManifest, TableStore
from .leads.lead_list import build_lead_list, evaluate_lead_list
from .scoring.score import score_month
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
    "distill": train_students,
    "score": score_month,
    "lead-list": build_lead_list,
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


def run_pipeline(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Every stage in order, each its own run: foundation → base models → fusion → distillation,
    then scoring and a lead list for the out-of-time month (evaluated against its labels and the
    oracle) and for the newest month (the list sales gets)."""
    out: dict[str, Any] = dict(run_foundation(spark, cfg))
    for stage in ("train-base", "meta-features", "fusion", "distill"):
        out[stage] = run_stage(spark, cfg, stage)
    oot = out["folds"]["oot_test_month"]
    newest = out["features"]["observed_through"]
    months = {"evaluation": oot}
    feature_months = sorted(out["features"]["per_month"])
    if feature_months[-1] != oot:
        months["current"] = feature_months[-1]
    for role, month in months.items():
        out[f"score[{role}]"] = run_stage(spark, cfg, "score", month=month)
        out[f"lead-list[{role}]"] = run_stage(spark, cfg, "lead-list", month=month)
    out["evaluation"] = evaluate_lead_list(spark, cfg, TableStore(spark, cfg.tables.root), oot)
    out["evaluation"]["observed_through"] = newest
    return out
