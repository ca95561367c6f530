"""The tuning section of the report: default vs tuned per base model, and what the search found.

Default and tuned are two train-base runs under the same root: for each model the newest run whose
config held no ``base_models.tuned_params`` for it (default) and the newest that did (tuned, trained
through the overlay), both measured on the OOF rows (training owners outside the evaluation month)
with their ``base_model_metrics`` intervals. The comparison itself is the paired difference tuned −
default: each run's OOF predictions are read back at the Delta version that run wrote (time travel;
a later train-base replaces the partition), joined on the rows both predicted, and bootstrapped
over owners with one set of weights for both. Beside them, from the newest ``tune`` run: trials, the
best inner-fold metric and Optuna's fANOVA parameter importance."""
from __future__ import annotations

from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..interval_text import difference_text
from ..metrics import bootstrap, difference_verdict
from .html import table

METRICS = ("logloss", "auc", "precision_at_k")
KEYS = ["user_id", "month"]


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


def written_version(manifest: dict[str, Any], table: str, partition: str) -> int | None:
    """The Delta version of ``table`` at which ``manifest``'s run wrote ``partition`` (its newest such
    write), or None when it did not write it."""
    versions = [w["version"] for w in manifest.get("writes") or []
                if w["table"] == table and partition in (w.get("partitions") or [])]
    return max(versions) if versions else None


def _at_version(store: Any, table: str, version: int) -> DataFrame:
    # straight from the Delta log, not store.read: the report's own manifest records the versions it
    # reports on, and these older versions would overwrite them
    return store.spark.read.format("delta").option("versionAsOf", version).load(store.path(table))


# the rows a difference is measured on: out-of-fold rows (training owners outside the evaluation
# month: the rows the search's inner folds scored, so not free of its selection) and the held-out
# owners (never read by the search, predicted by each run's refit)
ROWS = {"oof": lambda: F.col("fold") >= 0, "held_out": lambda: F.col("split") == "test"}  # Columns need a session


def paired_difference(store: Any, cfg: Any, model: str, default: dict[str, Any], tuned: dict[str, Any],
                      rows: str = "oof") -> dict | None:
    """Tuned − default metrics of ``model`` on ``rows`` (:data:`ROWS`) from the two train-base runs'
    manifests: both runs' predictions at the versions they wrote, the rows both predicted, labels
    from the features version the tuned run read, a paired owner bootstrap (``evaluation.bootstrap``)
    with :data:`METRICS` differences and their verdicts. None when a run's predictions cannot be found."""
    versions = {kind: written_version(m, "oof_predictions", model) for kind, m in
                (("default", default), ("tuned", tuned))}
    features_version = (tuned.get("reads") or {}).get("features")
    if None in versions.values() or features_version is None:
        return None
    preds = [_at_version(store, "oof_predictions", v).filter((F.col("model") == model) & ROWS[rows]())
             .select(*KEYS, F.col("p").alias(kind)) for kind, v in versions.items()]
    labels = _at_version(store, "features", features_version).select(*KEYS, "y")
    pdf = preds[0].join(preds[1], KEYS).join(labels, KEYS).orderBy(*KEYS).toPandas()
    if pdf.empty:
        return None
    b = cfg.evaluation.bootstrap
    y = pdf["y"].to_numpy()
    result = bootstrap(y, {"tuned": pdf["tuned"].to_numpy(), "default": pdf["default"].to_numpy()},
                       pdf["user_id"].to_numpy(), cfg.base_models.metric_k_fraction, replicates=b.replicates,
                       seed=b.seed, level=b.level, pairs=[("tuned", "default")])["differences"][("tuned", "default")]
    return {"rows": int(len(pdf)), "positives": int(y.sum()), "level": b.level,
            **{metric: {"estimate": iv.estimate, "low": iv.low, "high": iv.high,
                        "verdict": difference_verdict(iv, lower_is_better=metric == "logloss")}
               for metric, iv in result.items() if metric in METRICS}}


def _shown(difference: dict[str, Any] | None, metric: str) -> str:
    """A :func:`paired_difference`'s ``metric`` as the shared "estimate [low, high] reading" text
    (:func:`remedi_spark.interval_text.difference_text`); "" without one."""
    d = (difference or {}).get(metric)
    if not d:
        return ""
    row = {f"{metric}_diff": d["estimate"], f"{metric}_diff_ci_low": d["low"], f"{metric}_diff_ci_high": d["high"],
           "ci_level": difference["level"]}
    digits = 5 if metric == "logloss" else 4
    return difference_text(row, metric, f"+.{digits}f", lower_is_better=metric == "logloss") or ""


def tuning_numbers(store: Any, cfg: Any = None) -> dict[str, Any] | None:
    """:func:`compare_runs` over ``store``'s manifests and ``base_model_metrics``, each row with its
    :func:`paired_difference` under ``difference`` (when ``cfg`` is given); None when no model has
    both runs."""
    if not store.exists("base_model_metrics"):
        return None
    manifests = store.manifests()
    rows = compare_runs(manifests, store.read("base_model_metrics").toPandas())
    if cfg is not None:
        by_id = {m["run_id"]: m for m in manifests}
        for row in rows:
            runs = by_id[row["default_run"]], by_id[row["tuned_run"]]
            row["difference"] = paired_difference(store, cfg, row["name"], *runs)
            row["difference_held_out"] = paired_difference(store, cfg, row["name"], *runs, rows="held_out")
            for metric in METRICS:
                row[f"diff_{metric}"] = _shown(row["difference"], metric)
                row[f"held_out_diff_{metric}"] = _shown(row["difference_held_out"], metric)
            row["positives"] = (row["difference"] or {}).get("positives")
            row["held_out_positives"] = (row["difference_held_out"] or {}).get("positives")
    return {"rows": rows} if rows else None


def tuning_section(numbers: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The report's "Tuning" section (none without a model trained both ways)."""
    if not numbers:
        return []
    rows = numbers["rows"]
    columns = ["name", "rows", "positives", *[f"{kind}_{m}_ci" for m in METRICS for kind in ("default", "tuned")],
               *[f"{where}diff_{m}" for where in ("", "held_out_") for m in METRICS
                 if any(r.get(f"{where}diff_{m}") for r in rows)], "held_out_positives", "trials"]
    importance = "".join(
        f"<p><b>{r['name']}</b>: " + ", ".join(f"{k} {v:.2f}" for k, v in r["importance"].items()) + "</p>"
        for r in rows if r.get("importance"))
    level = rows[0]["ci_level"]
    intro = ("<p>Each base model trained twice by train-base: with its configured params (default) and through the "
             "tuning overlay (tuned). Metrics on the out-of-fold rows (training owners outside the evaluation month), "
             f"{100 * level:.0f}% intervals from a bootstrap over owners. The diff columns are tuned − default on the "
             "rows both runs predicted, a paired bootstrap (one set of owner weights for both runs' predictions, read "
             "back at the Delta versions the runs wrote); an interval containing 0 is no difference. Log loss: lower "
             "is better. The OOF rows are the rows the search's inner folds scored, so the OOF difference is not "
             "free of the search's selection; the held_out columns are the held-out owners, which the search never "
             "read (each run's refit model).</p>")
    params = "".join(f"<p class='meta'>{r['name']}: tuned run <code>{r['tuned_run']}</code> with {r['tuned_params']}; "
                     f"default run <code>{r['default_run']}</code></p>" for r in rows)
    return [("Tuning: default vs tuned", intro + table(rows, columns) + params
             + ("<h3>parameter importance (Optuna fANOVA over the complete trials)</h3>" + importance
                if importance else ""))]
