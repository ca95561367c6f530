"""Stage ``report``: one self-contained HTML page, PNG figures and a JSON of every number for one
pipeline run, written to ``<tables.root>/reports/<pipeline run id>/`` (or ``report.dir``).

Contents: REMEDI Tables 1–4 analogs (base models, fusion strategies, diversity ablations,
distillation), each with the oracle ceiling beside it; the diversity of the base models (rank
correlations and top-K overlaps on the OOF rows) and each neural expert against the LightGBM on
the same columns (paired OOF AUC difference with its interval); cumulative gains, lift, precision and
business recall as functions of K (the chosen K marked), the score histogram by label,
calibration, the student's gain importance and month-by-month metrics, all on held-out owners
(never in any training set); the lead list's own evaluation; and the Delta version of every
table the numbers came from.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import tempfile
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from ..config import Config
from ..interval_text import difference_text
from ..io import files
from ..io.store import TableStore
from ..fusion.train import seed_summary
from ..metrics import bootstrap, curve_ks, lead_metrics, ranked_curves
from ..training.kdef_study import curve_rows, layer_rows
from . import figures
from .diversity import CAPTION as DIVERSITY_CAPTION, FIGURE as DIVERSITY_FIGURE, diversity_numbers, diversity_section
from .matching import matching_numbers, matching_section
from .backtest import backtest_figures, backtest_numbers, backtest_section, latest_run
from .tuning import tuning_numbers, tuning_section
from .collect import SCORERS, ReportData, collect, data_version_rows, monthly_metrics
from .html import figure, page, table

METRIC_COLUMNS = ["precision_at_k", "business_recall_at_k", "lift_at_k", "auc", "logloss"]
TABLES = {  # key: (fusion_results section, title)
    "base_models": ("base", "Table 1 — base models"),
    "fusion": ("fusion", "Table 2 — fusion strategies"),
    "ablations": ("ablation", "Table 3 — diversity ablations (hybrid expert without a model family)"),
    "variants": ("variant", "Table 3b — hybrid-expert head variants (the paper's head, without the skip path, ...)"),
    "differences": ("difference", "Paired differences behind the method's claims (a − b)"),
}
EVALUATIONS = {"meta_oof": "training owners, meta-level out-of-fold (cross-fitted over the folds; every choice "
                           "— best base model, teacher, guard — is made on these rows)",
               "user_split": "held-out owners (random 20% of owners, all labelled months)",
               "out_of_time": "every owner of the evaluation month (the newest labelled month; no model trained on it)"}
DISTILL_EVALUATIONS = ("user_split", "out_of_time")
INTERVAL_METRICS = ("precision_at_k", "auc", "logloss")
_STUDY_INTERVALS = ["auc", "auc_ci", "logloss", "logloss_ci", "reference", "auc_diff_text", "logloss_diff_text",
                    "positives"]
STUDIES = {  # study table (collect.STUDY_TABLES): (section title, columns after the variant's name, footnote);
    # what a section shows below its table: STUDY_DETAILS
    "kdef_study": ("KDEF study (newest kdef-study run)",
                   ["k", "member", *_STUDY_INTERVALS, "knowledge_abundance", "epochs", "best_epoch"],
                   "Differences: the KDEF teacher − the mean fusion of the same K independently trained nets."),
    "kaml_study": ("KAML study: multi-horizon model ablations (newest kaml-study run)",
                   ["open_windows", "shared", "rank_weight", "train_rows", "open_rows", *_STUDY_INTERVALS,
                    "precision_at_k", "precision_at_k_ci", "auc_h1", "auc_h2", "auc_h3"],
                   "Fully labelled held-out owners; open-window rows only ever used for training. Differences: "
                   "variant − full."),
    "hm3_study": ("HM3 study: behaviour-funnel model ablations (newest hm3-study run)",
                  ["hierarchical", "aux_weight", "train_rows", *_STUDY_INTERVALS, "precision_at_k",
                   "precision_at_k_ci", "auc_engage", "auc_visit"],
                  "Fully labelled held-out owners; the teacher without HM3 is the fusion ablation <i>without_hm3</i>. "
                  "Differences: variant − full."),
}
FIGURES = {
    "gains": "Cumulative gains, held-out owners of the evaluation month",
    "lift": "Lift, held-out owners of the evaluation month",
    "precision_at_k": "Precision at K (chosen K dashed)",
    "business_recall_at_k": "Business Recall at K: buyers in the list / average buyers per month",
    "score_histogram": "Student score distribution by label",
    "calibration": "Calibration (reliability) curve",
    "importance": "Student feature importance (gain), coloured by feature group",
    "monthly": "Month-by-month metrics on held-out owners",
    "monitoring": "Monitoring: realized precision of closed months and drift of each monitored month",
    DIVERSITY_FIGURE: DIVERSITY_CAPTION,
}


def _kdef_training(rows: list[dict[str, Any]]) -> str:
    """Below the K-table: the members' knowledge abundance per layer and each training run's
    validation curve (``kdef_study.layer_rows`` / ``curve_rows``)."""
    layers, curves = layer_rows(rows), curve_rows(rows)
    html_parts = []
    if layers:
        html_parts.append("<h3>Knowledge abundance per layer weight matrix (largest K)</h3><p class='meta'>KDEF eq. 3: "
                          "the share of a layer's singular values above τ × the largest, per τ; the cross and FM "
                          "nets have only vectors.</p>"
                          + table(layers, list(dict.fromkeys(c for r in layers for c in r))))
    if curves:
        html_parts.append("<h3>Training runs: validation AUC and log loss per epoch</h3>"
                          + table(curves, list(curves[0])))
    return "".join(html_parts)


STUDY_DETAILS = {  # study table: what its section shows below the table, from the same rows
    "kdef_study": _kdef_training,
}


def finite(obj: Any) -> Any:
    """``obj`` with NaN/inf floats as None, so the JSON is strict (browsers' JSON.parse)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(frame.to_json(orient="records"))


def _with_oracle_share(rows: pd.DataFrame, oracle_precision: float | None) -> pd.DataFrame:
    rows = rows.copy()
    rows["share_of_oracle"] = rows["precision_at_k"] / oracle_precision if oracle_precision else np.nan
    return rows


def _digits(metric: str) -> int:
    """Decimals a metric is shown with (P@K in percent)."""
    return 2 if metric == "precision_at_k" else 5 if metric == "logloss" else 4


def _ci_texts(rows: pd.DataFrame, metric: str) -> list[str]:
    """``<metric>_ci_low/high`` of ``rows`` as "[low, high]" display texts ("" where there is none)."""
    scale, unit = (100, "%") if metric == "precision_at_k" else (1, "")
    digits = _digits(metric)
    return [f"[{scale * a:.{digits}f}{unit}, {scale * b:.{digits}f}{unit}]" if pd.notna(a) and pd.notna(b) else ""
            for a, b in zip(rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"])]


def with_intervals(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a display column ``<metric>_ci`` ("[low, high]") per interval metric and, on
    difference rows, ``<metric>_verdict``: "no difference" when the interval contains 0."""
    rows = rows.copy()
    for metric in INTERVAL_METRICS:
        low, high = rows[f"{metric}_ci_low"], rows[f"{metric}_ci_high"]
        rows[f"{metric}_ci"] = _ci_texts(rows, metric)
        better = (high < 0) if metric == "logloss" else (low > 0)
        worse = (low > 0) if metric == "logloss" else (high < 0)
        rows[f"{metric}_verdict"] = np.where(rows["section"] != "difference", "",
                                             np.where(better, "better", np.where(worse, "worse", "no difference")))
    return rows


def study_display(rows: pd.DataFrame) -> pd.DataFrame:
    """A study table with display columns: ``<metric>_ci`` ("[low, high]") and ``<metric>_diff_text``
    (the difference to the row's reference, its interval and "no difference" / "better" / "worse")."""
    rows = rows.copy()
    for metric in ("auc", "logloss", "precision_at_k"):
        if f"{metric}_ci_low" not in rows:
            continue
        rows[f"{metric}_ci"] = _ci_texts(rows, metric)
        if f"{metric}_diff" in rows:
            rows[f"{metric}_diff_text"] = [
                difference_text(r, metric, f"+.{_digits(metric)}f", lower_is_better=metric == "logloss") or ""
                for r in rows.to_dict("records")]
    return rows


def teacher_check(fr: pd.DataFrame, best_base: str) -> dict[str, Any]:
    """The distilled strategy and its paired differences on meta-OOF rows; ``weak`` when its log
    loss is worse than the best base model's or the simple average's beyond the interval (the
    fusion stage's guard, read back from the table)."""
    teacher = fr.loc[fr["teacher"], "name"]
    name = str(teacher.iloc[0]) if len(teacher) else "hybrid_expert"
    diffs = fr[(fr["section"] == "difference") & (fr["evaluation"] == "meta_oof")
               & fr["name"].str.startswith(f"{name} - ")]
    rows = _records(with_intervals(diffs)[["name", "rows", "positives", "logloss", "logloss_ci", "logloss_verdict",
                                           "auc", "auc_ci", "auc_verdict"]])
    guarded = {f"{name} - {best_base}", f"{name} - simple_average"}
    return {"teacher": name, "comparisons": rows,
            "weak": any(r["logloss_verdict"] == "worse" for r in rows if r["name"] in guarded)}


def result_tables(data: ReportData) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Tables 1–3 per evaluation (oracle row last, P@K as a share of the oracle's), the head
    variants and the paired differences, with intervals; Table 4."""
    fr = data.fusion_results
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for key, (section, _) in TABLES.items():
        out[key] = {}
        for evaluation in EVALUATIONS:
            oracle = fr[(fr["section"] == "oracle") & (fr["evaluation"] == evaluation)]
            rows = fr[(fr["section"] == section) & (fr["evaluation"] == evaluation)]
            if section != "difference":
                rows = rows.sort_values("auc", ascending=False, kind="stable")
                rows = pd.concat([rows, oracle]) if len(oracle) else rows
            rows = with_intervals(rows)
            ceiling = float(oracle["precision_at_k"].iloc[0]) if len(oracle) else None
            out[key][evaluation] = _records(_with_oracle_share(rows, ceiling).drop(columns=["run_id"]))
    distill = data.distill_results.drop(columns=["run_id"])
    out["distillation"] = {}
    for evaluation in DISTILL_EVALUATIONS:
        part = distill[distill["evaluation"] == evaluation]
        oracle = fr[(fr["section"] == "oracle") & (fr["evaluation"] == evaluation)]
        if len(oracle):
            ceiling_cols = ["name", "rows", "k", *METRIC_COLUMNS,
                            *[f"{m}_ci_{e}" for m in METRIC_COLUMNS for e in ("low", "high")]]
            part = pd.concat([part, oracle.assign(kind="ceiling")[["kind", *ceiling_cols]]])
        ceiling = float(oracle["precision_at_k"].iloc[0]) if len(oracle) else None
        part = with_intervals(part.assign(section=part["kind"])).drop(columns=["section"])
        out["distillation"][evaluation] = _records(_with_oracle_share(part, ceiling))
    return out


def evaluation_numbers(data: ReportData, points: int, bins: int, bootstrap_settings: Any = None) -> dict[str, Any]:
    """Metrics at the chosen K (with paired-bootstrap intervals over owners when
    ``bootstrap_settings`` is given), curves and calibration of every scorer on the evaluation month."""
    rows = data.evaluation_rows
    y = rows["y"].to_numpy()
    scorers = [s for s in SCORERS if s in rows and not rows[s].isna().any()]
    ks = curve_ks(len(rows), points, extra=(data.k,))
    metrics, curves, calibration = {}, {}, {}
    from sklearn.calibration import calibration_curve

    intervals: dict[str, Any] = {}
    if bootstrap_settings is not None and scorers and 0 < y.sum() < len(y):
        b = bootstrap_settings
        intervals = bootstrap(y, {s: rows[s].to_numpy(dtype=float) for s in scorers}, rows["user_id"].to_numpy(),
                              data.k / len(rows), replicates=b.replicates, seed=b.seed, level=b.level)["intervals"]
    for s in scorers:
        p = rows[s].to_numpy(dtype=float)
        metrics[s] = lead_metrics(y, p, data.k)
        for metric, iv in intervals.get(s, {}).items():
            metrics[s].update({f"{metric}_ci_low": iv.low, f"{metric}_ci_high": iv.high})
        curves[s] = {k: v.tolist() for k, v in ranked_curves(y, p, ks).items()}
        observed, predicted = calibration_curve(y, np.clip(p, 0, 1), n_bins=bins, strategy="quantile")
        calibration[s] = {"predicted": predicted.tolist(), "observed": observed.tolist()}
    return {"month": data.evaluation_month, "rows": len(rows), "positives": int(y.sum()), "k": data.k,
            "scorers": scorers, "metrics": metrics, "curves": curves, "calibration": calibration}


def monitoring_numbers(monitoring: pd.DataFrame | None) -> dict[str, Any] | None:
    """Per monitored month: decision, reasons' inputs, max/top PSI, score PSI; realized metrics of
    the closed months as of the newest monitored month."""
    if monitoring is None or monitoring.empty:
        return None
    months = []
    for month, part in monitoring.groupby("month", sort=True):
        psi = part[part["check"] == "feature_psi"].sort_values("value", ascending=False)
        score = part[part["check"] == "score_psi"]["value"]
        decision = part[part["check"] == "decision"]
        flagged = part[part["flagged"] & (part["check"] != "decision")]
        months.append({"month": month, "decision": str(decision["subject"].iloc[0]) if len(decision) else None,
                       "max_feature_psi": float(psi["value"].max()) if len(psi) else None,
                       "significant_features": int((psi["band"] == "significant").sum()),
                       "moderate_features": int((psi["band"] == "moderate").sum()),
                       "score_psi": float(score.iloc[0]) if len(score) else None,
                       "flags": "; ".join(f"{r.check}:{r.subject}" for r in flagged.itertuples())[:300],
                       "top_psi": _records(psi.head(8)[["subject", "value", "band"]])})
    newest = monitoring[monitoring["month"] == monitoring["month"].max()]
    realized = newest[newest["check"] == "realized"].pivot_table(index="evaluated_month", columns=["subject", "metric"],
                                                                 values="value", aggfunc="first")
    realized.columns = [f"{a}.{b}" for a, b in realized.columns]
    rates = newest[(newest["check"] == "realized") & newest["ci_low"].notna()] if "ci_low" in newest else newest[:0]
    for r in rates.itertuples():  # "[low, high]" beside each rate (percent for precision and recall)
        scale, fmt = (1, ".3f") if r.metric in ("auc", "lift_at_k") else (100, ".2f")
        realized.loc[r.evaluated_month, f"{r.subject}.{r.metric}_ci"] = \
            f"[{scale * r.ci_low:{fmt}}, {scale * r.ci_high:{fmt}}]"
        realized.loc[r.evaluated_month, f"{r.subject}.{r.metric}_ci_low"] = r.ci_low
        realized.loc[r.evaluated_month, f"{r.subject}.{r.metric}_ci_high"] = r.ci_high
    return {"months": months, "realized": _records(realized.reset_index())}


def report_numbers(data: ReportData, cfg: Config) -> dict[str, Any]:
    """Every number the report shows, as plain JSON-able values."""
    importance = data.importance
    groups = importance.groupby("group")["share"].sum().sort_values(ascending=False) if len(importance) else pd.Series()
    monthly = monthly_metrics(data.held_out, cfg.base_models.metric_k_fraction, cfg.evaluation.bootstrap)
    if len(monthly) and "auc_ci_low" in monthly:
        monthly = with_intervals(monthly.assign(section="")).drop(columns=["section"])
    return {
        "pipeline_run_id": data.pipeline["run_id"],
        "pipeline_started_at": data.pipeline["started_at"],
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "k_fraction": cfg.base_models.metric_k_fraction,
        "best_base_model": data.best_base,
        "ci_level": cfg.evaluation.bootstrap.level,
        "tables": result_tables(data),
        "teacher": teacher_check(data.fusion_results, data.best_base),
        "seeds": _records(seed_summary(data.fusion_results.to_dict("records"))),
        "studies": {t: _records(study_display(rows.drop(columns=["run_id"], errors="ignore")))
                    for t, rows in data.studies.items()},
        "evaluation": evaluation_numbers(data, cfg.report.curve_points, cfg.report.calibration_bins,
                                         cfg.evaluation.bootstrap),
        "monthly": _records(monthly),
        "importance": {"top": _records(importance.head(cfg.report.top_features)),
                       "groups": {g: float(v) for g, v in groups.items()}},
        "lead_list": data.pipeline.get("info", {}).get("evaluation"),
        "promotion": data.pipeline.get("info", {}).get("promotion"),
        "monitoring": monitoring_numbers(data.monitoring),
        "diversity": diversity_numbers(data.oof, cfg.base_models.metric_k_fraction),
        "neural_vs_lightgbm": matching_numbers(data.oof, cfg.base_models.models, cfg.base_models.metric_k_fraction,
                                               cfg.evaluation.bootstrap, cfg.report.neural_auc_tolerance),
        "data_versions": {"tables": data.versions, "by_stage": data_version_rows(data.pipeline, data.stages)},
        "warnings": data.warnings,
    }


def render_figures(data: ReportData, numbers: dict[str, Any], cfg: Config) -> dict[str, bytes]:
    """Every figure as PNG bytes, keyed by the names in :data:`FIGURES`."""
    ev = numbers["evaluation"]
    curves = {s: {k: np.asarray(v) for k, v in c.items()} for s, c in ev["curves"].items()}
    k, share = ev["k"], ev["k"] / ev["rows"]
    rows = data.evaluation_rows
    out = {
        "gains": figures.gains_chart(curves, share, k),
        "lift": figures.lift_chart(curves, share, k),
        "precision_at_k": figures.at_k_chart(curves, "precision", "Precision", k),
        "business_recall_at_k": figures.at_k_chart(curves, "business_recall", "Business recall", k),
        "score_histogram": figures.score_histogram(rows["student"].to_numpy(float), rows["y"].to_numpy(), "student"),
        "calibration": figures.calibration_chart({s: c for s, c in ev["calibration"].items() if s != "oracle"},
                                                 cfg.report.calibration_bins),
        "monthly": figures.monthly_chart(pd.DataFrame(numbers["monthly"]), cfg.base_models.metric_k_fraction),
    }
    if len(data.importance):
        out["importance"] = figures.importance_chart(data.importance, cfg.report.top_features)
    diversity = numbers.get("diversity") or {}
    if diversity.get("pairs"):
        out[DIVERSITY_FIGURE] = figures.diversity_heatmaps(diversity["models"], diversity["spearman"],
                                                           diversity["top_k_overlap"], diversity["k"])
    if numbers["monitoring"]:
        out["monitoring"] = figures.monitoring_chart(pd.DataFrame(numbers["monitoring"]["months"]),
                                                     pd.DataFrame(numbers["monitoring"]["realized"]))
    return out


def _headline(numbers: dict[str, Any]) -> str:
    ev = numbers["evaluation"]
    cells = []
    for s in ev["scorers"]:
        m = ev["metrics"][s]
        ci = (f" [{100 * m['precision_at_k_ci_low']:.2f}, {100 * m['precision_at_k_ci_high']:.2f}]"
              if m.get("precision_at_k_ci_low") is not None else "")
        auc_ci = f" [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]" if m.get("auc_ci_low") is not None else ""
        cells.append(f"<div>{SCORERS[s]}<b>{100 * m['precision_at_k']:.2f}%</b>P@K{ci} · AUC {m['auc']:.4f}{auc_ci} · "
                     f"lift {m['lift_at_k']:.1f}</div>")
    return (f"<p>Every owner of the evaluation month {ev['month']} (no model trained on it): {ev['rows']:,} rows, "
            f"{ev['positives']:,} buyers in T+1..T+3, "
            f"K = {ev['k']:,} ({100 * numbers['k_fraction']:.1f}%).</p><div class='kpi'>{''.join(cells)}</div>")


def render_html(numbers: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """The report page (see the module docstring for its sections)."""
    cols = ["name", "rows", "positives", "k", "precision_at_k", "precision_at_k_ci", "business_recall_at_k",
            "lift_at_k", "auc", "auc_ci", "logloss", "logloss_ci", "share_of_oracle"]
    diff_cols = ["name", "rows", "positives", "precision_at_k", "precision_at_k_ci", "precision_at_k_verdict", "auc",
                 "auc_ci", "auc_verdict", "logloss", "logloss_ci", "logloss_verdict"]
    sections: list[tuple[str, str]] = []
    tc = numbers["teacher"]
    warnings = list(numbers["warnings"]) + ([f"The teacher ({tc['teacher']}) has a worse meta-level OOF log loss than "
                                             "a simpler ranker beyond the interval; see 'The teacher'."]
                                            if tc["weak"] else [])
    if warnings:
        sections.append(("Warnings", "".join(f"<p class='warn'>{w}</p>" for w in warnings)))
    sections.append(("Headline: the evaluation month", _headline(numbers)))
    sections.append(("The teacher", f"<p>Distilled strategy: <b>{tc['teacher']}</b>. Checked on the training owners' "
                     "meta-level out-of-fold rows against the best base model (lowest meta-OOF log loss) and the "
                     "simple average; a difference whose interval contains 0 is no difference.</p>"
                     + table(tc["comparisons"], ["name", "rows", "positives", "logloss", "logloss_ci", "logloss_verdict",
                                                 "auc", "auc_ci", "auc_verdict"])))
    level = numbers.get("ci_level")
    for key, (section, title) in TABLES.items():
        inner = "".join(f"<h3>{EVALUATIONS[e]}</h3>" + table(numbers["tables"][key][e],
                                                              diff_cols if section == "difference" else cols)
                        for e in EVALUATIONS if numbers["tables"][key][e])
        if inner:
            sections.append((title, inner + (f"<p class='meta'>Intervals: {100 * level:.0f}%, paired bootstrap over "
                                             "owners.</p>" if level else "")))
    sections += diversity_section(numbers.get("diversity"), pngs)  # skipped with a note below 2 base models
    sections += matching_section(numbers.get("neural_vs_lightgbm"))
    if numbers.get("seeds"):
        sections.append(("Seeds: the meta-OOF comparison repeated per network seed (fusion.seeds)", table(
            numbers["seeds"], ["name", "seeds", "precision_at_k_mean", "precision_at_k_std", "auc_mean", "auc_std",
                               "logloss_mean", "logloss_std"])
            + "<p class='meta'>Mean and standard deviation over the seeds; difference rows are a − b per seed.</p>"))
    distill_cols = ["name", "kind", "precision_at_k", "precision_at_k_ci", "precision_at_k_verdict", "auc", "auc_ci",
                    "auc_verdict", "logloss", "logloss_ci", "logloss_verdict", "rank_corr_vs_teacher",
                    "mse_vs_teacher", "best_iteration", "seconds_per_1000", "share_of_oracle"]
    sections.append(("Table 4 — distillation (teacher → one LightGBM student)",
                     "<p>Students fit on the training owners outside the evaluation month; <i>difference</i> rows "
                     "are student − teacher; <i>seconds_per_1000</i> is the inference time per 1,000 owners.</p>"
                     + "".join(f"<h3>{EVALUATIONS[e]}</h3>" + table(numbers["tables"]["distillation"][e], distill_cols)
                               for e in DISTILL_EVALUATIONS if numbers["tables"]["distillation"].get(e))))
    for name, rows in numbers["studies"].items():
        title, columns, note = STUDIES[name]
        details = STUDY_DETAILS.get(name)
        sections.append((title, table([{"name": r["variant"], **r} for r in rows], ["name", *columns])
                         + (f"<p class='meta'>{note}</p>" if note else "")
                         + (details(rows) if details else "")))
    sections.append(("Curves", "<div class='figs'>" + "".join(
        figure(pngs[n], FIGURES[n]) for n in ("gains", "lift", "precision_at_k", "business_recall_at_k")) + "</div>"))
    sections.append(("Scores and calibration", "<div class='figs'>" + "".join(
        figure(pngs[n], FIGURES[n]) for n in ("score_histogram", "calibration")) + "</div>"))
    if "importance" in pngs:
        groups = [{"name": g, "share": v} for g, v in numbers["importance"]["groups"].items()]
        sections.append(("What drives the score", figure(pngs["importance"], FIGURES["importance"])
                         + "<h3>share of gain by feature group</h3>" + table(groups, ["name", "share"])))
    monthly_cols = ["month", "scorer", "rows", "positives", "k", "precision_at_k", "precision_at_k_ci",
                    "business_recall_at_k", "lift_at_k", "auc", "auc_ci", "logloss", "logloss_ci"]
    sections.append(("Month by month", figure(pngs["monthly"], FIGURES["monthly"])
                     + table(numbers["monthly"], monthly_cols)))
    mon = numbers["monitoring"]
    if mon:
        realized_cols = ["evaluated_month", "lead_list.precision", "lead_list.precision_ci", "lead_list.business_recall",
                         "lead_list.business_recall_ci", "ranking.precision_at_k", "ranking.precision_at_k_ci",
                         "ranking.auc", "ranking.auc_ci", "ranking.lift_at_k", "ranking.positives"]
        realized = [{**r, "name": r["evaluated_month"]} for r in mon["realized"]]
        months = [{**m, "name": m["month"]} for m in mon["months"]]
        newest = mon["months"][-1]
        sections.append(("Monitoring", figure(pngs["monitoring"], FIGURES["monitoring"])
                         + "<h3>decision per monitored month</h3>" + table(months, [
                             "month", "decision", "max_feature_psi", "significant_features", "moderate_features",
                             "score_psi", "flags"])
                         + "<h3>realized metrics of closed months</h3>" + table(realized, [
                             c for c in realized_cols if any(c in r for r in realized)])
                         + f"<h3>largest feature shifts in {newest['month']}</h3>" + table(
                             [{"name": r["subject"], "psi": r["value"], "band": r["band"]} for r in newest["top_psi"]],
                             ["name", "psi", "band"])))
    sections += backtest_section(numbers.get("backtest"), pngs)  # the newest backtest run under the root, if any
    sections += tuning_section(numbers.get("tuning"))  # models trained both with and without the tuning overlay
    lead = numbers["lead_list"]
    if lead:
        lead = dict(lead)
        for name in ("precision", "oracle_precision", "difference", "business_recall", "recall"):
            if lead.get(f"{name}_ci_low") is not None:
                lead[f"{name}_ci"] = f"[{100 * lead[f'{name}_ci_low']:.2f}%, {100 * lead[f'{name}_ci_high']:.2f}%]"
        sections.append(("Lead list of the evaluation month", table([{"name": "lead list", **lead}], [
            "name", "month", "leads", "positives", "hits", "precision", "precision_ci", "oracle_hits",
            "oracle_precision", "oracle_precision_ci", "difference_ci", "business_recall", "business_recall_ci",
            "recall", "recall_ci"])
            + "<p class='meta'>All owners of the evaluation month after the business filters; no model trained on "
              "that month (the training owners' earlier months were trained on, as in production). Intervals: "
              "paired bootstrap over owners. Business Recall = hits / (the month's three-month buyers / 3), the "
              "paper's definition: above 100% when the list catches more than a third of the three-month buyers; "
              "recall = hits / all three-month buyers.</p>"
            + (f"<p class='meta'>Business filters skipped (their input table does not exist): "
               f"{html.escape(', '.join(lead['skipped_filters']))}.</p>" if lead.get("skipped_filters") else "")))
    sections += promotion_section(numbers.get("promotion"))
    dv = numbers["data_versions"]
    sections.append(("Data versions", "<p>Every number above was read at these Delta versions (time travel: "
                     "<code>versionAsOf</code>).</p>" + table(
                         [{"name": t, "version": v} for t, v in sorted(dv["tables"].items())], ["name", "version"])
                     + "<h3>per stage run</h3>" + table(
                         [{"name": r["stage"], **r} for r in dv["by_stage"]],
                         ["name", "run_id", "table", "read_version", "written_version"])))
    meta = (f"pipeline run <code>{numbers['pipeline_run_id']}</code> · started {numbers['pipeline_started_at']} · "
            f"report generated {numbers['generated_at']}")
    return page("remedi-spark evaluation report", sections, meta)


def promotion_section(promotion: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The champion/challenger decision of the run's registered student (none: no section)."""
    if not promotion or promotion.get("decision") is None:
        return []
    row = {"name": promotion["registered_model"], **promotion}
    if promotion.get("ci_low") is not None:
        row["difference_ci"] = f"[{promotion['ci_low']:+.4f}, {promotion['ci_high']:+.4f}]"
    return [("Model registry: challenger vs champion", table([row], [
        "name", "challenger_version", "champion_version", "month", "owners", "positives", "k", "p_at_k_challenger",
        "p_at_k_champion", "difference", "difference_ci", "margin", "decision", "champion_after"])
        + f"<p>{html.escape(promotion['reason'])}.</p><p class='meta'>Both students score every fully labelled owner of the "
          "challenger's evaluation month; each is ranked by the lead-list rule (top K eligible owners by its "
          "score, without the per-region/dealer cap). The challenger becomes <code>champion</code> when the lower "
          "end of the paired-bootstrap interval of its P@K minus the champion's is at least −margin "
          "(<code>tracking.promotion_margin</code>), or when there is no champion yet.</p>")]


def report_dir(cfg: Config, store: TableStore, pipeline_run_id: str) -> str:
    return f"{(cfg.report.dir or f'{store.root}/reports').rstrip('/')}/{pipeline_run_id}"


def build_report(spark: SparkSession, cfg: Config, store: TableStore, run: str | None = None) -> dict[str, Any]:
    """Stage ``report`` for pipeline run ``run`` (default: the newest). Returns the report's path
    and its headline numbers."""
    data = collect(spark, cfg, store, run)
    numbers = report_numbers(data, cfg)
    pngs = render_figures(data, numbers, cfg)
    backtest = latest_run(spark, store)
    numbers["backtest"] = backtest_numbers(*backtest) if backtest else None
    pngs.update(backtest_figures(numbers["backtest"]))
    numbers["tuning"] = tuning_numbers(store, cfg)
    out = report_dir(cfg, store, data.pipeline["run_id"])
    for name, png in pngs.items():
        files.write_bytes(spark, f"{out}/figures/{name}.png", png)
    files.write_text(spark, f"{out}/report.json", json.dumps(finite(numbers), indent=2, sort_keys=True, allow_nan=False))
    files.write_text(spark, f"{out}/report.html", render_html(numbers, pngs))
    ev = numbers["evaluation"]
    return {"pipeline_run_id": data.pipeline["run_id"], "report": f"{out}/report.html", "dir": out,
            "figures": sorted(pngs), "evaluation_month": ev["month"],
            "headline": {s: {m: ev["metrics"][s][m] for m in METRIC_COLUMNS} for s in ev["scorers"]}}


def log_report(spark: SparkSession, cfg: Config, store: TableStore, tracker: Any, summary: dict[str, Any]) -> None:
    """Copy the report's files into the MLflow run as artifacts under ``report/``."""
    if not tracker.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp:
        names = ["report.html", "report.json", *[f"figures/{f}.png" for f in summary["figures"]]]
        for name in names:
            os.makedirs(os.path.dirname(f"{tmp}/{name}"), exist_ok=True)
            with open(f"{tmp}/{name}", "wb") as fh:
                fh.write(files.read_bytes(spark, f"{summary['dir']}/{name}"))
        tracker.log_artifacts(tmp, "report")
