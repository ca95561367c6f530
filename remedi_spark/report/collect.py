"""Everything the report shows, read at the Delta versions one pipeline run wrote.

The pipeline's manifest names its stage runs; their manifests give the version of every table
they read and wrote. The report reads each table at the version the pipeline left it
(time travel), so rebuilding a report later shows the same numbers even after newer runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..distill.students import SavedStudent, load_student, student_importance
from ..io.schemas import load_schema
from ..io.store import TableStore
from ..metrics import bootstrap, k_for, lead_metrics

# score columns of the evaluation frame, in the order the report lists them
SCORERS = {"student": "distilled student", "teacher": "teacher (base models + hybrid expert)",
           "best_base": "best base model", "oracle": "oracle (true simulator probability)"}


@dataclass
class ReportData:
    """Inputs of one report (pandas frames are small: held-out owners and result tables)."""

    pipeline: dict[str, Any]
    stages: list[dict[str, Any]]
    versions: dict[str, int]
    evaluation_month: str
    k: int
    fusion_results: pd.DataFrame
    distill_results: pd.DataFrame
    held_out: pd.DataFrame          # user_id, month, y + one column per scorer (held-out owners)
    best_base: str
    importance: pd.DataFrame        # feature, group, gain, share
    evaluation_frame: pd.DataFrame | None = None  # as held_out, every owner of the evaluation month
    warnings: list[str] = field(default_factory=list)
    studies: dict[str, pd.DataFrame] = field(default_factory=dict)  # study table name → its rows (those written)
    monitoring: pd.DataFrame | None = None
    oof: pd.DataFrame | None = None  # OOF matrix (oof_matrix): training owners' OOF rows, one column per model

    @property
    def evaluation_rows(self) -> pd.DataFrame:
        """Every owner of the evaluation month (no model trained on it); without an evaluation month
        (a single labelled month) the held-out owners of the newest month."""
        if self.evaluation_frame is not None:
            return self.evaluation_frame
        return self.held_out[self.held_out["month"] == self.evaluation_month]


STUDY_TABLES = ("kdef_study", "kaml_study", "hm3_study")  # written by the optional *-study stages
PIPELINE_JOBS = ("generate", "features", "folds", "train-base", "meta-features", "fusion", "distill")


def latest_runs(manifests: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A pipeline assembled from separately run stages (as scheduled jobs run them): the newest
    run of each stage job, plus every score, lead-list and promote run since the newest distillation
    (the newest promotion decision is the report's)."""
    newest = {m["job"]: m for m in manifests if m["job"] in PIPELINE_JOBS}
    missing = [j for j in PIPELINE_JOBS if j not in newest and j != "generate"]
    if missing:
        raise FileNotFoundError(f"no pipeline run, and no run yet of the stages {missing}: run them (or the "
                                "pipeline: `make demo` / `python -m remedi_spark pipeline`) first")
    since = newest["distill"]["started_at"]
    scoring = [m for m in manifests if m["job"] in ("score", "lead-list", "promote") and m["started_at"] >= since]
    stages = sorted([*newest.values(), *scoring], key=lambda m: m["started_at"])
    oot = newest["folds"]["info"].get("oot_test_month")
    promotion = [m["info"] for m in stages if m["job"] == "promote"]
    pipeline = {"run_id": f"latest-{stages[-1]['run_id']}", "job": "pipeline", "started_at": stages[0]["started_at"],
                "info": {"months": {"evaluation": oot}, "stages": {m["job"]: m["run_id"] for m in stages},
                         "promotion": promotion[-1] if promotion else None}}
    return pipeline, stages


def resolve_pipeline(store: TableStore, run: str | None, manifests: list[dict[str, Any]] | None = None
                     ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The pipeline manifest for ``run`` and its stage manifests, oldest first. ``run`` is a
    pipeline run id, a stage run id inside one, or ``latest`` (the newest run of every stage, see
    :func:`latest_runs`); by default the newest pipeline run, else ``latest``. ``manifests``: the
    runs table's manifests, when the caller has read them already."""
    manifests = store.manifests() if manifests is None else manifests
    pipelines = [m for m in manifests if m["job"] == "pipeline"]
    if run == "latest" or (run is None and not pipelines):
        return latest_runs(manifests)
    if run is None:
        pipeline = pipelines[-1]
    else:
        match = [m for m in manifests if m["run_id"] == run]
        if not match:
            known = ", ".join(m["run_id"] for m in pipelines[-5:]) or "none"
            raise FileNotFoundError(f"no run {run!r} in {store.path('runs')}; newest pipeline runs: {known}")
        pipeline = match[0]
        if pipeline["job"] != "pipeline":
            parent = pipeline.get("parent")
            if not parent:
                raise ValueError(f"run {run!r} is a {pipeline['job']!r} stage run outside any pipeline; a report "
                                 "needs a pipeline run id")
            pipeline = next(m for m in manifests if m["run_id"] == parent)
    stages = [m for m in manifests if m.get("parent") == pipeline["run_id"] and m["job"] != "report"]
    return pipeline, stages


def table_versions(stages: list[dict[str, Any]]) -> dict[str, int]:
    """Each table at the version the pipeline left it: its last write, else its last read."""
    versions: dict[str, int] = {}
    for m in stages:
        for table, version in m["reads"].items():
            versions.setdefault(table, int(version))
    for m in stages:
        for w in m["writes"]:
            versions[w["table"]] = int(w["version"])
    return versions


def data_version_rows(pipeline: dict[str, Any], stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (stage run, table): the Delta version read and/or written."""
    labels = {run_id: key for key, run_id in pipeline.get("info", {}).get("stages", {}).items()}
    rows = []
    for m in stages:
        written = {w["table"]: w["version"] for w in m["writes"]}
        for table in sorted(set(m["reads"]) | set(written)):
            rows.append({"stage": labels.get(m["run_id"], m["job"]), "run_id": m["run_id"], "table": table,
                         "read_version": m["reads"].get(table), "written_version": written.get(table)})
    return rows


def _pinned(store: TableStore, versions: dict[str, int], table: str) -> DataFrame:
    return store.read(table, version=versions.get(table))


def _scored_frame(store: TableStore, versions: dict[str, int], student: SavedStudent, best_base: str,
                  rows: Column) -> pd.DataFrame:
    """The folds rows matching ``rows`` (held-out owners, or every owner of the evaluation month:
    rows no model trained on) with the label, the student's score (computed here with the saved
    student), the teacher, the best base model and, on synthetic data, the oracle."""
    folds = _pinned(store, versions, "folds").filter(rows).select("user_id", "month")
    features = _pinned(store, versions, "features").filter("label_complete").join(folds, ["user_id", "month"])
    frame = features.select("user_id", "month", "y")
    scored = student.model.predict(student.model.features.encode(features)).withColumnRenamed("p", "student")
    frame = frame.join(scored, ["user_id", "month"], "left")
    teacher = _pinned(store, versions, "teacher_predictions").select("user_id", "month", F.col("p_teacher").alias("teacher"))
    base = _pinned(store, versions, "oof_predictions").filter(F.col("model") == best_base) \
        .select("user_id", "month", F.col("p").alias("best_base"))
    frame = frame.join(teacher, ["user_id", "month"], "left").join(base, ["user_id", "month"], "left")
    if store.exists("oracle"):
        oracle = _pinned(store, versions, "oracle").select("user_id", "month", F.col("p_3m").alias("oracle"))
        frame = frame.join(oracle, ["user_id", "month"], "left")
    return frame.toPandas().sort_values(["month", "user_id"], kind="stable").reset_index(drop=True)


def oof_matrix(store: TableStore, versions: dict[str, int], models: list[str]) -> pd.DataFrame | None:
    """The training owners' out-of-fold rows (``fold >= 0``) of ``meta_features`` at its pinned
    version — the pivot of ``oof_predictions`` with the label that the meta-features stage already
    wrote — as user_id, month, ``y`` and ``p_<model>`` for each of ``models`` the table holds. None
    without a ``meta_features`` table."""
    if not store.exists("meta_features"):
        return None
    table = _pinned(store, versions, "meta_features")
    held = [f"p_{m}" for m in models if f"p_{m}" in table.columns]
    return table.filter(F.col("fold") >= 0).select("user_id", "month", "y", *held).toPandas()


def monthly_metrics(held_out: pd.DataFrame, k_fraction: float, bootstrap_settings: Any = None) -> pd.DataFrame:
    """Per month and scorer: P@K (K = ``k_fraction`` of the month's held-out owners), Business
    Recall@K, Lift, AUC and LogLoss; with ``bootstrap_settings`` (``evaluation.bootstrap``) each
    with its paired-bootstrap interval over the month's owners (``<metric>_ci_low/high``)."""
    rows = []
    for month, part in held_out.groupby("month", sort=True):
        y = part["y"].to_numpy()
        scorers = {s: part[s].to_numpy(dtype=float) for s in SCORERS if s in part}
        scorers = {s: p for s, p in scorers.items() if not np.isnan(p).any()}
        intervals = {}
        if bootstrap_settings is not None and scorers and 0 < y.sum() < len(y):
            b = bootstrap_settings
            intervals = bootstrap(y, scorers, part["user_id"].to_numpy(), k_fraction, replicates=b.replicates,
                                  seed=b.seed, level=b.level)["intervals"]
        for scorer, p in scorers.items():
            row = {"month": month, "scorer": scorer, **lead_metrics(y, p, k_for(len(part), k_fraction))}
            for metric, iv in intervals.get(scorer, {}).items():
                row.update({f"{metric}_ci_low": iv.low, f"{metric}_ci_high": iv.high})
            rows.append(row)
    return pd.DataFrame(rows)


def in_key_order(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """``frame`` (rows of ``table``) sorted by the table's keys, a column with allowed values in the
    schema's order of them (a study's variants as the study lists them), not as Delta returns rows."""
    schema = load_schema(table)
    keys = [c for c in schema.keys if c in frame.columns]
    order = {c.name: {v: i for i, v in enumerate(c.allowed)} for c in schema.columns if c.allowed and c.name in keys}

    def rank(column: pd.Series) -> pd.Series:
        return column.map(order[column.name]) if column.name in order else column

    return frame.sort_values(keys, key=rank, kind="stable").reset_index(drop=True) if keys else frame


def collect(spark: SparkSession, cfg: Config, store: TableStore, run: str | None) -> ReportData:
    """Read everything one pipeline run produced (see the module docstring)."""
    manifests = store.manifests()
    pipeline, stages = resolve_pipeline(store, run, manifests)
    versions = table_versions(stages)
    fusion = _pinned(store, versions, "fusion_results").toPandas()
    distill = _pinned(store, versions, "distill_results").toPandas()
    # the best base model is chosen on the training owners' OOF rows, never on the held-out ones
    base = fusion[(fusion["section"] == "base") & (fusion["evaluation"] == "meta_oof")]
    best_base = str(base.sort_values(["logloss", "precision_at_k"], ascending=[True, False], kind="stable")
                    .iloc[0]["name"])
    warnings: list[str] = []
    student = load_student(spark, cfg, store)
    if not any(m["run_id"] == student.run_id for m in manifests):
        warnings.append(f"the student at {student.path} comes from run {student.run_id}, which is not in this "
                        "table root's runs")
    held_out = _scored_frame(store, versions, student, best_base, F.col("split") == "test")
    months = pipeline.get("info", {}).get("months", {})
    evaluation_month = months.get("evaluation") or str(held_out["month"].max())
    evaluation_frame = (_scored_frame(store, versions, student, best_base, F.col("oot_split") == "test")
                        if months.get("evaluation") else None)
    n_eval = len(evaluation_frame) if evaluation_frame is not None else int((held_out["month"] == evaluation_month).sum())
    studies = {t: in_key_order(store.read(t).toPandas(), t) for t in STUDY_TABLES if store.exists(t)}
    oof = oof_matrix(store, versions, [s.name for s in cfg.base_models.models])
    monitoring = None
    if store.exists("monitoring"):  # monitoring runs after the pipeline: its newest version
        versions["monitoring"] = store.version("monitoring")
        monitoring = store.read("monitoring", version=versions["monitoring"]).toPandas()
    return ReportData(pipeline=pipeline, stages=stages, versions=versions, evaluation_month=evaluation_month,
                      k=k_for(n_eval, cfg.base_models.metric_k_fraction), fusion_results=fusion,
                      distill_results=distill, held_out=held_out, best_base=best_base,
                      evaluation_frame=evaluation_frame,
                      importance=student_importance(student.model, cfg.base_models.feature_groups,
                                                                cfg.base_models.channel_groups), warnings=warnings, studies=studies,
                      monitoring=monitoring, oof=oof)
