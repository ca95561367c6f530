"""The backtest in the report: a table with intervals and one figure per backtest month, from the
newest run in ``backtest_results``. Used by the pipeline's report (a section, when the table exists
under its root) and by the backtest stage itself (a page of its own, ``backtest.html``, beside the
pipeline reports: a backtest root need not hold a pipeline run)."""
from __future__ import annotations

import io
import json
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from ..config import Config  # noqa: E402
from ..io import files  # noqa: E402
from ..io.store import TableStore  # noqa: E402
from .html import figure, page, table  # noqa: E402

TABLE = "backtest_results"
RANKER_COLORS = {"student": "#1f77b4", "teacher": "#ff7f0e", "best_base": "#2ca02c", "stacking_lr": "#9467bd",
                 "simple_average": "#8c564b", "oracle": "#7f7f7f"}
SHOWN = (("precision_at_k", "lead-list precision", 100, "%"), ("business_recall_at_k", "Business Recall", 100, "%"),
         ("recall_at_k", "recall", 100, "%"), ("lift_at_k", "lift", 1, ""), ("auc", "AUC", 1, ""))
PLOTTED = ("precision_at_k", "business_recall_at_k", "auc")
DISPLAY = {"recall_at_k": "recall"}  # display column of a metric, where the report's labels have none
FOOTNOTE = ("Lead list = the top K owners of the month after the business filters (the lead-list stage's rule), for "
            "each ranker. <b>Business Recall</b> follows REMEDI's per-month definition: buyers in the list / (the "
            "month's buyers in T+1..T+3 / 3), i.e. against an average month's buyers. Business Recall exceeds "
            "100% whenever the monthly list catches more than a third of the three-month buyers, as a list of 7.5% "
            "of the owners does at this positive rate; <b>recall</b> (buyers in the list / all three-month buyers) "
            "is shown beside it. "
            "AUC ranks every owner of the month (no filter). Intervals: percentile intervals of a paired bootstrap "
            "over owners, one set of draws shared by every month and ranker; a difference (a − b) whose interval "
            "contains 0 is marked \"no difference\". Mean rows: the mean of the monthly values (each month its own "
            "list), never one list over pooled months; their intervals are percentiles of the replicates' means.")


def latest_run(spark: SparkSession, store: TableStore) -> tuple[pd.DataFrame, int] | None:
    """The rows of the newest backtest run under ``store`` (run ids start with the run's timestamp)
    and the table's version, or None when ``backtest_results`` does not exist there."""
    if not store.exists(TABLE):
        return None
    version = store.version(TABLE)
    df = spark.read.format("delta").option("versionAsOf", version).load(store.path(TABLE))
    newest = df.agg(F.max("run_id")).first()[0]
    if newest is None:
        return None
    return df.filter(F.col("run_id") == newest).toPandas(), version


def _interval_text(value: Any, low: Any, high: Any, scale: float, unit: str, digits: int) -> str:
    if value is None or pd.isna(value):
        return ""
    text = f"{scale * value:.{digits}f}{unit}"
    if low is not None and high is not None and pd.notna(low) and pd.notna(high):
        text += f" [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
    return text


def display_rows(results: pd.DataFrame) -> list[dict[str, Any]]:
    """One display record per row: each metric as "value [low, high]", and on difference rows a
    verdict per metric ("no difference" when the interval contains 0)."""
    out = []
    order = {"ranker": 0, "difference": 1, "mean": 2, "mean_difference": 3}
    frame = results.assign(_o=results["kind"].map(order)).sort_values(["_o", "month"], kind="stable")
    for r in frame.to_dict("records"):
        rec = {"name": r["ranker"], "kind": r["kind"], "month": r["month"], "model": r["model"],
               "training_months": r["training_months"], "positives": int(r["positives"]), "k": int(r["k"]),
               "hits": "" if pd.isna(r["hits"]) else f"{r['hits']:.1f}"}
        verdicts = []
        for metric, label, scale, unit in SHOWN:
            digits = 2 if unit else 3
            rec[DISPLAY.get(metric, metric)] = _interval_text(r[metric], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"], scale, unit, digits)
            if r["kind"].endswith("difference") and pd.notna(r[f"{metric}_ci_low"]):
                if r[f"{metric}_ci_low"] > 0:
                    verdicts.append(f"{label}: a better")
                elif r[f"{metric}_ci_high"] < 0:
                    verdicts.append(f"{label}: b better")
        if r["kind"].endswith("difference"):
            rec["verdict"] = "; ".join(verdicts) or "no difference"
        out.append(rec)
    return out


def backtest_numbers(results: pd.DataFrame, version: int) -> dict[str, Any]:
    """What the report shows of one backtest run: its months, display rows and the raw rows."""
    months = sorted(m for m in results["month"].unique() if m != "mean")
    raw = json.loads(results.to_json(orient="records"))
    return {"run_id": str(results["run_id"].iloc[0]), "version": version, "months": months,
            "ci_level": float(results["ci_level"].iloc[0]), "replicates": int(results["replicates"].iloc[0]),
            "rows": display_rows(results), "results": raw}


def month_chart(results: pd.DataFrame, month: str) -> bytes:
    """Lead-list precision, Business Recall and AUC of every ranker in ``month`` with their intervals."""
    part = results[(results["month"] == month) & results["kind"].isin(["ranker", "mean"])].iloc[::-1]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(11, 0.45 * len(part) + 1.6), sharey=True)
    for ax, metric in zip(axes, PLOTTED):
        scale = 100 if metric != "auc" else 1
        value = scale * part[metric].to_numpy(float)
        low, high = scale * part[f"{metric}_ci_low"].to_numpy(float), scale * part[f"{metric}_ci_high"].to_numpy(float)
        err = np.vstack([np.clip(value - low, 0, None), np.clip(high - value, 0, None)])
        y = np.arange(len(part))
        ax.barh(y, value, xerr=np.nan_to_num(err), color=[RANKER_COLORS.get(r, "#17becf") for r in part["ranker"]],
                alpha=0.85, capsize=3)
        ax.set_yticks(y, part["ranker"])
        label = dict((m, t) for m, t, _, _ in SHOWN)[metric]
        ax.set(title=label + (" (%)" if scale == 100 else ""))
        if metric == "business_recall_at_k":  # 100% = an average month's buyers (a third of T+1..T+3's)
            ax.axvline(100, color="black", linestyle=":", linewidth=1)
        if metric == "auc":
            ax.set_xlim(max(0.0, float(np.nanmin(low)) - 0.05) if len(low) else 0.5, 1.0)
    first = part.iloc[0]
    heading = "mean over the backtest months" if month == "mean" else (
        f"{month}: {int(first['positives']):,} buyers in T+1..T+3, K = {int(first['k']):,}")
    fig.suptitle(f"Backtest {heading} ({100 * float(first['ci_level']):.0f}% intervals)", fontsize=10)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def backtest_figures(numbers: dict[str, Any] | None) -> dict[str, bytes]:
    """One PNG per backtest month (``backtest_<month>``) and one for the mean (``backtest_mean``)."""
    if not numbers:
        return {}
    results = pd.DataFrame(numbers["results"])
    return {f"backtest_{m}": month_chart(results, m) for m in [*numbers["months"], "mean"]
            if (results["month"] == m).any()}


def backtest_section(numbers: dict[str, Any] | None, pngs: dict[str, bytes]) -> list[tuple[str, str]]:
    """The report's "Backtest" section (none without a backtest run)."""
    if not numbers:
        return []
    columns = ["name", "kind", "month", "model", "positives", "k", "hits", *[DISPLAY.get(m, m) for m, *_ in SHOWN],
               "verdict"]
    rows = numbers["rows"]
    months = ", ".join(numbers["months"])
    intro = (f"<p>Walk-forward backtest <code>{numbers['run_id']}</code> (<code>backtest_results</code> version "
             f"{numbers['version']}) over {months}: for each month T the chain was trained only on months t with "
             "t + 3 ≤ T (their three-month label windows had closed), then every owner of T was scored and listed. "
             "Training months per month: "
             + "; ".join(f"{r['month']}: {r['training_months'].split(',')[0]}..{r['training_months'].split(',')[-1]}"
                         for r in rows if r["kind"] == "ranker" and r["name"] == "student") + ".</p>")
    figs = "<div class='figs'>" + "".join(
        figure(pngs[f"backtest_{m}"], f"Backtest {m}: lead-list precision, Business Recall and AUC per ranker")
        for m in [*numbers["months"], "mean"] if f"backtest_{m}" in pngs) + "</div>"
    notes = (f"<p class='meta'>{FOOTNOTE} Level {100 * numbers['ci_level']:.0f}%, "
             f"{numbers['replicates']:,} replicates.</p>")
    return [("Backtest", intro + table(rows, columns) + notes + figs)]


def write_backtest_report(spark: SparkSession, cfg: Config, store: TableStore, results: pd.DataFrame, run_id: str,
                          months: dict[str, dict[str, Any]]) -> str:
    """``<report dir>/<run id>/backtest.html`` (+ ``backtest.json``, ``figures/*.png``) for a backtest
    run's ``results`` rows; returns the page's path."""
    from .build import finite, report_dir  # build imports this module

    numbers = backtest_numbers(results, store.version(TABLE) if store.exists(TABLE) else -1)
    numbers["chains"] = months
    pngs = backtest_figures(numbers)
    out = report_dir(cfg, store, run_id)
    for name, png in pngs.items():
        files.write_bytes(spark, f"{out}/figures/{name}.png", png)
    files.write_text(spark, f"{out}/backtest.json", json.dumps(finite(numbers), indent=2, sort_keys=True,
                                                                allow_nan=False, default=str))
    files.write_text(spark, f"{out}/backtest.html", page("remedi-spark backtest", backtest_section(numbers, pngs),
                                                         f"backtest run <code>{run_id}</code>"))
    return f"{out}/backtest.html"
