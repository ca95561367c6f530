"""Which months the backtest evaluates, which months each one may train on, and the config of the
chain that trains for it.

A month t is a training month of the backtest month T when its label window T+1..T+3 had closed
by T: t + 3 ≤ T (:data:`HORIZON`). Both are fully labelled months of the features table (every row
``label_complete``); the backtest months are the newest ``backtest.months`` of them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pyspark.sql import functions as F

from ..config import Config, ConfigError, replace
from ..io.store import TableStore
from ..months import parse_month

HORIZON = 3  # months in the label window T+1..T+3


@dataclass(frozen=True)
class BacktestMonth:
    """One backtest month ``month`` (T) and the months its chain trains on (each t + 3 ≤ T)."""

    month: str
    training: tuple[str, ...]

    @property
    def chain_months(self) -> list[str]:
        """The months of the sub-root's features and folds: the training months, then T."""
        return [*self.training, self.month]


def labelled_months(store: TableStore) -> list[str]:
    """Months of the ``features`` table whose every row has a complete three-month label, oldest first."""
    rows = store.read("features").groupBy("month").agg(
        F.count(F.lit(1)).alias("rows"), F.sum(F.col("label_complete").cast("int")).alias("complete")).collect()
    return sorted(r["month"] for r in rows if r["rows"] and r["complete"] == r["rows"])


def plan_months(labelled: list[str], n: int) -> list[BacktestMonth]:
    """The newest ``n`` of the ``labelled`` months, each with its training months (t + 3 ≤ T).

    Raises :class:`ConfigError` naming ``backtest.months`` when ``n`` is below 1 or when the earliest
    backtest month would have no training month, with the largest ``n`` the table allows.
    """
    labelled = sorted(labelled)
    if n < 1:
        raise ConfigError(f"backtest.months: must be at least 1, got {n}")
    if not labelled:
        raise ConfigError("backtest.months: the features table has no fully labelled month to backtest")
    span = f"{labelled[0]}..{labelled[-1]}"
    plan = [BacktestMonth(T, tuple(t for t in labelled if parse_month(t) + HORIZON <= parse_month(T)))
            for T in labelled]
    possible = sum(1 for m in plan if m.training)  # training months only grow with T: a suffix of the plan
    if n > len(labelled) or not plan[-n].training:
        first = labelled[-n] if n <= len(labelled) else f"a month before {labelled[0]}"
        raise ConfigError(
            f"backtest.months: {n} backtest months would start at {first}, which has no training month (a fully "
            f"labelled month t with t + {HORIZON} <= T; the features table's fully labelled months are {span}, "
            f"{len(labelled)} months); at most {possible} backtest months are possible with this table"
            + ("" if possible else " — none: build features for more months (an earlier synthetic.start_month)"))
    return plan[-n:]


def backtest_models(cfg: Config) -> list[str]:
    """``backtest.models`` (checked against ``base_models.models``, in that list's order), or every configured model."""
    configured = [s.name for s in cfg.base_models.models]
    names = cfg.backtest.models
    if names is None:
        return configured
    unknown = sorted(set(names) - set(configured))
    if unknown or not names:
        raise ConfigError(f"backtest.models: {unknown or 'an empty list'} "
                          f"{'are not in' if unknown else 'names no model of'} base_models.models {configured} "
                          "(null = every configured model)")
    return [m for m in configured if m in names]


def sub_root(cfg: Config, root: str, month: str) -> str:
    """Where the chain of backtest month ``month`` lives: ``<backtest.root or <root>/backtest>/T=<month>``."""
    return f"{(cfg.backtest.root or f'{root}/backtest').rstrip('/')}/T={month}"


def chain_config(cfg: Config, month: BacktestMonth, root: str, models: list[str]) -> Config:
    """``cfg`` for the chain of ``month``, on the sub-root ``root``: folds over the training months
    and T (T is the folds table's newest month, its evaluation month), no open-window rows, the
    base models ``models``; scoring and the lead list of T, with their outputs and the student under
    the sub-root. What the backtest does not evaluate is skipped: fusion ablations, head variants and
    seed repeats (the teacher is chosen among the strategies, whatever those are), students other than
    ``distill.student``, inference timing, MLflow (the backtest stage itself is tracked)."""
    specs = [dataclasses.asdict(s) for s in cfg.base_models.models if s.name in models]
    students = [s for s in cfg.distill.students if s.get("name") == cfg.distill.student] or cfg.distill.students
    return replace(cfg, tables={"root": root}, folds={"months": month.chain_months, "include_open_windows": False},
                   base_models={"models": specs}, fusion={"ablations": [], "variants": {}, "seeds": []},
                   distill={"students": students, "timing_rows": 0},
                   scoring={"month": month.month, "model_dir": None, "model_uri": None}, lead_list={"export_dir": None},
                   report={"dir": None}, tracking={"enabled": False}, backtest={"root": None})
