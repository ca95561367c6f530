"""Lead list: the month's top K owners by score after the business filters, with a reason each.

Filters (``lead_list`` in conf): owners who bought in the scored month or the N − 1 before it
(needs a ``purchases`` table), owners flagged do-not-contact, owners whose vehicle is younger than
the minimum age, owners with no owner record (these three need an ``owners`` table); then an
optional cap of leads per region or dealer (``owners`` too). A filter whose table does not exist (a
bring-your-own features table comes without them) is skipped and named in the stage summary. The K
best remaining owners (ties by owner id) get ranks 1..K; K is a count or a fraction of the month's
scored owners. The reason is the channel (``base_models.channel_groups``; see ``channel_of``) whose
student contributions (LightGBM ``pred_contrib``) raise the owner's score most. The ``lead_list`` table
keeps the month's leads (replaced on re-run); the CRM export holds only id, rank, score, reason.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..config import Config, ConfigError
from ..distill.students import load_student
from ..io.schemas import DataValidationError
from ..io.store import TableStore
from ..metrics import Interval, bootstrap, lead_count
from ..models.base import channel_of
from ..months import add_months

REASONS = {"dealer": "dealer visits", "calls": "calls to the brand", "digital": "digital engagement",
           "static": "owner and vehicle profile"}
EXPORT_COLUMNS = ("user_id", "rank", "score", "reason")


def export_root(cfg: Config, store: TableStore) -> str:
    return cfg.lead_list.export_dir or f"{store.root}/exports/lead_list"


# the table each filter reads; a filter is skipped when its table does not exist
FILTER_INPUTS = {"no_owner_record": "owners", "recent_purchase": "purchases", "do_not_contact": "owners",
                 "vehicle_too_young": "owners"}


def filter_inputs(store: TableStore) -> tuple[DataFrame | None, DataFrame | None]:
    """The ``owners`` and ``purchases`` tables, each None where it does not exist."""
    return tuple(store.read(t) if store.exists(t) else None for t in ("owners", "purchases"))  # type: ignore[return-value]


def skipped_filters(owners: DataFrame | None, purchases: DataFrame | None, cfg: Config) -> list[str]:
    """The filters (and the cap) that cannot run because their input table is absent, with the table."""
    present = {"owners": owners is not None, "purchases": purchases is not None}
    out = [f"{name} (no {table} table)" for name, table in FILTER_INPUTS.items() if not present[table]]
    if cfg.lead_list.cap_column and not present["owners"]:
        out.append(f"cap per {cfg.lead_list.cap_column} (no owners table)")
    return out


def flag_exclusions(scores: DataFrame, owners: DataFrame | None, purchases: DataFrame | None, cfg: Config,
                    month: str) -> DataFrame:
    """``scores`` joined with the owner fields and one boolean column per filter (true = excluded).
    Filters whose table is None are left out (see :func:`skipped_filters`); ``region_id`` and
    ``dealer_id`` are then null."""
    lc = cfg.lead_list
    out = scores
    if purchases is not None:
        first = add_months(month, -(lc.exclude_purchase_months - 1)) if lc.exclude_purchase_months > 0 else None
        recent = (purchases.filter((F.col("month") >= first) & (F.col("month") <= month)) if first
                  else purchases.limit(0)).select("user_id").distinct().withColumn("_bought", F.lit(True))
        out = out.join(recent, "user_id", "left") \
            .withColumn("x_recent_purchase", F.coalesce(F.col("_bought"), F.lit(False))).drop("_bought")
    if owners is None:
        return out.withColumn("region_id", F.lit(None).cast("int")).withColumn("dealer_id", F.lit(None).cast("string"))
    owner_cols = owners.select("user_id", "do_not_contact", "vehicle_start_month", "region_id", "dealer_id",
                               F.lit(True).alias("_known"))
    age = F.months_between(F.to_date(F.lit(month), "yyyy-MM"), F.to_date("vehicle_start_month", "yyyy-MM"))
    return (out.join(owner_cols, "user_id", "left")
            .withColumn("x_no_owner_record", F.col("_known").isNull())
            .withColumn("x_do_not_contact", F.lit(lc.exclude_do_not_contact) & F.coalesce("do_not_contact", F.lit(False)))
            .withColumn("x_vehicle_too_young", F.coalesce(age < lc.min_vehicle_age_months, F.lit(False)))
            .drop("_known"))


def is_eligible(flagged: DataFrame):
    """Column: true where no filter of :func:`flag_exclusions` excluded the owner."""
    flags = [F.col(c) for c in flagged.columns if c.startswith("x_")]
    if not flags:
        return F.lit(True)
    return ~(flags[0] if len(flags) == 1 else F.greatest(*flags))


def select_leads(flagged: DataFrame, cfg: Config, n: int) -> DataFrame:
    """The top ``n`` of the rows no filter excluded, capped per ``cap_column`` (when the owners table
    gave one); adds ``lead_rank``."""
    lc = cfg.lead_list
    eligible = flagged.filter(is_eligible(flagged))
    if lc.cap_column and "x_no_owner_record" in flagged.columns:
        if not lc.cap_per_value:
            raise ConfigError("lead_list.cap_per_value must be a positive integer when cap_column is set")
        per = Window.partitionBy(lc.cap_column).orderBy(F.desc("score"), F.asc("user_id"))
        eligible = eligible.withColumn("_n", F.row_number().over(per)).filter(F.col("_n") <= lc.cap_per_value).drop("_n")
    order = Window.orderBy(F.desc("score"), F.asc("user_id"))
    return eligible.withColumn("lead_rank", F.row_number().over(order)).filter(F.col("lead_rank") <= n)


def add_reasons(spark: SparkSession, cfg: Config, store: TableStore, leads: DataFrame, month: str) -> DataFrame:
    """Reason per lead: the channel (:func:`channel_of`) with the largest summed student contribution."""
    student = load_student(spark, cfg, store).model
    columns = student.features.columns
    groups = cfg.base_models.feature_groups
    owner = [channel_of(c, groups, cfg.base_models.channel_groups) for c in columns]
    names = sorted(set(owner))
    index = np.array([names.index(g) for g in owner])
    text = spark.sparkContext.broadcast(student.artifact().decode("utf-8"))
    rows = student.features.encode(store.read("features", months=[month]).join(leads.select("user_id"), "user_id"))

    def reason(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        booster = lgb.Booster(model_str=text.value)
        for b in batches:
            contrib = booster.predict(b[columns].to_numpy(np.float64), pred_contrib=True)[:, :-1]
            sums = np.zeros((len(b), len(names)))
            np.add.at(sums.T, index, contrib.T)
            best = [names[i] for i in sums.argmax(axis=1)]
            yield pd.DataFrame({"user_id": b["user_id"], "reason": [REASONS.get(g, g) for g in best]})

    return leads.join(rows.mapInPandas(reason, "user_id long, reason string"), "user_id")


def build_lead_list(spark: SparkSession, cfg: Config, store: TableStore, month: str | None = None) -> dict[str, Any]:
    """Stage ``lead-list`` for ``month`` (default: the newest scored month)."""
    scores = store.read("scores")
    month = month or cfg.scoring.month or scores.agg(F.max("month")).first()[0]
    scores = scores.filter(F.col("month") == month).select("user_id", "score", "model_version")
    scored = scores.count()
    if scored == 0:
        raise FileNotFoundError(f"no scores for month {month}: run the scoring job for it first")
    owners, purchases = filter_inputs(store)
    skipped = skipped_filters(owners, purchases, cfg)
    if skipped:
        print(f"[remedi] lead-list: filters skipped: {', '.join(skipped)}", file=sys.stderr, flush=True)
    flagged = flag_exclusions(scores, owners, purchases, cfg, month).cache()
    flags = [c for c in flagged.columns if c.startswith("x_")]
    counts = flagged.agg(*[F.sum(F.col(c).cast("int")).alias(c) for c in flags],
                         F.sum(is_eligible(flagged).cast("int")).alias("eligible")).first()
    k = lead_count(cfg.lead_list.k, scored)
    leads = add_reasons(spark, cfg, store, select_leads(flagged, cfg, k), month)
    table = leads.select(F.lit(month).alias("month"), "user_id", "lead_rank", "score", "reason", "region_id",
                         "dealer_id", "model_version", F.lit(store.run.run_id if store.run else "adhoc").alias("run_id"))
    version = store.write_months(table, "lead_list", [month])
    flagged.unpersist()
    written = store.read("lead_list", months=[month])
    export = export_root(cfg, store) + f"/month={month}"
    crm = written.select("user_id", F.col("lead_rank").alias("rank"), "score", "reason").orderBy("rank")
    for fmt in cfg.lead_list.export_formats:
        crm.coalesce(1).write.mode("overwrite").option("header", True).format(fmt).save(f"{export}/{fmt}")
    reasons = {r["reason"]: r["count"] for r in written.groupBy("reason").count().collect()}
    return {"month": month, "model_version": scores.select("model_version").first()[0],
            "scored": scored, "eligible": int(counts["eligible"]),
            "excluded": {c[2:]: int(counts[c]) for c in flags}, "skipped_filters": skipped,
            "leads": written.count(), "k": k,
            "reasons": reasons, "version": version, "export": export}


def evaluate_lead_list(spark: SparkSession, cfg: Config, store: TableStore, month: str) -> dict[str, Any]:
    """For a month whose 3-month window has closed: the lead list against the true labels, beside the
    oracle's list (the simulator's true probability, same filters, same size) where the synthetic
    ``oracle`` table exists, with paired-bootstrap intervals over the month's owners
    (``evaluation.bootstrap``) for precision, Business Recall (hits / (three-month buyers / 3), the
    paper's per-month definition), plain recall (hits / three-month buyers) and the difference in
    precision list − oracle."""
    labels = store.read("features", months=[month]).filter("label_complete").select("user_id", "y")
    listed = store.read("lead_list", months=[month]).select("user_id", F.lit(True).alias("listed"))
    scores = store.read("scores", months=[month]).select("user_id", "score", "model_version")
    owners, purchases = filter_inputs(store)
    flagged = flag_exclusions(scores, owners, purchases, cfg, month)
    rows = flagged.select("user_id", "score", is_eligible(flagged).alias("eligible")).join(labels, "user_id") \
        .join(listed, "user_id", "left")
    has_oracle = store.exists("oracle")
    if has_oracle:
        rows = rows.join(store.read("oracle", months=[month]).select("user_id", "p_3m"), "user_id", "left")
    pdf = rows.toPandas()
    if pdf.empty:
        raise DataValidationError("features", [("label_complete", f"no fully labelled rows of {month} with scores: "
                                                                  "its lead list cannot be evaluated")])
    return {**lead_list_evaluation(pdf, month, cfg), "skipped_filters": skipped_filters(owners, purchases, cfg)}


def list_first_ranking(listed: np.ndarray, eligible: np.ndarray, score: np.ndarray, user_id: np.ndarray
                       ) -> np.ndarray:
    """Distinct values in (0.1, 0.9] that order the owners as the lead-list rule would: the ``listed``
    owners first, then the other ``eligible`` ones, then the rest; within each, by ``score``
    descending, ties by owner id. The top K (K = the list's size) of this ranking is the list, and in
    a bootstrap replicate it is the list the rule would pick from the drawn owners (cut by score when
    the list's owners were drawn more than once in total, extended by the next eligible owners when
    fewer), whatever the order of the rows."""
    tier = np.where(listed, 0, np.where(eligible, 1, 2))
    order = np.lexsort((np.asarray(user_id), -np.asarray(score, dtype=float), tier))
    ranking = np.empty(len(order))
    ranking[order] = 0.9 - 0.8 * np.arange(len(order)) / max(len(order), 1)
    return ranking


def lead_list_evaluation(pdf: pd.DataFrame, month: str, cfg: Config) -> dict[str, Any]:
    """:func:`evaluate_lead_list` on the month's owners as a frame (``user_id, y, score, eligible,
    listed`` and optionally ``p_3m``). Both lists are ranked by :func:`list_first_ranking`; the
    oracle's list is the top K of the eligible owners by ``p_3m``. The result does not depend on the
    order of ``pdf``'s rows."""
    y = pdf["y"].to_numpy(np.int64)
    listed = pdf["listed"].eq(True).to_numpy(bool)  # null: not listed
    eligible = pdf["eligible"].to_numpy(bool)
    user_id = pdf["user_id"].to_numpy()
    n = int(listed.sum())
    owners = len(pdf)
    scores = {"lead_list": list_first_ranking(listed, eligible, pdf["score"].to_numpy(float), user_id)}
    has_oracle = "p_3m" in pdf and pdf["p_3m"].notna().all()
    if has_oracle:
        p_3m = pdf["p_3m"].to_numpy(float)
        oracle_listed = np.zeros(owners, dtype=bool)
        oracle_listed[np.lexsort((user_id, -p_3m, ~eligible))[:n]] = True  # top n eligible by p_3m, ties by id
        scores["oracle"] = list_first_ranking(oracle_listed, eligible, p_3m, user_id)
    b = cfg.evaluation.bootstrap
    boot = bootstrap(y, scores, user_id, max(n, 1) / owners, replicates=b.replicates, seed=b.seed,
                     level=b.level, pairs=[("lead_list", "oracle")] if has_oracle else [])
    positives = int(y.sum())
    hits = int(y[listed].sum())
    lead = boot["intervals"]["lead_list"]
    out: dict[str, Any] = {
        "month": month, "owners": owners, "leads": n, "positives": positives, "hits": hits, "ci_level": b.level,
        "precision": hits / n if n else float("nan"),
        "business_recall": hits / (positives / 3) if positives else float("nan"),
        "recall": hits / positives if positives else float("nan"),
        "oracle_hits": None, "oracle_precision": None}
    out.update(_bounds("precision", lead["precision_at_k"]))
    out.update(_bounds("business_recall", lead["business_recall_at_k"]))
    out.update(_bounds("recall", lead["business_recall_at_k"], scale=1 / 3))
    if has_oracle:
        out["oracle_hits"] = int(y[oracle_listed].sum())
        out["oracle_precision"] = out["oracle_hits"] / n if n else float("nan")
        out.update(_bounds("oracle_precision", boot["intervals"]["oracle"]["precision_at_k"]))
        out.update(_bounds("difference", boot["differences"][("lead_list", "oracle")]["precision_at_k"]))
        out["difference"] = out["precision"] - out["oracle_precision"]
    return out


def _bounds(name: str, iv: Interval, scale: float = 1.0) -> dict[str, float]:
    return {f"{name}_ci_low": scale * iv.low, f"{name}_ci_high": scale * iv.high}
