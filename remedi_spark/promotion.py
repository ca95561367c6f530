"""Champion / challenger: which registered student scoring should use (``tracking.registered_model``).

Every distillation registers its student as a new version with alias ``challenger``
(:func:`remedi_spark.distill.students.log_student`). The pipeline then compares it with the version
under alias ``champion`` on the challenger's evaluation month (the newest labelled month, which no
model of this run trained on): both students score every owner of the month, each gets the lead
list the business rule would give it (the top K eligible owners by its score, K = ``lead_list.k``, a
fraction of the month's labelled owners when it is one, capped at the eligible owners; the
per-region/dealer cap is left out so both lists follow one rule),
and the difference of their precisions, challenger − champion, gets a paired-bootstrap interval over
owners (``evaluation.bootstrap``, the lead-list evaluation's replicates, seed and level). The
challenger becomes ``champion`` when the interval's lower end is ≥ −``tracking.promotion_margin``
(it is, with that confidence, not worse by more than the margin), or when there is no champion yet;
otherwise the champion stays where it was. A run without an evaluation month cannot compare, so it
promotes only into an empty seat. Stage ``promote`` (:func:`run_promotion`) runs it after ``distill``
(the pipeline's last step before the report; a task of the retrain job); the decision and its
numbers go to the stage's and the pipeline's manifest, the MLflow run (metrics ``promote.*``, tags
``remedi.promotion.*``) and the report.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .config import BootstrapSettings, Config
from .distill.students import CHALLENGER, CHAMPION, load_registered_student
from .folds.assign import evaluation_month
from .io.store import TableStore
from .leads.lead_list import filter_inputs, flag_exclusions, is_eligible, list_first_ranking
from .metrics import bootstrap, lead_count
from .scoring.score import student_scores
from .tracking import Tracker


def top_eligible(score: np.ndarray, eligible: np.ndarray, user_id: np.ndarray, k: int) -> np.ndarray:
    """Mask of the ``k`` eligible owners with the highest ``score`` (ties by owner id): the lead list
    the business rule gives this ranker, without a cap per region or dealer."""
    listed = np.zeros(len(score), dtype=bool)
    order = np.lexsort((user_id, -np.asarray(score, dtype=float), ~eligible))
    listed[order[:min(k, int(eligible.sum()))]] = True
    return listed


def promotion_decision(y: np.ndarray, user_id: np.ndarray, challenger: np.ndarray, champion: np.ndarray | None,
                       k: int, margin: float, boot: BootstrapSettings, eligible: np.ndarray | None = None
                       ) -> dict[str, Any]:
    """Promote or keep (see the module docstring) from the scores of one month's owners: ``y`` their
    labels, ``challenger``/``champion`` the two students' scores (``champion`` None: there is none),
    ``eligible`` the owners the business filters keep (None: all). Returns the decision with its
    numbers: P@K of each list, the difference and its interval, positives, K, the margin."""
    y = np.asarray(y, dtype=np.int64)
    user_id = np.asarray(user_id)
    eligible = np.ones(len(y), dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    if not len(y):
        return {"owners": 0, "positives": 0, "k": 0, "margin": margin, "ci_level": boot.level,
                "decision": "promote" if champion is None else "keep",
                "reason": "no champion yet" if champion is None else "no fully labelled owner to compare on"}
    lists = {"challenger": top_eligible(challenger, eligible, user_id, k)}
    n = int(lists["challenger"].sum())
    out: dict[str, Any] = {"owners": len(y), "positives": int(y.sum()), "k": n, "margin": margin,
                           "ci_level": boot.level, "p_at_k_challenger": float(y[lists["challenger"]].mean()) if n else None,
                           "p_at_k_champion": None, "difference": None, "ci_low": None, "ci_high": None}
    if champion is None:
        return {**out, "decision": "promote", "reason": "no champion yet"}
    lists["champion"] = top_eligible(champion, eligible, user_id, k)
    scores = {name: list_first_ranking(listed, eligible, score, user_id)
              for (name, listed), score in zip(lists.items(), (challenger, champion))}
    result = bootstrap(y, scores, user_id, max(n, 1) / len(y), replicates=boot.replicates, seed=boot.seed,
                       level=boot.level, pairs=[("challenger", "champion")])
    diff = result["differences"][("challenger", "champion")]["precision_at_k"]
    out.update(p_at_k_champion=result["intervals"]["champion"]["precision_at_k"].estimate,
               p_at_k_challenger=result["intervals"]["challenger"]["precision_at_k"].estimate,
               difference=diff.estimate, ci_low=diff.low, ci_high=diff.high)
    if diff.low >= -margin:
        return {**out, "decision": "promote",
                "reason": f"lower end of the P@K difference {diff.low:+.4f} >= -margin {-margin:+.4f}"}
    return {**out, "decision": "keep",
            "reason": f"lower end of the P@K difference {diff.low:+.4f} < -margin {-margin:+.4f}"
            if diff.low == diff.low else "the P@K difference has no interval (no owner with a label)"}


def month_frame(spark: SparkSession, cfg: Config, store: TableStore, month: str, challenger: Any,
                champion: Any | None) -> pd.DataFrame:
    """Every fully labelled owner of ``month``: ``user_id, y, eligible`` and each student's score
    (``challenger``, ``champion``), sorted by owner."""
    features = store.read("features", months=[month]).filter("label_complete")
    frame = student_scores(challenger, features).select("user_id", F.col("score").alias("challenger"))
    if champion is not None:
        frame = frame.join(student_scores(champion, features).select("user_id", F.col("score").alias("champion")),
                           "user_id")
    flagged = flag_exclusions(frame, *filter_inputs(store), cfg, month)  # filters whose table exists
    rows = flagged.select(*frame.columns, is_eligible(flagged).alias("eligible")).join(
        features.select("user_id", "y"), "user_id")
    return rows.toPandas().sort_values("user_id", ignore_index=True)


def run_promotion(spark: SparkSession, cfg: Config, store: TableStore, month: str | None = None,
                  version: str | None = None) -> dict[str, Any]:
    """Stage ``promote``: registered version ``version`` (default: the one under alias ``challenger``)
    against the champion on ``month`` (default: the evaluation month of the folds table, the one the
    challenger was distilled without), see :func:`promote_student`. Without a registry (tracking off or
    ``tracking.registered_model: null``) or a challenger it decides nothing."""
    tracker = Tracker(cfg, store.root)
    if not tracker.registers:
        return {"decision": None, "reason": "no model registry: tracking.enabled is off or tracking.registered_model "
                                            "is null"}
    version = version or tracker.alias_version(CHALLENGER)
    if version is None:
        return {"decision": None, "reason": f"{cfg.tracking.registered_model} has no version under alias "
                                            f"{CHALLENGER}: run distill with tracking on first"}
    month = month or evaluation_month(store.read("folds"))
    return promote_student(spark, cfg, store, tracker, month, version)


def promote_student(spark: SparkSession, cfg: Config, store: TableStore, tracker: Any, month: str | None,
                    challenger_version: str) -> dict[str, Any]:
    """Compare registered version ``challenger_version`` with the champion on ``month`` (None: no
    evaluation month) and :func:`settle` it."""
    name = cfg.tracking.registered_model
    champion_version = tracker.alias_version(CHAMPION)
    frame = None
    if month is not None:
        challenger = load_registered_student(spark, cfg, store, f"models:/{name}/{challenger_version}").model
        champion = (load_registered_student(spark, cfg, store, f"models:/{name}/{champion_version}").model
                    if champion_version is not None else None)
        frame = month_frame(spark, cfg, store, month, challenger, champion)
    return settle(cfg, tracker, challenger_version, champion_version, month, frame)


def settle(cfg: Config, tracker: Any, challenger_version: str, champion_version: str | None, month: str | None,
           frame: pd.DataFrame | None) -> dict[str, Any]:
    """The decision on ``frame`` (:func:`month_frame`'s columns; None: no evaluation month), alias
    ``champion`` moved to the challenger when it is promoted, the decision tagged on the MLflow run."""
    name = cfg.tracking.registered_model
    head = {"registered_model": name, "challenger_version": challenger_version,
            "champion_version": champion_version, "month": month}
    if frame is None:
        numbers = {"decision": "promote" if champion_version is None else "keep",
                   "reason": "no champion yet" if champion_version is None
                   else "no evaluation month to compare the challenger with the champion on"}
    else:
        numbers = promotion_decision(frame["y"].to_numpy(), frame["user_id"].to_numpy(),
                                     frame["challenger"].to_numpy(float),
                                     frame["champion"].to_numpy(float) if champion_version is not None else None,
                                     lead_count(cfg.lead_list.k, len(frame)), cfg.tracking.promotion_margin,
                                     cfg.evaluation.bootstrap, frame["eligible"].to_numpy(bool))
    decision = {**head, **numbers}
    if decision["decision"] == "promote":
        tracker.set_alias(CHAMPION, challenger_version)
    decision["champion_after"] = challenger_version if decision["decision"] == "promote" else champion_version
    tracker.set_tags({"remedi.promotion.decision": decision["decision"],
                      "remedi.promotion.reason": decision["reason"],
                      "remedi.promotion.champion_version": str(decision["champion_after"])})
    print(f"[remedi] promotion: {decision['decision']} {name} version {challenger_version} "
          f"(champion {champion_version or 'none'} → {decision['champion_after']}): {decision['reason']}",
          file=sys.stderr, flush=True)
    return decision
