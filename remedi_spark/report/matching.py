"""The report's "Neural experts against LightGBM on the same columns" section.

A neural base model is only worth its training cost to the fusion if it ranks about as well as a
tree model on the same inputs. Each torch base model is paired with the first LightGBM base model
(``objective: logloss``, in config order) that reads the same ``feature_group`` (null = every
feature), and the two are compared on the training owners' out-of-fold rows (the OOF matrix of
:func:`remedi_spark.report.collect.oof_matrix`, the rows the fusion learns from): AUC of each, the
paired difference neural − LightGBM with its bootstrap interval over owners
(:func:`remedi_spark.metrics.bootstrap`), its reading (a difference whose interval contains 0 is
"no difference") and whether the point difference is within ``report.neural_auc_tolerance``.
A torch model with no LightGBM on its columns is listed with that note instead of a number.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..config import BootstrapSettings, ModelSpec
from ..interval_text import difference_text
from ..metrics import bootstrap, difference_verdict
from .diversity import PREFIX, matrix_models
from .html import table


def matching_pairs(specs: Sequence[ModelSpec], available: Sequence[str]) -> list[tuple[str, str | None, str | None]]:
    """``(neural model, its LightGBM or None, feature group)`` for every torch model of ``specs`` whose
    predictions are in ``available``: the first logloss LightGBM of ``specs`` in ``available`` with
    the same ``feature_group``."""
    present = set(available)
    trees = [s for s in specs if s.family == "lgbm" and s.objective == "logloss" and s.name in present]
    out = []
    for spec in specs:
        if spec.backend != "torch" or spec.name not in present:
            continue
        match = next((t.name for t in trees if t.feature_group == spec.feature_group), None)
        out.append((spec.name, match, spec.feature_group))
    return out


def matching_numbers(matrix: pd.DataFrame | None, specs: Sequence[ModelSpec], k_fraction: float,
                     settings: BootstrapSettings, tolerance: float) -> dict[str, Any]:
    """One record per torch base model (see the module docstring) over the OOF rows holding every
    compared model's prediction and the label, plus those rows', owners' and positives' counts.
    ``{"skipped": <why>}`` when there is nothing to compare."""
    if matrix is None:
        return {"skipped": "no meta_features table (run train-base and meta-features first)"}
    pairs = matching_pairs(specs, matrix_models(matrix))
    if not pairs:
        return {"skipped": "no neural base model in the OOF rows"}
    compared = [(n, t) for n, t, _ in pairs if t is not None]
    columns = sorted({PREFIX + m for pair in compared for m in pair})
    complete = matrix.dropna(subset=[*columns, "y"]).sort_values(["month", "user_id"], kind="stable")
    y = complete["y"].to_numpy(dtype=np.int64)
    differences: dict[tuple[str, str], dict[str, Any]] = {}
    intervals: dict[str, dict[str, Any]] = {}
    if compared and 0 < y.sum() < len(y):
        boot = bootstrap(y, {c[len(PREFIX):]: complete[c].to_numpy(dtype=float) for c in columns},
                         complete["user_id"].to_numpy(), k_fraction, replicates=settings.replicates,
                         seed=settings.seed, level=settings.level, pairs=compared)
        differences, intervals = boot["differences"], boot["intervals"]
    records = []
    for neural, tree, group in pairs:
        row: dict[str, Any] = {"name": f"{neural} − {tree}" if tree else neural, "neural": neural,
                               "lightgbm": tree or "", "columns": group or "all features"}
        if tree is None:
            row["reading"] = "no logloss LightGBM on these columns"
        elif (neural, tree) in differences:
            diff = differences[(neural, tree)]["auc"]
            row.update(auc_neural=intervals[neural]["auc"].estimate, auc_lightgbm=intervals[tree]["auc"].estimate,
                       auc_diff=diff.estimate, auc_diff_ci_low=diff.low, auc_diff_ci_high=diff.high,
                       ci_level=diff.level, reading=difference_verdict(diff),
                       within_tolerance=bool(diff.estimate >= -tolerance))
        else:
            row["reading"] = "no rows with both labels (the OOF rows hold one class)"
        # the shown cell: "difference [interval] reading", or why there is no difference
        row["auc_diff_text"] = difference_text(row, "auc", "+.4f") or row["reading"]
        records.append(row)
    return {"pairs": records, "rows": int(len(complete)), "owners": int(complete["user_id"].nunique()),
            "positives": int(y.sum()), "tolerance": float(tolerance), "ci_level": float(settings.level)}


def matching_section(numbers: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The section (title, html); a note when :func:`matching_numbers` skipped, nothing without numbers."""
    title = "Neural experts against LightGBM on the same columns"
    if not numbers:
        return []
    if numbers.get("skipped"):
        return [(title, f"<p class='meta'>Skipped: {html.escape(numbers['skipped'])}.</p>")]
    intro = (f"<p>Each neural base model against the logloss LightGBM that reads the same feature columns, on the "
             f"training owners' out-of-fold rows: {numbers['rows']:,} rows of {numbers['owners']:,} owners, "
             f"{numbers['positives']:,} positive rows. <i>auc_diff_text</i> = neural − LightGBM with its "
             f"{100 * numbers['ci_level']:.0f}% paired-bootstrap interval over owners and its reading (an interval "
             f"containing 0 is no difference); <i>within_tolerance</i>: the point difference is above "
             f"−{numbers['tolerance']:g} (report.neural_auc_tolerance).</p>")
    columns = ["name", "columns", "auc_neural", "auc_lightgbm", "auc_diff_text", "within_tolerance"]
    return [(title, intro + table(numbers["pairs"], columns))]
