"""Stage ``monitor`` (REMEDI §3.6.2): did the lead lists work, did the inputs drift, retrain?

1. Realized metrics, for every scored month whose three-month window has closed (all its
   feature rows have complete labels): the lead list's precision and Business Recall (buyers
   in the list / average buyers per month), and the full score ranking's P@K (K = the lead
   list's size, else ``lead_list.k``), AUC and lift.
2. Drift of the monitored month (default: the newest scored month) against the training months
   (the months of the ``folds`` table, sampled to ``monitoring.reference_rows``): PSI of every
   student feature and of the student's score.
3. A retraining decision from the rules in ``monitoring``: realized lead-list precision below
   ``min_realized_precision`` on a closed month, PSI of one of the student's ``top_features``
   (by gain) at or above ``feature_psi_retrain``, score PSI at or above ``score_psi_retrain``,
   or the student older than ``max_model_age_months`` (monitored month − newest training month).

Everything goes to the ``monitoring`` table (partition = the monitored month, replaced on re-run).
The CLI prints the decision and exits ``monitoring.retrain_exit_code`` (3) when retraining is
due, 0 otherwise, so a scheduler can branch on the status.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..distill.students import load_student, student_importance
from ..io.schemas import DataValidationError, frame_from_pandas
from ..io.store import TableStore
from ..leads.lead_list import evaluate_lead_list
from ..metrics import bootstrap, lead_count, lead_metrics
from ..months import parse_month
from ..scoring.score import student_scores
from .psi import psi_band, psi_table

COLUMNS = ["month", "check", "subject", "evaluated_month", "metric", "value", "ci_low", "ci_high", "ci_level", "band",
           "flagged", "run_id"]


def closed_months(store: TableStore, months: list[str]) -> list[str]:
    """The months among ``months`` whose feature rows all have complete labels (window closed)."""
    stats = store.read("features", months=months).groupBy("month").agg(
        F.count(F.lit(1)).alias("rows"), F.sum(F.col("label_complete").cast("int")).alias("complete")).collect()
    return sorted(r["month"] for r in stats if r["rows"] > 0 and r["complete"] == r["rows"])


def realized_metrics(spark: SparkSession, cfg: Config, store: TableStore, month: str) -> list[dict[str, Any]]:
    """Lead-list and full-ranking metrics of a closed ``month`` (see the module docstring), each rate
    with its paired-bootstrap interval over the month's owners (``ci_low``, ``ci_high``, ``ci_level``;
    ``evaluation.bootstrap``). The lead list's numbers are :func:`~remedi_spark.leads.lead_list.evaluate_lead_list`'s."""
    labels = store.read("features", months=[month]).select("user_id", "y")
    # ties in the score go to the lower owner id, as in the lead list, whatever order Spark returns
    pdf = store.read("scores", months=[month]).select("user_id", "score").join(labels, "user_id").toPandas() \
        .sort_values("user_id", kind="stable")
    y, score = pdf["y"].to_numpy(dtype=np.int64), pdf["score"].to_numpy(dtype=float)
    b = cfg.evaluation.bootstrap

    def row(subject: str, metric: str, value: float, low: float | None = None, high: float | None = None
            ) -> dict[str, Any]:
        return {"check": "realized", "subject": subject, "metric": metric, "value": value, "ci_low": low,
                "ci_high": high, "ci_level": b.level if low is not None else None}

    rows: list[dict[str, Any]] = []
    k = lead_count(cfg.lead_list.k, len(y))
    if store.exists("lead_list") and store.read("lead_list", months=[month]).limit(1).count():
        lead = evaluate_lead_list(spark, cfg, store, month)
        k = lead["leads"]
        rows += [row("lead_list", metric, lead[metric], lead[f"{metric}_ci_low"], lead[f"{metric}_ci_high"])
                 for metric in ("precision", "business_recall")]
        rows.append(row("lead_list", "leads", float(k)))
    k = min(k, len(y))
    intervals = bootstrap(y, {"ranking": score}, pdf["user_id"].to_numpy(), k / len(y), replicates=b.replicates,
                          seed=b.seed, level=b.level)["intervals"]["ranking"]
    m = lead_metrics(y, score, k)
    rows += [row("ranking", metric, float(m[metric]), intervals[metric].low, intervals[metric].high)
             for metric in ("precision_at_k", "business_recall_at_k", "lift_at_k", "auc")]
    rows += [row("ranking", metric, float(m[metric])) for metric in ("k", "positives")]
    return [{**r, "evaluated_month": month} for r in rows]


def reference_frame(store: TableStore, cfg: Config) -> DataFrame:
    """Feature rows of the training months (those in ``folds``), sampled to ``reference_rows``."""
    labelled = store.read("folds").filter(F.col("split") != "open")  # open-window months are not training months
    months = [r[0] for r in labelled.select("month").distinct().collect()]
    ref = store.read("features", months=months)
    n = ref.count()
    limit = cfg.monitoring.reference_rows
    return ref.sample(fraction=min(1.0, limit / n), seed=cfg.folds.seed) if n > limit else ref


def drift_rows(spark: SparkSession, cfg: Config, store: TableStore, month: str) -> list[dict[str, Any]]:
    """PSI of every student feature and of the student's score, ``month`` against the reference."""
    mcfg = cfg.monitoring
    reference = reference_frame(store, cfg)
    current = store.read("features", months=[month])
    if current.limit(1).count() == 0:
        raise DataValidationError("features", [("month", f"no feature rows for the monitored month {month}")])
    student = load_student(spark, cfg, store).model
    importance = student_importance(student, cfg.base_models.feature_groups, cfg.base_models.channel_groups)
    columns = list(importance["feature"])
    top = set(importance.head(mcfg.top_features)["feature"])
    features = psi_table(reference, current, columns, mcfg.psi_bins)
    rows = [{"check": "feature_psi", "subject": r.feature, "metric": "psi", "value": r.psi, "band": r.band,
             "flagged": bool(r.feature in top and r.psi >= mcfg.feature_psi_retrain)} for r in features.itertuples()]
    ref_scores = student_scores(student, reference)
    cur_scores = store.read("scores", months=[month]).select("score")
    score = psi_table(ref_scores.select("score"), cur_scores, ["score"], mcfg.psi_bins).iloc[0]
    rows.append({"check": "score_psi", "subject": "student", "metric": "psi", "value": float(score["psi"]),
                 "band": score["band"], "flagged": bool(score["psi"] >= mcfg.score_psi_retrain)})
    return [{**r, "evaluated_month": month} for r in rows]


def decide(rows: list[dict[str, Any]], model_age: int, cfg: Config) -> tuple[bool, list[str]]:
    """Retrain or not, and why (one reason per rule that fired)."""
    mcfg = cfg.monitoring
    reasons = []
    for r in rows:
        if r["check"] == "realized" and r["subject"] == "lead_list" and r["metric"] == "precision" \
                and r["value"] < mcfg.min_realized_precision:
            reasons.append(f"realized lead-list precision {100 * r['value']:.2f}% in {r['evaluated_month']} is below "
                           f"the floor {100 * mcfg.min_realized_precision:.2f}%")
        elif r["check"] == "feature_psi" and r["flagged"]:
            reasons.append(f"PSI {r['value']:.3f} ({r['band']}) on top feature {r['subject']}")
        elif r["check"] == "score_psi" and r["flagged"]:
            reasons.append(f"score PSI {r['value']:.3f} ({r['band']})")
    if model_age > mcfg.max_model_age_months:
        reasons.append(f"the student is {model_age} months past its newest training month "
                       f"(limit {mcfg.max_model_age_months})")
    return bool(reasons), reasons


def monitor_month(spark: SparkSession, cfg: Config, store: TableStore, month: str | None = None) -> dict[str, Any]:
    """Stage ``monitor``: realized metrics of the closed scored months, drift of ``month``, decision."""
    if not store.exists("scores"):
        raise FileNotFoundError(f"no scores table at {store.path('scores')}: run the score job first")
    scored = sorted(r[0] for r in store.read("scores").select("month").distinct().collect())
    month = month or cfg.monitoring.month or (scored[-1] if scored else None)
    if month is None or month not in scored:
        raise DataValidationError("scores", [("month", f"month {month} has not been scored; scored months: "
                                                       f"{', '.join(scored) or 'none'}")])
    parse_month(month)
    closed = [m for m in closed_months(store, scored) if m <= month]
    rows: list[dict[str, Any]] = []
    for m in closed:
        rows += [{**r, "band": None, "flagged": False} for r in realized_metrics(spark, cfg, store, m)]
    for r in rows:
        if r["subject"] == "lead_list" and r["metric"] == "precision":
            r["flagged"] = bool(r["value"] < cfg.monitoring.min_realized_precision)
    rows += drift_rows(spark, cfg, store, month)
    # the newest month the student fitted on: the evaluation month (oot_split = test) is not one
    newest_training = store.read("folds").filter((F.col("split") != "open") & (F.col("oot_split") == "train")) \
        .agg(F.max("month")).first()[0]
    model_age = parse_month(month) - parse_month(newest_training)
    rows.append({"check": "model_age", "subject": "student", "evaluated_month": month, "metric": "months",
                 "value": float(model_age), "band": None,
                 "flagged": bool(model_age > cfg.monitoring.max_model_age_months)})
    retrain, reasons = decide(rows, model_age, cfg)
    rows.append({"check": "decision", "subject": "retrain" if retrain else "keep", "evaluated_month": month,
                 "metric": "retrain", "value": float(retrain), "band": None, "flagged": retrain})
    run_id = store.run.run_id if store.run else "adhoc"
    table = pd.DataFrame(rows).assign(month=month, run_id=run_id)[COLUMNS]
    table["value"] = table["value"].astype(float)
    version = store.write_months(frame_from_pandas(spark, table, "monitoring"), "monitoring", [month])
    psi = table[table["check"] == "feature_psi"]
    return {
        "month": month, "closed_months": closed, "retrain": retrain, "reasons": reasons, "model_age_months": model_age,
        "realized": {m: {f"{r.subject}.{r.metric}": r.value for r in table[(table["check"] == "realized")
                                                                          & (table["evaluated_month"] == m)].itertuples()}
                     for m in closed},
        "feature_psi": {"max": float(psi["value"].max()) if len(psi) else None,
                        "significant": int((psi["band"] == "significant").sum()),
                        "moderate": int((psi["band"] == "moderate").sum()),
                        "top": psi.head(5)[["subject", "value", "band"]].to_dict("records")},
        "score_psi": float(table.loc[table["check"] == "score_psi", "value"].iloc[0]),
        "version": version,
    }


def publish_decision(spark: SparkSession, summary: dict[str, Any]) -> None:
    """On Databricks, set the job task values ``retrain`` and ``reasons`` so an If/else condition
    task can branch on ``{{tasks.monitor.values.retrain}}``; elsewhere the exit status does it."""
    try:
        from pyspark.dbutils import DBUtils  # only present on Databricks runtimes
    except ImportError:
        return
    task_values = DBUtils(spark).jobs.taskValues
    task_values.set(key="retrain", value=bool(summary["retrain"]))
    task_values.set(key="reasons", value="; ".join(summary["reasons"]))


def format_monitor(summary: dict[str, Any]) -> str:
    """The monitor's console output: realized metrics per closed month, drift, the decision."""
    lines = [f"monitoring {summary['month']} (model age {summary['model_age_months']} months)"]
    for m, r in summary["realized"].items():
        lead = r.get("lead_list.precision")
        lead_text = f"lead list P {100 * lead:.2f}%, " if lead is not None and np.isfinite(lead) else ""
        lines.append(f"  realized {m}: {lead_text}ranking P@K {100 * r['ranking.precision_at_k']:.2f}%, "
                     f"AUC {r['ranking.auc']:.4f}")
    fp = summary["feature_psi"]
    lines.append(f"  feature PSI: max {fp['max']:.3f}; {fp['significant']} significant (≥0.25), "
                 f"{fp['moderate']} moderate (0.1–0.25); score PSI {summary['score_psi']:.3f} "
                 f"({psi_band(summary['score_psi'])})")
    for r in fp["top"]:
        lines.append(f"    {r['subject']:32} {r['value']:.3f} {r['band']}")
    decision = "RETRAIN" if summary["retrain"] else "keep the model"
    lines.append(f"decision: {decision}" + "".join(f"\n  - {reason}" for reason in summary["reasons"]))
    return "\n".join(lines)
