"""Feature job: raw monthly tables → one ``features`` row per (user, month), with labels.

Features for month T use data up to T only: the current month's channel values, rolling sums
and means over the configured windows, month-over-month change, short-vs-long trend, months
since the last dealer visit and since the last purchase, a few ratios and the owner's static
attributes. Labels: ``y_h{k}`` = purchase in T+k, ``y`` = purchase in T+1..T+3. A horizon whose
month is after ``observed_through`` is unknown (null), never 0; ``label_complete`` says all
three are observed (``y`` is 1 as soon as one observed horizon is 1). The funnel labels
``y_engage`` and ``y_visit`` (see :func:`funnel_labels`) follow the same rule over T+1..T+3.

``features.source: custom`` imports the user's own table instead (see :func:`import_custom_features`).
"""
from __future__ import annotations

import sys

from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..io.schemas import DataValidationError, validate
from ..io.store import TableStore
from ..months import add_months, format_month, parse_month
from .custom import import_custom_features
from .labels import FUNNEL_LABELS, HORIZONS

ID = "user_id"
# digital engagement: shopping actions online (media-site visits, comparison views, manufacturer apps
# used). Active days in the own brand's app (habitual use) and mini-program traffic in MB (a volume,
# heavy-tailed) are left out: they measure use of the car's services, not shopping.
ENGAGE_CHANNELS = ("web_query_cnt_s1", "analysis_cnt", "company_app_cnt")
ENGAGE_BASELINE_MONTHS = 6  # the owner's usual level: mean over T-5..T
ENGAGE_RATIO = 2.0          # engaged in a month: more than twice the usual level ...
ENGAGE_MARGIN = 2.0         # ... plus 2 events (an owner without usual activity needs 3)


def month_index(col: str | Column) -> Column:
    """``'YYYY-MM'`` → ``year * 12 + month - 1`` (the same index as :func:`remedi_spark.months.parse_month`)."""
    c = F.col(col) if isinstance(col, str) else col
    return F.substring(c, 1, 4).cast("int") * 12 + F.substring(c, 6, 2).cast("int") - 1


def month_key(col: str | Column) -> Column:
    """Month index → ``'YYYY-MM'`` (inverse of :func:`month_index`)."""
    c = F.col(col) if isinstance(col, str) else col
    return F.format_string("%04d-%02d", F.floor(c / 12).cast("int"), (c % 12 + 1).cast("int"))


def _safe_ratio(num: Column, den: Column) -> Column:
    return F.when(den > 0, num / den)


def _spread_to_targets(activity: DataFrame, targets: list[int], span: int) -> DataFrame:
    """Each activity row once per target month T it feeds (0 <= T - mi < span), with d = T - mi.

    Rolling features then become one grouped aggregation over (user, T): far cheaper than
    window frames, and only the requested target months are computed.
    """
    wanted = F.array(*[F.lit(t) for t in sorted(targets)])
    hit = F.filter(wanted, lambda t: (t >= F.col("mi")) & (t - F.col("mi") < span))
    spread = activity.select("*", F.explode(hit).alias("target_mi"))
    return spread.withColumn("d", F.col("target_mi") - F.col("mi"))


def activity_features(activity: DataFrame, channels: list[str], windows: list[int], recency_lookback: int,
                      targets: list[int]) -> DataFrame:
    """Per (user, target month) features of the activity rows in the look-back.

    ``activity`` needs columns user_id, mi (month index) and the channels. For each channel:
    the current value, ``_sum{k}``/``_mean{k}`` over the last k months present (nulls ignored),
    ``_mom`` (current minus previous month; null if either is missing) and ``_trend`` (short
    minus long window mean). Plus recency of dealer visits, months of history and ratios.
    """
    short, long = min(windows), max(windows)
    d = F.col("d")
    aggs: list[Column] = [F.max(F.when(d == 0, 1)).alias("_present")]
    derived: list[Column] = []
    for c in channels:
        aggs += [F.max(F.when(d == 0, F.col(c))).alias(c), F.max(F.when(d == 1, F.col(c))).alias(f"_{c}_prev")]
        for k in windows:
            aggs += [F.sum(F.when(d < k, F.col(c))).alias(f"{c}_sum{k}"),
                     F.count(F.when(d < k, F.col(c))).alias(f"_{c}_n{k}")]
            derived.append(_safe_ratio(F.col(f"{c}_sum{k}"), F.col(f"_{c}_n{k}")).alias(f"{c}_mean{k}"))
        derived.append((F.col(c) - F.col(f"_{c}_prev")).alias(f"{c}_mom"))
        if short != long:
            derived.append((_safe_ratio(F.col(f"{c}_sum{short}"), F.col(f"_{c}_n{short}"))
                            - _safe_ratio(F.col(f"{c}_sum{long}"), F.col(f"_{c}_n{long}"))).alias(f"{c}_trend"))
    aggs += [
        F.count(F.when(d < long, 1)).alias("history_months"),
        F.sum(F.when(d < short, F.col("used_request_cnt"))).alias("_used_short"),
        F.sum(F.when(d < short, F.col("web_query_cnt_s1"))).alias("_web_short"),
        F.sum(F.when(d < short, F.col("service_visit_cnt"))).alias("_service_short"),
    ]
    windowed = _spread_to_targets(activity, targets, long).groupBy(ID, "target_mi").agg(*aggs) \
        .filter(F.col("_present") == 1)
    ordered = [c for ch in channels for c in
               [ch, *[f"{ch}_{s}{k}" for k in windows for s in ("sum", "mean")], f"{ch}_mom"]
               + ([f"{ch}_trend"] if short != long else [])]
    frame = windowed.select("*", *derived).select(
        ID, F.col("target_mi").alias("mi"), *ordered, "history_months",
        _safe_ratio(F.col("visit_brand_cnt"), F.col("visit_days")).alias("brands_per_visit_day"),
        _safe_ratio(F.col("voice_call_brand_cnt"), F.col("voice_cnt")).alias("brands_per_call"),
        _safe_ratio(F.col("_used_short"), F.col("_web_short") + 1).alias(f"used_per_web_query{short}"),
        ((F.col("visit_days_sum" + str(short)) - F.col("_service_short")) / short)
        .alias(f"non_service_visits_per_month{short}"),
    )
    # recency needs a longer look-back but only one column: a narrow second aggregation
    visits = activity.filter(F.col("visit_days") > 0).select(ID, "mi")
    last_visit = _spread_to_targets(visits, targets, recency_lookback).groupBy(ID, "target_mi") \
        .agg(F.min("d").alias("months_since_dealer_visit")).withColumnRenamed("target_mi", "mi")
    return frame.join(last_visit, [ID, "mi"], "left")


def label_columns(purchases: DataFrame, observed_through: int) -> DataFrame:
    """(user_id, mi, _b1, _b2, _b3): which horizons of month ``mi`` hold a purchase (only observed ones)."""
    pm = purchases.select(ID, month_index("month").alias("pmi")).filter(F.col("pmi") <= observed_through)
    per_h = [pm.select(ID, (F.col("pmi") - h).alias("mi"), F.lit(h).alias("h")) for h in HORIZONS]
    events = per_h[0].unionByName(per_h[1]).unionByName(per_h[2])
    return events.groupBy(ID, "mi").agg(*[F.max(F.when(F.col("h") == h, 1)).alias(f"_b{h}") for h in HORIZONS])


def _labels(frame: DataFrame, observed_through: int) -> DataFrame:
    known = {h: F.col("mi") + h <= observed_through for h in HORIZONS}
    y_h = {h: F.when(known[h], F.coalesce(F.col(f"_b{h}"), F.lit(0))).cast("int") for h in HORIZONS}
    complete = known[3]
    any_pos = F.greatest(*[F.coalesce(y_h[h], F.lit(0)) for h in HORIZONS]) == 1
    y = F.when(any_pos, 1).when(complete, 0).cast("int")
    return frame.select("*", y.alias("y"), *[y_h[h].alias(f"y_h{h}") for h in HORIZONS],
                        complete.alias("label_complete")).drop(*[f"_b{h}" for h in HORIZONS])


def funnel_labels(activity: DataFrame, observed_through: int, targets: list[int]) -> DataFrame:
    """(user_id, mi, _engage, _visit) for the target months: 1 when an observed month of T+1..T+3 shows
    digital engagement or a shopping dealer visit, else null (the caller applies the label rule).

    ``activity`` holds the raw columns with the month index ``mi``. Engagement in month m: the sum
    of :data:`ENGAGE_CHANNELS` (missing values count 0) exceeds ``ENGAGE_RATIO`` × the owner's mean
    of that sum over T-5..T plus ``ENGAGE_MARGIN``. A plain "> 0" would mark nearly every owner
    (media-site visits are habitual), so the label would carry no funnel information; the owner's
    own baseline makes it a surge, comparable across heavy and light online users. A shopping visit:
    ``visit_days − service_visit_cnt > 0`` (service and delivery visits are not a funnel step).
    Months after ``observed_through`` are never read.
    """
    digital = sum((F.coalesce(F.col(c).cast("double"), F.lit(0.0)) for c in ENGAGE_CHANNELS), F.lit(0.0))
    shopping = F.coalesce(F.col("visit_days"), F.lit(0)) - F.coalesce(F.col("service_visit_cnt"), F.lit(0))
    act = activity.filter(F.col("mi") <= observed_through).select(
        ID, "mi", digital.alias("_digital"), (shopping > 0).cast("int").alias("_shop"))
    base = _spread_to_targets(act, targets, ENGAGE_BASELINE_MONTHS).groupBy(ID, "target_mi") \
        .agg(F.avg("_digital").alias("_usual"))
    wanted = F.array(*[F.lit(t) for t in sorted(targets)])
    ahead = act.select("*", F.explode(F.filter(
        wanted, lambda t: (F.col("mi") - t >= min(HORIZONS)) & (F.col("mi") - t <= max(HORIZONS)))).alias("target_mi"))
    surge = F.col("_digital") > ENGAGE_RATIO * F.coalesce(F.col("_usual"), F.lit(0.0)) + ENGAGE_MARGIN
    return ahead.join(base, [ID, "target_mi"], "left").groupBy(ID, "target_mi").agg(
        F.max(F.when(surge, 1)).alias("_engage"), F.max(F.when(F.col("_shop") == 1, 1)).alias("_visit"),
    ).withColumnRenamed("target_mi", "mi")


def _funnel(frame: DataFrame, observed_through: int) -> DataFrame:
    """``y_engage``/``y_visit``: 1 as soon as an observed month of the window shows the step, 0 when all
    three months are observed without it, else null (the rule of ``y``)."""
    complete = F.col("mi") + max(HORIZONS) <= observed_through
    labels = [F.when(F.col(f"_{step}") == 1, 1).when(complete, 0).cast("int").alias(name)
              for step, name in zip(("engage", "visit"), FUNNEL_LABELS)]
    return frame.select("*", *labels).drop("_engage", "_visit")


def _static(owners: DataFrame, purchases: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Owner attributes and, per buyer, the array of purchase month indexes (small: broadcast)."""
    static = owners.select(
        ID, "brand", "segment", "gender", "region_tier", "owner_age",
        F.col("has_loan").cast("int").alias("has_loan"), "loan_term_months",
        F.col("loyalty_member").cast("int").alias("loyalty_member"), F.col("has_app").cast("int").alias("has_app"),
        month_index("vehicle_start_month").alias("_vehicle_start"),
    )
    bought = purchases.groupBy(ID).agg(F.collect_list(month_index("month")).alias("_purchase_mis"))
    return static, bought


def _vehicle_columns(frame: DataFrame) -> DataFrame:
    last_purchase = F.array_max(F.filter(F.coalesce("_purchase_mis", F.array().cast("array<int>")),
                                         lambda x: x <= F.col("mi")))
    start = F.greatest(F.coalesce(last_purchase, F.col("_vehicle_start")), F.col("_vehicle_start"))
    loan_left = F.when((F.col("has_loan") == 1) & last_purchase.isNull(),
                       F.col("_vehicle_start") + F.col("loan_term_months") - F.col("mi"))
    return frame.select(
        "*",
        (F.col("mi") - start).alias("vehicle_age_months"),
        (F.col("mi") - last_purchase).alias("months_since_last_purchase"),
        loan_left.alias("loan_months_left"),
    ).drop("_purchase_mis", "_vehicle_start")


def builtin_features(spark: SparkSession, cfg: Config, store: TableStore, months: list[str],
                     observed_through: int) -> DataFrame:
    """The ``features`` rows of ``months`` computed from owners, monthly_activity and purchases."""
    fc = cfg.features
    lookback = max(max(fc.windows), fc.recency_lookback_months, ENGAGE_BASELINE_MONTHS)
    first = add_months(min(months), -(lookback - 1))
    # the funnel labels read the activity of T+1..T+3 too (months after observed_through are dropped)
    window = store.read("monthly_activity").filter(
        F.col("month").between(first, add_months(max(months), max(HORIZONS))))
    activity = window.filter(F.col("month") <= max(months))
    owners = store.read("owners")
    purchases = store.read("purchases")
    for df, table in ((owners, "owners"), (window, "monthly_activity"), (purchases, "purchases")):
        validate(df, table)
    channels = [c for c in activity.columns if c not in (ID, "month")]
    act = activity.withColumn("mi", month_index("month"))
    targets = [parse_month(m) for m in months]
    feats = activity_features(act, channels, sorted(fc.windows), fc.recency_lookback_months, targets) \
        .withColumn("month", month_key("mi"))
    static, bought = _static(owners, purchases)
    frame = feats.join(static, ID, "inner").join(F.broadcast(bought), ID, "left")
    frame = _vehicle_columns(frame)
    past = purchases.filter(month_index("month") <= F.lit(max(parse_month(m) for m in months) + 3))
    frame = frame.join(label_columns(past, observed_through), [ID, "mi"], "left")
    ahead = window.withColumn("mi", month_index("month"))
    frame = frame.join(funnel_labels(ahead, observed_through, targets), [ID, "mi"], "left")
    return _funnel(_labels(frame, observed_through), observed_through).drop("mi")


def activity_months(store: TableStore) -> list[str]:
    """The months present in ``monthly_activity`` (one scan of the partition column)."""
    months = sorted(r["month"] for r in store.read("monthly_activity").select("month").distinct().collect())
    if not months:
        raise DataValidationError("monthly_activity", [("*", "input is empty (0 rows)")])
    return months


def resolve_observed_through(cfg: Config, available: list[str]) -> int:
    """Month index of the last month whose purchases are known (conf, else newest activity month)."""
    return parse_month(cfg.features.observed_through or max(available))


def build_features(spark: SparkSession, cfg: Config, store: TableStore, months: list[str] | None = None
                   ) -> dict[str, Any]:
    """Compute and write ``features`` for ``months`` (default: every month of the raw data).

    Each month is replaced atomically; re-running never duplicates rows. Returns per-month
    row counts and positive rates of the written rows.
    """
    if cfg.features.source == "custom":
        features, months = import_custom_features(spark, cfg, months)
        observed = None
    else:
        available = activity_months(store)
        observed_idx = resolve_observed_through(cfg, available)
        months = months or available
        missing = [m for m in months if m not in available]
        if missing:
            raise DataValidationError("monthly_activity", [("month", f"no rows for requested months {missing}")])
        gaps = [format_month(i) for i in range(parse_month(available[0]), parse_month(available[-1]))
                if format_month(i) not in available]
        if gaps:  # rolling windows over a missing month would silently treat it as no activity
            raise DataValidationError("monthly_activity", [("month", f"no rows for months {gaps} between "
                                                                     f"{available[0]} and {available[-1]}: a missing "
                                                                     "extract; load it before building features")])
        features = builtin_features(spark, cfg, store, months, observed_idx)
        observed = format_month(observed_idx)
    version = store.write_months(features, "features", months)
    per_month = month_summary(store.read("features", version=version, months=months))
    warnings = [f"features month {m}: no positives among {r['labelled']} labelled rows; is the purchases "
                "extract for the months after it complete?" for m, r in per_month.items()
                if r["labelled"] and not r["positives"]]
    for warning in warnings:
        print(f"[remedi] warning: {warning}", file=sys.stderr, flush=True)
    return {"months": months, "observed_through": observed, "version": version, "per_month": per_month,
            "warnings": warnings}


def month_summary(features: DataFrame) -> dict[str, dict[str, Any]]:
    """Rows, labelled rows, positives and positive rate per month of a features frame."""
    rows = features.groupBy("month").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("label_complete").cast("int")).alias("labelled"),
        F.sum(F.when(F.col("label_complete"), F.col("y"))).alias("positives"),
    ).orderBy("month").collect()
    return {r["month"]: {"rows": r["rows"], "labelled": r["labelled"], "positives": r["positives"] or 0,
                         "positive_rate": (r["positives"] or 0) / r["labelled"] if r["labelled"] else None}
            for r in rows}
