"""Stage ``tune``: a study per chosen model, ``tuning_results``, the overlay.

Models: base models by name (LightGBM on either backend: a SynapseML model's trials are fitted by the
LightGBM library itself, the same learner and parameter names SynapseML passes on, so its trials can
run as parallel Spark tasks instead of one SynapseML job each), students by their
``distill.students`` name (their target is the teacher's probability or the label, as in distill),
and neural models that train on the label alone (in-process on sampled rows, :mod:`.neural`; KAML
and HM3, which need horizon or auxiliary labels, are refused with a ConfigError before any data is
read).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from ..config import NEURAL_FAMILIES, Config, ConfigError, ModelSpec, _merge
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..models.base import LABEL
from ..models.gbdt.native import NativeLightGBM
from ..models.registry import aux_labels, needs_horizons
from ..training.oof import select_models
from .data import TARGET, TrialData, training_rows
from .lgbm import FoldJob, FoldRunner
from .neural import NeuralJob, NeuralRunner, neural_rows
from .output import result_rows, write_overlay
from .space import as_model_params, ranges
from .study import best_trial, run_study


@dataclasses.dataclass(frozen=True)
class Target:
    """A model to search: its spec, its tuning.spaces family, and for a student its fit target."""

    spec: ModelSpec
    family: str
    student: bool = False
    soft: bool = False  # fitted on the teacher's probability


def choose(cfg: Config, names: list[str] | None) -> list[Target]:
    """The models ``tune`` searches: ``names`` (``--models``), else ``tuning.models``, else every
    LightGBM base model, every neural model whose family has a space in ``tuning.spaces`` (and that
    trains on the label alone) and ``distill.student``. A ConfigError (before Spark reads anything) for an
    unknown name, a name that is both a base model and a student, a family without a search space,
    or a neural model."""
    from ..distill.students import TARGETS, _spec

    students = {item["name"]: item for item in cfg.distill.students}
    base = {s.name: s for s in cfg.base_models.models}
    if names is None:
        searchable = [s.name for s in cfg.base_models.models if s.family == "lgbm" or (
            s.family in cfg.tuning.spaces and not needs_horizons(s) and not aux_labels(s))]
        names = cfg.tuning.models or [*searchable, cfg.distill.student]
    both = sorted(set(names) & set(students) & set(base))
    if both:
        raise ConfigError(f"tune: {both} name both a base model and a student; rename one")
    unknown = sorted(set(names) - set(students) - set(base))
    if unknown:
        raise ConfigError(f"tune: unknown models {unknown}; base models: {sorted(base)}, students: {sorted(students)}")
    select_models(cfg, [n for n in names if n in base])  # duplicate names, feature groups
    out = []
    for name in names:
        if name in students:
            item = students[name]
            target = Target(_spec(item), "student", student=True, soft=TARGETS[item["target"]] != LABEL)
        else:
            spec = base[name]
            if spec.family in NEURAL_FAMILIES and (needs_horizons(spec) or aux_labels(spec)):
                raise ConfigError(f"tune: {name!r} ({spec.family}) trains on horizon or auxiliary labels; such "
                                  f"models are not searched yet")
            target = Target(spec, spec.family)
        ranges(cfg, target.family)  # the family has a valid space
        out.append(target)
    return out


def _job_factory(cfg: Config, target: Target, features: Any, data: TrialData):
    """``make_job(trial, fold, values)``: the fold job of a trial, its params built by
    :meth:`NativeLightGBM.training_setup` from the rows it fits on."""
    stats = {}
    for k in data.folds():
        fit = (data.fold != k) & ~data.early_stop
        stats[k] = (int(fit.sum()), float(data.target[fit].sum()))

    def make_job(trial: int, fold: int, values: dict[str, Any]) -> FoldJob:
        spec = dataclasses.replace(target.spec, params={**target.spec.params,
                                                        **as_model_params(target.family, values, target.spec.params)})
        model = NativeLightGBM(spec, cfg.base_models, features)
        params, feval, rounds, init = model.training_setup(*stats[fold])
        return FoldJob(trial, fold, params, feval, rounds, init, regression=spec.objective == "mse")

    return make_job


def tune_model(spark: SparkSession, cfg: Config, store: TableStore, target: Target, run_id: str
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One model's study: its ``tuning_results`` rows and its summary (best params and metric)."""
    t = cfg.tuning
    started = time.perf_counter()
    neural = target.family in NEURAL_FAMILIES
    k_fraction = cfg.base_models.metric_k_fraction
    if neural:
        data, features = neural_rows(store, cfg, target.spec, t.inner_folds)
        runner, parallelism = NeuralRunner(data, t.metric, k_fraction), "driver"
        params = target.spec.params

        def make_job(trial: int, fold: int, values: dict[str, Any]) -> NeuralJob:
            return NeuralJob(trial, fold, target.family, _merge(params, as_model_params(target.family, values, params)))
        width = len(features.columns)
    else:
        data, features = training_rows(store, cfg, target.spec, TARGET if target.soft else LABEL)
        runner, parallelism = FoldRunner(spark, data, t.parallelism, cfg.base_models.early_stopping_rounds, t.metric,
                                         k_fraction), t.parallelism
        make_job, width = _job_factory(cfg, target, features, data), len(data.columns)
    folds = data.folds()
    inner = folds[: t.inner_folds] if t.inner_folds else folds
    print(f"[remedi] tune {target.spec.name}: {data.rows:,} training rows, {width} features, inner folds "
          f"{inner} of {folds}, {t.max_trials} trials, parallelism {parallelism}", file=sys.stderr, flush=True)
    level = cfg.evaluation.bootstrap.level
    try:
        if len(folds) < 2:
            raise ConfigError(f"tune {target.spec.name}: the training rows hold {len(folds)} fold(s); inner "
                              f"cross-validation needs at least 2")
        study, records = run_study(target.spec.name, ranges(cfg, target.family), t, inner, make_job, runner.run,
                                   runner.slots, level)
    finally:
        if hasattr(runner, "close"):
            runner.close()
    best = best_trial(records, t.metric)
    rows = result_rows(target.spec.name, target.family, records, t.metric, level, best, parallelism)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "family": target.family, "student": target.student, "rows": data.rows, "inner_folds": inner,
        "trials": len(records), "complete": sum(r.state == "complete" for r in records),
        "pruned": sum(r.state == "pruned" for r in records), "failed": sum(r.state == "fail" for r in records),
        "seconds": round(seconds, 1), "trials_per_minute": round(60 * len(records) / seconds, 2) if seconds else None,
        "metric": t.metric, "best_trial": best.trial if best else None, "best_value": best.value if best else None,
        "best_params": as_model_params(target.family, best.params, target.spec.params) if best else None,
        "importance": importance(study) if best else {},
    }
    if best is not None:
        low, high = next((r["value_ci_low"], r["value_ci_high"]) for r in rows if r["best"])
        summary.update(best_ci_low=low, best_ci_high=high)
    return rows, summary


def importance(study: Any) -> dict[str, float]:
    """fANOVA parameter importance (seeded) over the complete trials; empty with fewer than two or
    when every complete trial has the same metric."""
    import optuna
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if len(done) < 2 or len({t.value for t in done}) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def run_tuning(spark: SparkSession, cfg: Config, store: TableStore, models: list[str] | None = None,
               overlay: str | None = None, profile: str | None = None) -> dict[str, Any]:
    """Stage ``tune``: search every chosen model (:func:`choose`), replace their partitions of
    ``tuning_results``, and write the best params to ``overlay`` (extending ``profile``; no overlay
    when either is None)."""
    from ..tracking import Tracker

    targets = choose(cfg, models)
    tracker = Tracker(cfg, store.root)  # the stage's MLflow run is open (run_stage): trials become child runs
    run_id = store.run.run_id if store.run else "adhoc"
    out: dict[str, Any] = {}
    tuned: dict[str, dict] = {}
    tuned_students: dict[str, dict] = {}
    for target in targets:
        rows, summary = tune_model(spark, cfg, store, target, run_id)
        table = pd.DataFrame(rows).assign(run_id=run_id)
        store.write_partitions(frame_from_pandas(spark, table, "tuning_results"), "tuning_results",
                               [target.spec.name])
        summary["mlflow_trials"] = tracker.log_trials(target.spec.name, rows)
        out[target.spec.name] = summary
        if summary["best_params"] is not None:
            (tuned_students if target.student else tuned)[target.spec.name] = summary["best_params"]
    written = None
    if overlay and profile and (tuned or tuned_students):
        written = str(write_overlay(overlay, profile, tuned, tuned_students, run_id))
    return {"models": out, "overlay": written, "metric": cfg.tuning.metric, "parallelism": cfg.tuning.parallelism,
            "profile": str(Path(profile)) if profile else None}


def format_tuning(summary: dict[str, Any]) -> str:
    """One line per searched model: trials (complete / pruned / failed), the best metric with its
    interval over the inner folds, trials per minute, the best params and the overlay."""
    lines = [f"tuning ({summary['metric']}, inner folds of the training owners; parallelism {summary['parallelism']}):"]
    for name, s in summary["models"].items():
        best = "no complete trial"
        if s["best_value"] is not None:
            ci = (f" [{s['best_ci_low']:.5f}, {s['best_ci_high']:.5f}]" if s.get("best_ci_low") is not None else "")
            best = f"best {s['best_value']:.5f}{ci} (trial {s['best_trial']}): {s['best_params']}"
        lines.append(f"  {name:14} {s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned, "
                     f"{s['failed']} failed) in {s['seconds']:.0f} s = {s['trials_per_minute']} / min; {best}")
        if s.get("importance"):
            lines.append("    importance: " + ", ".join(f"{k} {v:.2f}" for k, v in s["importance"].items()))
    lines.append(f"overlay: {summary['overlay']}" if summary["overlay"] else "overlay: none written")
    return "\n".join(lines)
