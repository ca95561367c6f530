"""Stage runner: each stage is ``(spark, cfg, store, **options) -> summary``; this module wraps
one in a run manifest (run id, conf, Delta versions read and written), logs it to MLflow, and
chains stages. A pipeline run gets a manifest of its own (job ``pipeline``) that names every
stage run; each stage's manifest names the pipeline run as its ``parent``."""
from __future__ import annotations

import ctypes
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

from pyspark.sql import SparkSession

from . import progress
from .backtest.stage import run_backtest
from .config import Config, replace
from .data.generate import generate_synthetic
from .features.build import build_features
from .folds.assign import assign_folds
from .fusion.meta_features import build_meta_features
from .fusion.train import train_fusion
from .distill.students import train_students
from .io.store import RunManifest, TableStore
from .leads.lead_list import build_lead_list, evaluate_lead_list
from .monitoring.monitor import monitor_month
from .promotion import run_promotion
from .report.build import build_report, log_report
from .scoring.score import score_month
from .training.hm3_study import run_hm3_study
from .training.kaml_study import run_kaml_study
from .training.kdef_study import run_kdef_study
from .distill.students import log_student
from .tracking import PIPELINE_TAG, STAGE_TAG, Tracker
from .training.oof import train_base_models
from .tuning.stage import run_tuning

StageFn = Callable[..., dict[str, Any]]


def return_freed_memory() -> None:
    """Hand the driver's freed memory back to the operating system. A stage that collects to the
    driver (fusion: the meta-features of every labelled owner-month, GiBs at 800k owners) frees its
    frames when it returns, but Arrow's jemalloc pool and glibc's heap keep the pages; in a pipeline
    the next stage's Python workers would start on top of them (make paper: the driver Python still
    held 4.2 GiB after fusion when distill started its LightGBM workers; 21.7 GiB in all)."""
    gc.collect()
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except (ImportError, NotImplementedError):
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


STAGES: dict[str, StageFn] = {
    "generate": generate_synthetic,
    "features": build_features,
    "folds": assign_folds,
    "train-base": train_base_models,
    "tune": run_tuning,
    "kdef-study": run_kdef_study,
    "kaml-study": run_kaml_study,
    "hm3-study": run_hm3_study,
    "meta-features": build_meta_features,
    "fusion": train_fusion,
    "distill": train_students,
    "score": score_month,
    "lead-list": build_lead_list,
    "promote": run_promotion,
    "report": build_report,
    "monitor": monitor_month,
    "backtest": run_backtest,
}

# Logged to MLflow after the stage (models and files, beyond the summary's numbers).
AFTER_STAGE: dict[str, Callable[[SparkSession, Config, TableStore, Tracker, dict[str, Any]], None]] = {
    "distill": log_student,
    "report": log_report,
}


def run_stage(spark: SparkSession, cfg: Config, stage: str, pipeline_run_id: str = "", label: str | None = None,
              progress_bar: progress.Progress | None = None, **options: Any) -> dict[str, Any]:
    """Run one stage with its own run manifest and log it to MLflow (into the pipeline's MLflow
    run when ``pipeline_run_id`` is given, under ``label``); returns its summary plus ``run_id``.
    Console: a line when it starts, and when it is done a line of ``progress_bar`` (the pipeline's
    stages) or, for a stage run on its own, a line with its time."""
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
    store = TableStore(spark, cfg.tables.root, RunManifest(stage, cfg.to_dict(), parent=pipeline_run_id))
    tracker = Tracker(cfg, store.root)
    started = time.perf_counter()
    progress.note(f"{label or stage}: started ({store.run.run_id})")
    with progress.scope(), tracker.run(store.run.run_id, {STAGE_TAG: store.run.run_id, "remedi.job": stage}):
        summary = STAGES[stage](spark, cfg, store, **options)
        store.run.info = summary
        summary["run_id"] = store.save_manifest()
        tracker.log_stage(label or stage, summary, store.run.to_dict())
        if stage in AFTER_STAGE:
            AFTER_STAGE[stage](spark, cfg, store, tracker, summary)
    return_freed_memory()
    took = progress.format_seconds(time.perf_counter() - started)
    if progress_bar is not None:
        progress_bar.advance(f"{label or stage} done in {took}")
    else:
        progress.note(f"{label or stage}: done in {took}")
    return summary


def foundation_stages(cfg: Config) -> tuple[str, ...]:
    """generate → features → folds; a bring-your-own features table (``features.source: custom``)
    needs no synthetic world, so ``generate`` is left out."""
    return ("features", "folds") if cfg.features.source == "custom" else ("generate", "features", "folds")


def run_foundation(spark: SparkSession, cfg: Config, pipeline_run_id: str = "",
                   progress_bar: progress.Progress | None = None) -> dict[str, dict[str, Any]]:
    """:func:`foundation_stages`, each as its own run (a line of ``progress_bar`` per stage, else a
    bar of their own). Returns their summaries."""
    stages = foundation_stages(cfg)
    with progress.scope():
        bar = progress_bar or progress.track("foundation", len(stages), "stage")
        return {stage: run_stage(spark, cfg, stage, pipeline_run_id, progress_bar=bar) for stage in stages}


def pipeline_stage_count(cfg: Config, scored_months: int = 2) -> int:
    """How many stage runs :func:`run_pipeline` makes: foundation, the four training stages, score and
    lead list per scored month (the evaluation month and the newest, when they differ), promote when
    students are registered, the report. Before folds ran the scored months are not known: 2 is assumed."""
    registers = cfg.tracking.enabled and bool(cfg.tracking.registered_model)
    return len(foundation_stages(cfg)) + 4 + 2 * scored_months + int(registers) + 1


def run_pipeline(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Every stage in order, each its own run: foundation → base models → fusion → distillation,
    then scoring and a lead list for the out-of-time month (evaluated against its labels and, on the
    synthetic world, the oracle) and for the newest month (the list sales gets), the champion/challenger
    decision on the registered student (stage ``promote``), then the report. The pipeline's own manifest
    (job ``pipeline``) names every stage run; everything logs into one MLflow run. The pipeline scores
    with the student it distills, never ``scoring.model_uri`` (that is for the scoring job)."""
    if cfg.scoring.model_uri:
        print(f"[remedi] pipeline: scoring.model_uri ({cfg.scoring.model_uri}) is left aside: the pipeline "
              "scores and evaluates the student it distills", file=sys.stderr, flush=True)
        cfg = replace(cfg, scoring={"model_uri": None})
    run = RunManifest("pipeline", cfg.to_dict())
    tracker = Tracker(cfg, TableStore(spark, cfg.tables.root).root)
    with progress.scope(), tracker.run(run.run_id, {PIPELINE_TAG: run.run_id, "remedi.job": "pipeline"}):
        bar = progress.track("pipeline", pipeline_stage_count(cfg), "stage")
        out: dict[str, Any] = dict(run_foundation(spark, cfg, run.run_id, bar))
        for stage in ("train-base", "meta-features", "fusion", "distill"):
            out[stage] = run_stage(spark, cfg, stage, run.run_id, progress_bar=bar)
        oot = out["folds"]["oot_test_month"]  # None: a single labelled month, no evaluation month
        months = {"evaluation": oot} if oot else {}
        feature_months = sorted(out["features"]["per_month"])
        if feature_months[-1] != oot:
            months["current"] = feature_months[-1]
        bar.total = pipeline_stage_count(cfg, len(months))  # the scored months are known now
        for role, month in months.items():
            out[f"score[{role}]"] = run_stage(spark, cfg, "score", run.run_id, f"score.{role}", bar, month=month)
            out[f"lead-list[{role}]"] = run_stage(spark, cfg, "lead-list", run.run_id, f"lead-list.{role}", bar,
                                                  month=month)
        store = TableStore(spark, cfg.tables.root, run)
        if oot:
            out["evaluation"] = evaluate_lead_list(spark, cfg, store, oot)
            out["evaluation"]["observed_through"] = out["features"]["observed_through"]
            tracker.log_stage("evaluation", out["evaluation"], run.to_dict())
        else:
            print("[remedi] evaluation: a single labelled month, no evaluation month: models are evaluated on "
                  "held-out owners only", file=sys.stderr, flush=True)
        registered = out["distill"].get("registered")
        if registered:  # tracking on and tracking.registered_model set: champion or not
            out["promote"] = run_stage(spark, cfg, "promote", run.run_id, progress_bar=bar, month=oot,
                                       version=registered["version"])
        run.info = {"stages": {key: summary["run_id"] for key, summary in out.items() if "run_id" in summary},
                    "months": months, "evaluation": out.get("evaluation"), "promotion": out.get("promote")}
        out["pipeline_run_id"] = store.save_manifest()
        bar.total = bar.done + 1  # the report is the last stage (promote may not have run)
        out["report"] = run_stage(spark, cfg, "report", run.run_id, progress_bar=bar, run=run.run_id)
    return out
