"""Distillation (REMEDI §3.5, Table 4): the teacher's probabilities → one LightGBM student.

The teacher (base models + hybrid-expert) is too slow to run on every owner each month, so a
single LightGBM is trained on the original features to reproduce its probabilities. Every
student variant from ``distill.students`` is trained on the training owners' rows outside the
evaluation month (with the same owner-grouped early-stopping share as the base models) and
compared, in two evaluations, on the held-out owners (``user_split``) and on every owner of the
evaluation month (``out_of_time``): against the true labels (P@K, Business Recall@K, Lift, AUC,
LogLoss, each with a paired-bootstrap interval over owners) and against the teacher (MSE,
Pearson and Spearman correlation); ``kind = difference`` rows hold student − teacher with its
interval. The teacher's own row and the inference time per 1,000 owners of teacher and student
complete the table (``distill_results``). The student named ``distill.student`` is saved under
``<root>/models/student/`` for the scoring job.

Targets: ``teacher`` = the teacher's probability (``mse``: LightGBM regressor, the paper's
student; ``xentropy``: cross-entropy to the soft target), ``label`` = the 0/1 label (the
hard-label ablation).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, ConfigError, ModelSpec
from ..io import files
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..folds.assign import evaluation_month
from ..metrics import BOOTSTRAP_METRICS, bootstrap, k_for, lead_metrics
from ..models.base import (KEYS, LABEL, BaseModel, FeatureSpec, channel_of, load_model, model_roots,
                           saved_model_dir)
from ..models.registry import build_model
from ..training.oof import ES, EVALUATION, training_frame

METRICS = BOOTSTRAP_METRICS
TARGETS = {"teacher": "p_teacher", "label": LABEL}


def student_path(store: TableStore) -> str:
    return saved_model_dir(store.root, "student")


def scoring_model_dir(cfg: Config, store: TableStore) -> str:
    """The student scoring uses: ``scoring.model_dir``, else the one distillation saved here."""
    return cfg.scoring.model_dir or student_path(store)


def _spec(item: dict[str, Any]) -> ModelSpec:
    unknown = sorted(set(item) - {"name", "objective", "target", "params"})
    if unknown:
        raise ConfigError(f"distill.students: unknown keys {unknown} in {item}")
    if item.get("target") not in TARGETS:
        raise ConfigError(f"distill.students[{item.get('name')}]: target must be one of {sorted(TARGETS)}")
    return ModelSpec(name=item["name"], family="lgbm", backend="native", objective=item["objective"],
                     feature_group=None, params=dict(item.get("params") or {}))


def seconds_per_1000(frame: DataFrame, rows: int) -> float:
    """Wall seconds to compute every row of ``frame`` (a `noop` write), per 1,000 rows."""
    start = time.perf_counter()
    frame.write.format("noop").mode("overwrite").save()
    return (time.perf_counter() - start) / rows * 1000


def _row(name: str, kind: str, scored: pd.DataFrame, p_col: str, k_fraction: float) -> dict[str, Any]:
    y, p, t = scored[LABEL].to_numpy(), scored[p_col].to_numpy(), scored["p_teacher"].to_numpy()
    m = lead_metrics(y, p, k_for(len(scored), k_fraction))
    return {"name": name, "kind": kind, "rows": len(scored), "k": int(m["k"]), **{k: float(m[k]) for k in METRICS},
            "mse_vs_teacher": float(np.mean((p - t) ** 2)), "corr_vs_teacher": float(np.corrcoef(p, t)[0, 1]),
            "rank_corr_vs_teacher": float(pd.Series(p).corr(pd.Series(t), method="spearman"))}


def _with_intervals(rows: list[dict[str, Any]], scored: pd.DataFrame, evaluation: str, cfg: Config
                    ) -> list[dict[str, Any]]:
    """``rows`` (one per ranker, scored on ``scored``'s rows: columns ``user_id``, ``y``, ``p_<name>``)
    with paired-bootstrap intervals over owners, plus one ``difference`` row per student: student −
    teacher."""
    b = cfg.evaluation.bootstrap
    names = [r["name"] for r in rows]
    students = [n for n in names if n != "teacher"]
    boot = bootstrap(scored[LABEL].to_numpy(), {n: scored[f"p_{n}"].to_numpy() for n in names},
                     scored["user_id"].to_numpy(), cfg.base_models.metric_k_fraction, replicates=b.replicates,
                     seed=b.seed, level=b.level, pairs=[(s, "teacher") for s in students])
    out = []
    for r in rows:
        ivs = boot["intervals"][r["name"]]
        out.append({**r, "evaluation": evaluation, "ci_level": b.level,
                    **{f"{m}_ci_{end}": getattr(ivs[m], end) for m in METRICS for end in ("low", "high")}})
    for s in students:
        ivs = boot["differences"][(s, "teacher")]
        out.append({"name": f"{s} - teacher", "kind": "difference", "evaluation": evaluation, "rows": len(scored),
                    "k": out[0]["k"], "ci_level": b.level,
                    **{m: ivs[m].estimate for m in METRICS},
                    **{f"{m}_ci_{end}": getattr(ivs[m], end) for m in METRICS for end in ("low", "high")}})
    return out


def train_students(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``distill``: every configured student, the ``distill_results`` table, the saved student."""
    dcfg = cfg.distill
    specs = {item["name"]: (_spec(item), TARGETS[item["target"]]) for item in dcfg.students}
    if dcfg.student not in specs:
        raise ConfigError(f"distill.student: {dcfg.student!r} is not one of distill.students {sorted(specs)}")
    if "teacher" in specs:
        raise ConfigError("distill.students: 'teacher' names the teacher's own row; call the student something else")
    eval_month = evaluation_month(store.read("folds"))
    teacher = store.read("teacher_predictions").select(*KEYS, "p_teacher")
    data = training_frame(store, cfg).join(teacher, list(KEYS))
    features = FeatureSpec.from_frame(data.filter(F.col("split") == "train").drop("fold", "split", ES, "p_teacher"))
    encoded = features.encode(data, extra=(LABEL, "p_teacher", "split", ES)).persist(StorageLevel.MEMORY_AND_DISK)
    # fit and early stopping: training owners outside the evaluation month (split = train)
    train = encoded.filter(F.col("split") == "train")
    # scored: the held-out owners and every owner of the evaluation month
    test = encoded.filter(F.col("split").isin("test", EVALUATION))
    truth = test.select(*KEYS, LABEL, "p_teacher", "split").toPandas().sort_values(list(KEYS), ignore_index=True)
    k_fraction = cfg.base_models.metric_k_fraction
    fitted: dict[str, dict[str, Any]] = {}
    saved: BaseModel | None = None
    try:
        for name, (spec, target) in specs.items():
            frame = train.withColumn(LABEL, F.col(target).cast("double"))
            start = time.perf_counter()
            model = build_model(spec, cfg.base_models, features).fit(frame.filter(~F.col(ES)), frame.filter(F.col(ES)))
            seconds = time.perf_counter() - start
            p = model.predict(test).toPandas().sort_values(list(KEYS), ignore_index=True)
            truth[f"p_{name}"] = p["p"].to_numpy()
            fitted[name] = {"train_seconds": round(seconds, 2), "best_iteration": int(model.info.get("best_iteration", 0))}
            if name == dcfg.student:
                saved = model
        assert saved is not None
        saved.save(spark, student_path(store), extra={"run_id": store.run.run_id if store.run else None,
                                                      "data_versions": dict(store.run.reads) if store.run else {},
                                                      "evaluation_month": eval_month})
        timing = (_inference_times(spark, cfg, store, saved, data.filter(F.col("split") == "test"), dcfg.timing_rows)
                  if dcfg.timing_rows > 0 else {})
    finally:
        encoded.unpersist()
    evaluations = {"user_split": (truth["split"] == "test").to_numpy()}
    if eval_month is not None:
        evaluations["out_of_time"] = (truth["month"] == eval_month).to_numpy()
    rows: list[dict[str, Any]] = []
    for evaluation, mask in evaluations.items():
        part = truth[mask]
        plain = [_row("teacher", "teacher", part, "p_teacher", k_fraction)]
        plain += [{**_row(n, "student", part, f"p_{n}", k_fraction), **fitted[n]} for n in specs]
        rows += _with_intervals(plain, part, evaluation, cfg)
    for r in rows:
        r["seconds_per_1000"] = timing.get("teacher") if r["kind"] == "teacher" else (
            timing.get("student") if r["name"] == dcfg.student else None)
    run_id = store.run.run_id if store.run else "adhoc"
    table = pd.DataFrame(rows).assign(run_id=run_id)
    store.write_table(frame_from_pandas(spark, table, "distill_results"), "distill_results")
    return {"student": dcfg.student, "inference": timing, "evaluation_month": eval_month,
            "results": table.drop(columns="run_id").round(5).to_dict("records")}


def _inference_times(spark: SparkSession, cfg: Config, store: TableStore, student: BaseModel, rows: DataFrame,
                     n: int) -> dict[str, float]:
    """Seconds per 1,000 owners: the teacher (every base model + head) vs the student, same rows."""
    from ..fusion.teacher import teacher_scores

    sample = rows.drop("fold", "split", ES, "p_teacher", LABEL).limit(n).localCheckpoint()
    count = sample.count()
    teacher = seconds_per_1000(teacher_scores(spark, cfg, store, sample), count)
    student_s = seconds_per_1000(student.predict(student.features.encode(sample)), count)
    return {"rows": count, "teacher": round(teacher, 4), "student": round(student_s, 4),
            "speedup": round(teacher / student_s, 1)}


STUDENT_PYFUNC = str(Path(__file__).with_name("student_pyfunc.py"))
# what serving the pyfunc student needs (pinned as in pyproject.toml where pinned there)
PYFUNC_REQUIREMENTS = ["lightgbm==4.6.0", "numpy>=1.26,<2", "pandas>=2.2,<3", "mlflow-skinny==3.17.2"]
CHALLENGER, CHAMPION = "challenger", "champion"


def feature_sample(student: BaseModel, features: DataFrame, rows: int = 200) -> pd.DataFrame:
    """``rows`` feature rows as the pyfunc student takes them: its numeric columns as float64 (a missing
    value is NaN, as Spark's cast to double gives), its categorical columns as text."""
    frame = features.select(*student.features.columns).limit(rows).toPandas()
    numeric = student.features.numeric
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce").astype("float64")
    return frame


def log_student(spark: SparkSession, cfg: Config, store: TableStore, tracker: Any, summary: dict[str, Any]) -> None:
    """Log the saved student to MLflow and register it (:func:`register_student`; called by the stage
    runner after ``distill``); the registered version goes into ``summary['registered']``."""
    if not tracker.enabled:
        return
    registered = register_student(spark, cfg, tracker, student_path(store), store.read("features"),
                                  f"distilled student {summary['student']}: feature rows -> score (as the scoring job)")
    if registered:
        summary["registered"] = registered


def register_student(spark: SparkSession, cfg: Config, tracker: Any, path: str, features: DataFrame,
                     description: str) -> dict[str, Any] | None:
    """Log the student saved in ``path`` as a pyfunc model (``student_pyfunc.py`` around the folder) with
    its signature (feature rows → score) and five rows of ``features`` as its input example, into the
    active MLflow run; then register it as a new version of ``tracking.registered_model`` with alias
    ``challenger``. Returns the registered version (None: not registered)."""
    from ..distill.student_pyfunc import student_score

    student = load_model(spark, path, cfg.base_models, [path])
    if not hasattr(student, "booster"):
        return None  # only the native backend keeps a plain booster to wrap
    sample = feature_sample(student, features)
    sidecar = json.loads(files.read_text(spark, f"{path}/model.json"))
    output = pd.Series(student_score(student.booster(), sidecar, sample), name="score")
    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/student"  # the artifact folder keeps this name: artifacts/student/
        os.makedirs(local)
        for name in ("model.txt", "model.json"):
            with open(f"{local}/{name}", "wb") as fh:
                fh.write(files.read_bytes(spark, f"{path}/{name}"))
        uri = tracker.log_pyfunc(STUDENT_PYFUNC, {"student": local}, sample, output, "student", description,
                                 PYFUNC_REQUIREMENTS)
    version = tracker.register(uri, CHALLENGER) if uri else None
    if version is None:
        return None
    return {"model": cfg.tracking.registered_model, "version": version, "alias": CHALLENGER, "model_uri": uri}


@dataclass(frozen=True)
class SavedStudent:
    """The student that scoring uses, the folder (or registry URI) it was read from and the run that
    saved it."""

    model: BaseModel
    path: str
    run_id: str | None


def read_student(spark: SparkSession, cfg: Config, path: str, roots: list[str]) -> SavedStudent:
    """The student saved in folder ``path`` (checked to lie under ``roots``)."""
    model = load_model(spark, path, cfg.base_models, roots)
    run_id = json.loads(files.read_text(spark, f"{path}/model.json")).get("run_id")
    return SavedStudent(model, path, run_id)


def load_registered_student(spark: SparkSession, cfg: Config, store: TableStore, model_uri: str) -> SavedStudent:
    """The student of an MLflow model URI (``models:/remedi-student@champion``, ``runs:/...``): its
    artifacts are downloaded through MLflow (tracking store and registry of this config) and the
    student folder inside is read as :func:`read_student` reads a saved one; ``path`` is the URI, with
    the registry version it resolved to."""
    from ..tracking import configure_mlflow, registry_uri, tracking_uri

    mlflow = configure_mlflow(cfg, store.root)
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri(cfg, store.root),
            registry_uri=registry_uri(cfg, store.root) if model_uri.startswith("models:/") else None)
        saved = read_student(spark, cfg, f"{local}/artifacts/student", [tmp])
    return SavedStudent(saved.model, _describe(mlflow, model_uri), saved.run_id)


def _describe(mlflow: Any, model_uri: str) -> str:
    """``model_uri`` plus the registry version an alias resolved to (``models:/m@champion (version 3)``)."""
    name, _, alias = model_uri.removeprefix("models:/").partition("@")
    if not model_uri.startswith("models:/") or not alias:
        return model_uri
    return f"{model_uri} (version {mlflow.MlflowClient().get_model_version_by_alias(name, alias).version})"


def load_student(spark: SparkSession, cfg: Config, store: TableStore) -> SavedStudent:
    """The student scoring uses: ``scoring.model_uri`` from MLflow, else the saved student of
    :func:`scoring_model_dir` (checked to lie under the model roots)."""
    if cfg.scoring.model_uri:
        return load_registered_student(spark, cfg, store, cfg.scoring.model_uri)
    return read_student(spark, cfg, scoring_model_dir(cfg, store), model_roots(cfg, store.root))


def student_importance(student: BaseModel, groups: dict[str, list[str]], channels: list[str] | None = None
                       ) -> pd.DataFrame:
    """Gain importance of every feature of ``student``, with its channel (:func:`channel_of` over
    ``base_models.feature_groups`` and ``channel_groups``) and share of total gain."""
    if not hasattr(student, "booster"):
        return pd.DataFrame(columns=["feature", "group", "gain", "share"])
    booster = student.booster()
    gain = booster.feature_importance(importance_type="gain")
    names = booster.feature_name()
    group = [channel_of(n, groups, channels) for n in names]
    out = pd.DataFrame({"feature": names, "group": group, "gain": gain.astype(float)})
    out["share"] = out["gain"] / out["gain"].sum() if out["gain"].sum() > 0 else 0.0
    return out.sort_values("gain", ascending=False, kind="stable").reset_index(drop=True)


def format_distill(records: list[dict[str, Any]], evaluation: str = "user_split") -> str:
    """Markdown table of one evaluation's ``distill_results`` rows, intervals in brackets; a
    difference whose interval holds 0 is marked "no difference"."""
    from ..metrics import Interval, difference_verdict

    def cell(r: dict[str, Any], metric: str, fmt: str) -> str:
        low, high = r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high")
        text = format(r[metric], fmt)
        if low is None or low != low:
            return text
        text += f" [{format(low, fmt)}, {format(high, fmt)}]"
        if r["kind"] == "difference":
            text += f" ({difference_verdict(Interval(r[metric], low, high, r['ci_level']), metric == 'logloss')})"
        return text

    rows = [r for r in records if r.get("evaluation", "user_split") == evaluation]
    lines = [f"distillation, {evaluation} ({rows[0]['rows'] if rows else 0:,} rows)",
             "| name | P@K | AUC | LogLoss | MSE vs teacher | rank corr vs teacher | s / 1,000 owners |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        t, mse, corr = r.get("seconds_per_1000"), r.get("mse_vs_teacher"), r.get("rank_corr_vs_teacher")
        lines.append(f"| {r['name']} | {cell(r, 'precision_at_k', '.4f')} | {cell(r, 'auc', '.4f')} "
                     f"| {cell(r, 'logloss', '.5f')} | {'' if mse is None or mse != mse else f'{mse:.2e}'} "
                     f"| {'' if corr is None or corr != corr else f'{corr:.4f}'} "
                     f"| {'' if t is None or t != t else f'{t:.3f}'} |")
    return "\n".join(lines)
