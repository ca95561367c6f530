"""Display texts of bootstrap intervals (:class:`remedi_spark.metrics.Interval`), shared by the
studies' markdown tables (:mod:`remedi_spark.training.study_inputs`) and the report's HTML tables.

A difference row carries ``<metric>_diff``, ``<metric>_diff_ci_low/high`` and ``ci_level``; its
text is "value [low, high] reading", the reading "no difference" when the interval contains 0.
Here and not in the training package, so report code reads them without importing the trainers.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import Interval, difference_verdict


def interval_cell(value: Any, low: Any, high: Any, fmt: str) -> str:
    """``value [low, high]`` for a markdown table ("–" when the value is missing; no bracket without an interval)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if low is None or high is None or np.isnan(low) or np.isnan(high):
        return format(value, fmt)
    return f"{format(value, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def difference_text(row: dict[str, Any], metric: str, fmt: str, lower_is_better: bool = False) -> str | None:
    """A row's ``<metric>_diff`` against its reference with the interval and the reading ("no
    difference" when the interval contains 0), e.g. "+0.0050 [-0.0088, +0.0204] no difference";
    None on a row without a reference."""
    value, low, high = row.get(f"{metric}_diff"), row.get(f"{metric}_diff_ci_low"), row.get(f"{metric}_diff_ci_high")
    if value is None or low is None or high is None or any(np.isnan(v) for v in (value, low, high)):
        return None
    verdict = difference_verdict(Interval(value, low, high, float(row.get("ci_level") or 0.9)), lower_is_better)
    return f"{format(value, fmt)} [{format(low, fmt)}, {format(high, fmt)}] {verdict}"


def difference_cell(row: dict[str, Any], metric: str, fmt: str, lower_is_better: bool = False) -> str:
    """:func:`difference_text` as a markdown cell: "–" on a row without a reference."""
    return difference_text(row, metric, fmt, lower_is_better) or "–"
