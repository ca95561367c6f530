"""The tuning section of the report: default vs tuned per base model, and what the search found.

Default and tuned are two train-base runs under the same root: for each model the newest run whose
config held no ``base_models.tuned_params`` for it (default) and the newest that did (tuned, trained
through the overlay), both measured on the OOF rows (training owners outside the evaluation month)
with their ``base_model_metrics`` intervals. The two intervals come from separate bootstraps of two
models' predictions: shown side by side, not as a paired difference (only the newest run's OOF
predictions are kept). Beside them, from the newest ``tune`` run: trials, the best inner-fold metric
and Optuna's fANOVA parameter importance."""
from __future__ import annotations

from typing import Any

import pandas as pd

from .html import table

METRICS = ("logloss", "auc", "precision_at_k")


def _ci(row: pd.Series, metric: str) -> str:
    low, high = row.get(f"{metric}_ci_low"), row.get(f"{metric}_ci_high")
    value = row.get(metric)
    if value is None or pd.isna(value):
        return ""
    digits = 5 if metric == "logloss" else 4
    ci = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and not pd.isna(low) else ""
    return f"{value:.{digits}f}{ci}"


def compare_runs(manifests: list[dict[str, Any]], metrics: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per base model that has both a default and a tuned train-base run (``metrics``: the
    ``base_model_metrics`` rows, ``manifests``: every run manifest, oldest first): the OOF metrics of
    each with their intervals, the run ids and the tuned params; plus the newest tune run's trials,
    best value and importance for the model."""
    runs = {m["run_id"]: m for m in manifests if m["job"] == "train-base"}
    tune = next((m for m in reversed(manifests) if m["job"] == "tune"), None)
    oof = metrics[(metrics["split"] == "oof") & metrics["run_id"].isin(list(runs))]
    out = []
    for model, rows in oof.groupby("model", sort=True):
        newest: dict[str, tuple[str, pd.Series, dict]] = {}
        for _, row in rows.iterrows():
            manifest = runs[row["run_id"]]
            tuned = ((manifest["conf"].get("base_models") or {}).get("tuned_params") or {}).get(model)
            kind = "tuned" if tuned else "default"
            if kind not in newest or manifest["started_at"] > runs[newest[kind][0]]["started_at"]:
                newest[kind] = (row["run_id"], row, tuned or {})
        if set(newest) != {"default", "tuned"}:
            continue
        record: dict[str, Any] = {"name": model, "rows": int(newest["tuned"][1]["rows"]),
                                  "default_run": newest["default"][0], "tuned_run": newest["tuned"][0],
                                  "tuned_params": newest["tuned"][2], "ci_level": float(newest["tuned"][1]["ci_level"])}
        for metric in METRICS:
            for kind in ("default", "tuned"):
                row = newest[kind][1]
                record[f"{kind}_{metric}"] = float(row[metric]) if not pd.isna(row[metric]) else None
                record[f"{kind}_{metric}_ci"] = _ci(row, metric)
        searched = ((tune or {}).get("info") or {}).get("models", {}).get(model)
        if searched:
            record.update(trials=searched["trials"], search_metric=searched["metric"],
                          search_best=searched["best_value"], importance=searched.get("importance") or {})
        out.append(record)
    return out


def tuning_numbers(store: Any) -> dict[str, Any] | None:
    """:func:`compare_runs` over ``store``'s manifests and ``base_model_metrics``; None when no model
    has both runs."""
    if not store.exists("base_model_metrics"):
        return None
    rows = compare_runs(store.manifests(), store.read("base_model_metrics").toPandas())
    return {"rows": rows} if rows else None


def tuning_section(numbers: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The report's "Tuning" section (none without a model trained both ways)."""
    if not numbers:
        return []
    rows = numbers["rows"]
    columns = ["name", "rows", *[f"{kind}_{m}_ci" for m in METRICS for kind in ("default", "tuned")], "trials"]
    importance = "".join(
        f"<p><b>{r['name']}</b>: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importance"].items()) + "</p>"
        for r in rows if r.get("importance"))
    level = rows[0]["ci_level"]
    intro = ("<p>Each base model trained twice by train-base: with its configured params (default) and through the "
             "tuning overlay (tuned). Metrics on the out-of-fold rows (training owners outside the evaluation month), "
             f"{100 * level:.0f}% intervals from a bootstrap over owners per run: two separate intervals, not a "
             "paired difference.</p>")
    params = "".join(f"<p class='meta'>{r['name']}: tuned run <code>{r['tuned_run']}</code> with {r['tuned_params']}; "
                     f"default run <code>{r['default_run']}</code></p>" for r in rows)
    return [("Tuning: default vs tuned", intro + table(rows, columns) + params
             + ("<h3>parameter importance (Optuna fANOVA over the complete trials)</h3>" + importance
                if importance else ""))]
