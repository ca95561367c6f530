"""Lead-list metrics of several rankers over several backtest months, with intervals from a paired
bootstrap over owners (:mod:`remedi_spark.metrics`).

**The lead list as a ranking.** A ranker's lead list for month T is the top K of the owners no
business filter excludes (capped per ``lead_list.cap_column`` value when a cap is set), ordered by
score, ties by owner id — exactly the lead-list stage's rule. :func:`list_ranking` turns a score
into a ranking whose top ``K_list = min(K, eligible owners)`` over *every* owner of T is that list
(excluded owners rank below every eligible one), so :func:`remedi_spark.metrics.lead_metrics` at
``K_list`` over every owner gives the list's numbers as the paper defines them per monthly list:
precision = hits / K_list, Business Recall = hits / (T's three-month buyers / 3), lift = precision /
T's positive rate. Plain recall = hits / all three-month buyers = Business Recall / 3. AUC is the
ranker's own scores over every owner (filters play no part), through a tie-preserving rank
transform (AUC depends on the order only; probabilities and a regressor's scores alike).

**Intervals.** Owners are drawn with replacement (``evaluation.bootstrap``: replicates, seed,
level) from the union of the backtest months' owners, one set of draws
(:func:`remedi_spark.metrics.owner_resample_weights`) shared by every month and every ranker: an
owner's rows in all months move together, differences between rankers are taken replicate by
replicate (paired), and the mean over months of a replicate's monthly values gives the mean's
replicate. Each replicate's monthly values are :func:`remedi_spark.metrics.weighted_lead_metrics`
with the list length ``K_list / owners`` of the drawn sample. Intervals are percentiles at ``level``
of the finite replicates; estimates are the metrics on the original rows, not bootstrap means.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..metrics import lead_count, lead_metrics, owner_resample_weights, weighted_lead_metrics
from .rankers import MonthRankers

METRICS = ("precision_at_k", "business_recall_at_k", "recall_at_k", "lift_at_k", "auc")
LIST_METRICS = ("precision_at_k", "business_recall_at_k", "lift_at_k")
PAIRS = (("student", "teacher"), ("teacher", "best_base"), ("teacher", "stacking_lr"),
         ("teacher", "simple_average"))


def list_ranking(score: np.ndarray, user_id: np.ndarray, eligible: np.ndarray, k: int,
                 cap_value: np.ndarray | None = None, cap: int | None = None) -> tuple[np.ndarray, int]:
    """(ranking, K_list): values in (0, 1) whose stable descending order puts the lead list first —
    the eligible owners (at most ``cap`` per ``cap_value``) by score, ties by owner id — and every
    other owner after it; ``K_list`` = min(``k``, owners that can be listed). The ranking has no ties
    among listable owners, and lies well inside the (1e-7, 1 - 1e-7) clip of the metrics."""
    score, user_id = np.asarray(score, dtype=float), np.asarray(user_id)
    listable = np.asarray(eligible, dtype=bool).copy()
    order = np.lexsort((user_id, -score))  # score descending, owner id ascending
    if cap is not None and cap_value is not None:  # the first `cap` eligible owners of each value, in list order
        values = ["\0null" if pd.isna(v) else str(v) for v in np.asarray(cap_value, dtype=object)[order]]  # nulls: one group, as in Spark
        taken = pd.Series(listable[order].astype(np.int64)).groupby(values).cumsum().to_numpy()
        listable[order] = listable[order] & (taken <= cap)
    ranked = order[listable[order]]
    out = np.full(len(score), 0.1)
    if len(ranked):
        out[ranked] = 0.5 + 0.4 * (len(ranked) - np.arange(len(ranked))) / len(ranked)
    return out, min(int(k), len(ranked))


def auc_ranking(score: np.ndarray) -> np.ndarray:
    """Average ranks / (n + 1): the same AUC as ``score`` (ties kept), inside the metrics' clip."""
    score = np.asarray(score, dtype=float)
    return rankdata(score, method="average") / (len(score) + 1)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (as :func:`remedi_spark.metrics.bootstrap`)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


class _Month:
    """One month's arrays: labels, and per ranker its list ranking, K_list, AUC ranking and estimates."""

    def __init__(self, data: MonthRankers, k: int | float, cap: int | None):
        f = data.frame
        k = lead_count(k, len(f))
        self.month, self.y, self.user_id = data.month, f["y"].to_numpy(np.int64), f["user_id"].to_numpy()
        self.n, self.positives, self.eligible = len(f), int(self.y.sum()), int(f["eligible"].sum())
        cap_value = f["cap_value"].to_numpy() if "cap_value" in f else None
        self.rank: dict[str, np.ndarray] = {}
        self.auc_rank: dict[str, np.ndarray] = {}
        self.k: dict[str, int] = {}
        self.estimates: dict[str, dict[str, float]] = {}
        for name in data.rankers:
            score = f[name].to_numpy(float)
            self.rank[name], self.k[name] = list_ranking(score, self.user_id, f["eligible"].to_numpy(), k, cap_value, cap)
            self.auc_rank[name] = auc_ranking(score)
            listed = lead_metrics(self.y, self.rank[name], self.k[name])
            self.estimates[name] = {
                "hits": listed["hits_at_k"], **{m: listed[m] for m in LIST_METRICS},
                "recall_at_k": listed["business_recall_at_k"] / 3.0,
                "auc": lead_metrics(self.y, self.auc_rank[name], self.k[name])["auc"]}

    def replicate_metrics(self, name: str, w: np.ndarray) -> dict[str, np.ndarray]:
        """The metrics of ranker ``name`` in each replicate of owner weights ``w`` (``(r, n)``)."""
        listed = weighted_lead_metrics(self.y, self.rank[name], w, self.k[name] / self.n)
        auc = weighted_lead_metrics(self.y, self.auc_rank[name], w, 0.0)["auc"]  # K = 1: the list plays no part
        return {**{m: listed[m] for m in LIST_METRICS}, "recall_at_k": listed["business_recall_at_k"] / 3.0, "auc": auc}


def evaluate_months(months: Sequence[MonthRankers], k: int, *, replicates: int, seed: int, level: float,
                    cap: int | None = None, pairs: Sequence[tuple[str, str]] = PAIRS) -> list[dict[str, Any]]:
    """Rows of ``backtest_results`` (without run and training-month columns): per month every ranker
    (``kind = ranker``) and the ``pairs`` differences (``difference``), then the mean over months of
    every ranker and pair present in every month (``mean``, ``mean_difference``). ``k``: the lead
    list's length (``lead_list.k``: a count, or a fraction of each month's owners); ``cap``: ``lead_list.cap_per_value`` when a cap column is set."""
    data = [_Month(m, k, cap) for m in months]
    union = np.unique(np.concatenate([d.user_id for d in data]))
    columns = {d.month: np.searchsorted(union, d.user_id) for d in data}
    values = {(d.month, name): {m: np.empty(replicates) for m in METRICS} for d in data for name in d.rank}
    done = 0
    for w in owner_resample_weights(union, replicates, seed):
        r = w.shape[0]
        for d in data:
            wm = np.ascontiguousarray(w[:, columns[d.month]])
            for name in d.rank:
                for metric, v in d.replicate_metrics(name, wm).items():
                    values[(d.month, name)][metric][done:done + r] = v
        done += r
    rows: list[dict[str, Any]] = []
    models = {(m.month, name): m.models[name] for m in months for name in m.rankers}

    def row(kind: str, month: str, ranker: str, model: str, common: dict[str, Any], estimate: dict[str, float],
            reps: dict[str, np.ndarray]) -> dict[str, Any]:
        out = {"kind": kind, "month": month, "ranker": ranker, "model": model, **common,
               "hits": estimate["hits"], "ci_level": level, "replicates": replicates}
        for metric in METRICS:
            low, high = _interval(reps[metric], level)
            out.update({metric: estimate[metric], f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        return out

    for d in data:
        common = {"rows": d.n, "positives": d.positives, "eligible": d.eligible}
        for name in d.rank:
            rows.append(row("ranker", d.month, name, models[(d.month, name)], {**common, "k": d.k[name]},
                            d.estimates[name], values[(d.month, name)]))
        for a, b in pairs:
            if a in d.rank and b in d.rank:
                est = {key: d.estimates[a][key] - d.estimates[b][key] for key in ("hits", *METRICS)}
                reps = {m: values[(d.month, a)][m] - values[(d.month, b)][m] for m in METRICS}
                rows.append(row("difference", d.month, f"{a} - {b}", f"{a},{b}", {**common, "k": d.k[a]}, est, reps))
    common = {"rows": sum(d.n for d in data), "positives": sum(d.positives for d in data),
              "eligible": sum(d.eligible for d in data)}
    everywhere = [name for name in data[0].rank if all(name in d.rank for d in data)]
    for name in everywhere:
        est = {key: float(np.mean([d.estimates[name][key] for d in data])) for key in ("hits", *METRICS)}
        reps = {m: np.mean([values[(d.month, name)][m] for d in data], axis=0) for m in METRICS}
        model = "; ".join(dict.fromkeys(models[(d.month, name)] for d in data))
        rows.append(row("mean", "mean", name, model, {**common, "k": sum(d.k[name] for d in data)}, est, reps))
    for a, b in pairs:
        if a in everywhere and b in everywhere:
            est = {key: float(np.mean([d.estimates[a][key] - d.estimates[b][key] for d in data]))
                   for key in ("hits", *METRICS)}
            reps = {m: np.mean([values[(d.month, a)][m] - values[(d.month, b)][m] for d in data], axis=0)
                    for m in METRICS}
            rows.append(row("mean_difference", "mean", f"{a} - {b}", f"{a},{b}",
                            {**common, "k": sum(d.k[a] for d in data)}, est, reps))
    return rows
