"""Every ranker's score for every owner of a backtest month T, read from T's sub-root after its chain
ran, and which owners the lead list's business filters let through.

Rankers (:data:`RANKERS`):

* ``student``: the ``scores`` table of T (the distilled LightGBM, what the lead list is built from);
* ``teacher``: ``teacher_predictions`` of T (the strategy fusion distilled);
* ``best_base``: the base model fusion chose on meta-OOF log loss (its ``best_base_model``), i.e. its
  refit model's prediction of T (the ``p_<model>`` column of ``meta_features``);
* ``stacking_lr`` and ``simple_average``: the fusion strategies of those names, fitted exactly as
  fusion fits them (its fit rows: training owners outside the evaluation month, in key order) and
  applied to T's meta-features; fusion keeps only the teacher's head, so stacking LR is refitted here
  (a logistic regression: deterministic and quick);
* ``oracle``: the simulator's true P(buy in T+1..T+3) (``oracle.p_3m``), where it covers every owner of T.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..fusion.meta_features import meta_feature_names
from ..fusion.meta_models import ExpertConfig, fit_strategy
from ..fusion.train import models_in
from ..io.schemas import DataValidationError, example_keys
from ..io.store import TableStore
from ..leads.lead_list import flag_exclusions, is_eligible
from ..models.base import keyed_pandas

RANKERS = ("student", "teacher", "best_base", "stacking_lr", "simple_average", "oracle")


@dataclass
class MonthRankers:
    """One backtest month: ``frame`` holds ``user_id``, ``y``, ``eligible`` (no business filter
    excludes the owner), ``cap_value`` (the ``lead_list.cap_column`` value, when a cap is set) and one
    score column per ranker, one row per owner of T sorted by ``user_id``; ``models`` says what stands
    behind each ranker; ``lead_list`` holds the owners of the lead-list stage's list of T."""

    month: str
    frame: pd.DataFrame
    models: dict[str, str]
    lead_list: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def rankers(self) -> list[str]:
        return [r for r in RANKERS if r in self.models]


def _require_every_owner(joined: DataFrame, column: str, table: str, source_column: str, month: str) -> None:
    """A DataValidationError naming ``table.source_column`` when an owner of ``month`` has no value."""
    missing = F.col(column).isNull()
    n = joined.filter(missing).count()
    if n:
        raise DataValidationError(table, [(source_column, f"{n} owners of the backtest month {month} have no value "
                                                          f"(every owner of it must be scored), e.g. "
                                                          f"{example_keys(joined, ['user_id'], missing)}")])


def _fusion_baselines(sub: TableStore, meta: DataFrame, models: list[str], month: str
                      ) -> tuple[pd.DataFrame, list[str]]:
    """(user_id, stacking_lr, simple_average) for the owners of ``month``, the strategies fitted on
    fusion's fit rows (``split = train`` outside the evaluation month) in key order, as fusion fits them."""
    names = meta_feature_names(models)
    folds = sub.read("folds").select("user_id", "month", "oot_split")
    fit = keyed_pandas(meta.join(folds, ["user_id", "month"]).filter((F.col("split") == "train")
                                                                     & (F.col("oot_split") == "train")),
                       "user_id", "y", *names)
    if fit.empty:
        raise DataValidationError("meta_features", [("split", f"no training-owner rows outside the evaluation month "
                                                              f"{month} to fit stacking LR on")])
    rows = keyed_pandas(meta.filter(F.col("month") == month), "user_id", *names)
    x, y, groups = fit[names].to_numpy(np.float64), fit["y"].to_numpy(np.float64), fit["user_id"].to_numpy()
    out = pd.DataFrame({"user_id": rows["user_id"].to_numpy()})
    for strategy in ("stacking_lr", "simple_average"):
        model = fit_strategy(strategy, len(models), x, y, groups, ExpertConfig())
        out[strategy] = model.predict(rows[names].to_numpy(np.float64))
    return out, names


def month_rankers(spark: SparkSession, cfg: Config, sub: TableStore, month: str, teacher: dict) -> MonthRankers:
    """Every ranker's score for every owner of ``month`` from the sub-root ``sub`` (after the chain:
    ``scores``, ``teacher_predictions``, ``meta_features``, ``folds``, ``lead_list``), with the
    business filters' verdict (``lead_list.*`` of ``cfg``). ``teacher``: fusion's decision record
    (``chosen``, ``best_base_model``). A ranker without a score for some owner is an error naming its table."""
    features = sub.read("features", months=[month]).select("user_id", "y", "label_complete")
    open_rows = features.filter(~F.col("label_complete") | F.col("y").isNull())
    n_open = open_rows.count()
    if n_open:
        raise DataValidationError("features", [("label_complete", f"{n_open} rows of the backtest month {month} have "
                                                                  f"no complete label, e.g. {example_keys(open_rows, ['user_id'], F.lit(True))}")])
    meta = sub.read("meta_features")
    models = models_in(meta)
    best = teacher["best_base_model"]
    if best not in models:
        raise DataValidationError("meta_features", [(f"p_{best}", f"fusion's best base model {best!r} has no column "
                                                                   f"(models: {models})")])
    scores = sub.read("scores", months=[month]).select("user_id", F.col("score").alias("student"))
    teacher_p = sub.read("teacher_predictions").filter(F.col("month") == month).select(
        "user_id", F.col("p_teacher").alias("teacher"))
    base = meta.filter(F.col("month") == month).select("user_id", F.col(f"p_{best}").alias("best_base"))
    cap = cfg.lead_list.cap_column
    flagged = flag_exclusions(scores.withColumnRenamed("student", "score"), sub.read("owners"), sub.read("purchases"),
                              cfg, month)
    verdict = flagged.select("user_id", is_eligible(flagged).alias("eligible"),
                             *([F.col(cap).cast("string").alias("cap_value")] if cap else []))
    joined = (features.select("user_id", "y").join(scores, "user_id", "left").join(teacher_p, "user_id", "left")
              .join(base, "user_id", "left").join(verdict, "user_id", "left"))
    notes = []
    with_oracle = sub.exists("oracle")
    if with_oracle:
        oracle = sub.read("oracle", months=[month]).select("user_id", F.col("p_3m").alias("oracle"))
        joined = joined.join(oracle, "user_id", "left")
    joined = joined.localCheckpoint()
    for column, table, source in (("student", "scores", "score"), ("teacher", "teacher_predictions", "p_teacher"),
                                  ("best_base", "meta_features", f"p_{best}")):
        _require_every_owner(joined, column, table, source, month)
    if with_oracle and joined.filter(F.col("oracle").isNull()).limit(1).count():
        notes.append(f"oracle: not every owner of {month} has an oracle row; no oracle ranker for this month")
        with_oracle = False
    frame = joined.orderBy("user_id").toPandas()
    baselines, _ = _fusion_baselines(sub, meta, models, month)
    frame = frame.merge(baselines, on="user_id", how="left", validate="one_to_one")
    if frame[["stacking_lr", "simple_average"]].isna().any().any():
        raise DataValidationError("meta_features", [("user_id", f"owners of the backtest month {month} without "
                                                                "meta-features")])
    frame["y"] = frame["y"].astype(np.int64)
    frame["eligible"] = frame["eligible"].astype(bool)
    stack = ",".join(models)
    names = {"student": f"{cfg.distill.student} (distilled from {teacher['chosen']})", "teacher": teacher["chosen"],
             "best_base": best, "stacking_lr": stack, "simple_average": stack}
    if with_oracle:
        names["oracle"] = "oracle.p_3m"
    else:
        frame = frame.drop(columns=["oracle"], errors="ignore")
    leads = {int(r[0]) for r in sub.read("lead_list", months=[month]).select("user_id").collect()} \
        if sub.exists("lead_list") else set()
    return MonthRankers(month, frame.reset_index(drop=True), names, leads, notes)
