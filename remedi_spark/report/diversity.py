"""The diversity section of the report: how differently the base models rank the same rows.

REMEDI's fusion needs experts that disagree; the paper reports rank correlations of 0.6–0.8
between its base models. On the training owners' out-of-fold rows (``meta_features`` with
``fold >= 0``: the pivoted OOF predictions, the rows the fusion learns from), every pair of base models gets

* the Spearman rank correlation of their predictions on the same (owner, month) rows, and
* the overlap of their top-K lists: ``|A ∩ B| / K`` with ``K = k_for(rows, metric_k_fraction)``,
  as the metrics choose K (ties at the cut keep the rows' order: month, then owner).

Input is the OOF matrix :func:`remedi_spark.report.collect.oof_matrix` reads: one row per
(user_id, month) with the label ``y`` and one column ``p_<model>`` per base model. The functions
here are pure (numpy/pandas); :func:`diversity_section` renders the numbers. No intervals: the
section states the rows, owners and positives behind the numbers instead. (An exact owner bootstrap
of the Spearman matrix re-ranks every row per replicate: 0.17 s per replicate for 11 models on a
synthetic 450k-row matrix on 2 loaded cores, minutes for the configured 1,000 replicates, more
than the rest of the report takes.)
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..metrics import k_for
from .html import figure, table

PREFIX = "p_"  # column of a model's prediction in the OOF matrix
FIGURE = "diversity"
CAPTION = "Base models on the OOF rows: Spearman rank correlation (left) and top-K overlap |A ∩ B| / K (right)"
PAPER_RANGE = (0.6, 0.8)  # REMEDI's reported rank correlations between base models


def matrix_models(matrix: pd.DataFrame) -> list[str]:
    """The base models of an OOF matrix: its ``p_<model>`` columns, in column order."""
    return [c[len(PREFIX):] for c in matrix.columns if c.startswith(PREFIX)]


def spearman_matrix(preds: np.ndarray) -> np.ndarray:
    """Spearman rank correlations between the columns of ``preds`` (rows × models): the Pearson
    correlation of their average ranks (ties share their mean rank). A constant column's
    correlations are NaN, its diagonal too."""
    ranks = rankdata(np.asarray(preds, dtype=float), axis=0)
    centred = ranks - ranks.mean(axis=0)
    cov = centred.T @ centred
    scale = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(scale, scale)
    np.fill_diagonal(corr, np.where(scale > 0, 1.0, np.nan))
    return np.clip(corr, -1.0, 1.0)


def top_k_sets(preds: np.ndarray, k: int) -> list[np.ndarray]:
    """Each column's top ``k`` rows (highest scores first; ties keep the row order, as the metrics do)."""
    preds = np.asarray(preds, dtype=float)
    return [np.argsort(-preds[:, j], kind="stable")[:k] for j in range(preds.shape[1])]


def top_k_overlap(preds: np.ndarray, k: int) -> np.ndarray:
    """``|A ∩ B| / k`` for the top-``k`` row sets A, B of every pair of columns of ``preds``."""
    k = min(max(int(k), 1), len(preds))
    member = np.zeros((preds.shape[1], len(preds)), dtype=np.float64)
    for j, rows in enumerate(top_k_sets(preds, k)):
        member[j, rows] = 1.0
    return member @ member.T / k


def _spread(spearman: np.ndarray) -> dict[str, Any]:
    """Minimum, median and maximum of the pairs' correlations and how many lie in :data:`PAPER_RANGE`."""
    off = spearman[np.triu_indices(len(spearman), 1)]
    off = off[~np.isnan(off)]
    if not len(off):
        return {"spearman_min": None, "spearman_median": None, "spearman_max": None, "pairs_in_paper_range": 0}
    return {"spearman_min": float(off.min()), "spearman_median": float(np.median(off)),
            "spearman_max": float(off.max()),
            "pairs_in_paper_range": int(((off >= PAPER_RANGE[0]) & (off <= PAPER_RANGE[1])).sum())}


def diversity_numbers(matrix: pd.DataFrame | None, k_fraction: float) -> dict[str, Any]:
    """The section's numbers from the OOF matrix (see the module docstring): the models (matrix
    order), the rows, owners and positive rows behind every number, K, the Spearman and top-K
    overlap matrices, one record per pair and the spread of the correlations. Rows lacking a model's
    prediction or the label are left out (``incomplete_rows``). With fewer than 2 models, or no
    complete row: ``{"models": [...], "skipped": <why>}``."""
    if matrix is None:
        return {"models": [], "skipped": "no meta_features table (run train-base and meta-features first)"}
    models = matrix_models(matrix)
    if len(models) < 2:
        return {"models": models, "skipped": f"the OOF rows hold {len(models)} base model(s); comparing them "
                                             "needs at least 2"}
    columns = [PREFIX + m for m in models]
    complete = matrix.dropna(subset=[*columns, "y"]).sort_values(["month", "user_id"], kind="stable")
    if complete.empty:
        return {"models": models, "skipped": "no OOF row has every base model's prediction and a label"}
    preds = complete[columns].to_numpy(dtype=float)
    k = k_for(len(preds), k_fraction)
    spearman = spearman_matrix(preds)
    overlap = top_k_overlap(preds, k)
    pairs = [{"name": f"{a} vs {b}", "a": a, "b": b, "spearman": float(spearman[i, j]),
              "top_k_overlap": float(overlap[i, j]), "top_k_shared": int(round(overlap[i, j] * k))}
             for i, a in enumerate(models) for j, b in enumerate(models) if j > i]
    return {"models": models, "rows": int(len(preds)), "owners": int(complete["user_id"].nunique()),
            "positives": int(complete["y"].sum()), "incomplete_rows": int(len(matrix) - len(preds)),
            "k": int(k), "k_fraction": float(k_fraction), "spearman": spearman.tolist(),
            "top_k_overlap": overlap.tolist(), "pairs": pairs, **_spread(spearman)}


def diversity_section(numbers: dict[str, Any] | None, pngs: dict[str, bytes]) -> list[tuple[str, str]]:
    """The report's "Diversity of the base models" section: the heat maps (``pngs[FIGURE]``, when
    rendered), one row per pair (most correlated first) and the rows, owners and positives behind
    them; a note instead when :func:`diversity_numbers` skipped (no section without numbers)."""
    title = "Diversity of the base models"
    if not numbers:
        return []
    if numbers.get("skipped"):
        return [(title, f"<p class='meta'>Skipped: {html.escape(numbers['skipped'])}.</p>")]
    spread = (f"here {numbers['spearman_min']:.3f} to {numbers['spearman_max']:.3f} (median "
              f"{numbers['spearman_median']:.3f}), {numbers['pairs_in_paper_range']} of {len(numbers['pairs'])} "
              "pairs in that range" if numbers["spearman_min"] is not None else "here no pair has a defined "
              "correlation (a model predicts a constant)")
    intro = (f"<p>Every pair of the {len(numbers['models'])} base models on the training owners' out-of-fold rows "
             f"(the rows the fusion learns from): {numbers['rows']:,} rows of {numbers['owners']:,} owners, "
             f"{numbers['positives']:,} positive rows, each with every model's prediction. <i>spearman</i>: rank "
             "correlation of the two models' predictions over all rows; <i>top-K overlap</i>: the share of one "
             f"model's top K = {numbers['k']:,} rows ({100 * numbers['k_fraction']:.1f}% of the rows, as the metrics "
             f"take K) that is also in the other's. REMEDI reports rank correlations of {PAPER_RANGE[0]}–"
             f"{PAPER_RANGE[1]} between its base models; {spread}. A pair near 1 ranks alike and gives the fusion "
             "little the other does not.</p>")
    note = ("<p class='meta'>Point estimates on all the rows above (no intervals)."
            + (f" {numbers['incomplete_rows']:,} OOF rows lack a model's prediction or the label and are left out."
               if numbers["incomplete_rows"] else "") + "</p>")
    shown = figure(pngs[FIGURE], CAPTION) if FIGURE in pngs else ""
    rows = sorted(numbers["pairs"], key=lambda r: -r["spearman"] if r["spearman"] == r["spearman"] else 2.0)
    return [(title, intro + shown + table(rows, ["name", "spearman", "top_k_overlap", "top_k_shared"]) + note)]
