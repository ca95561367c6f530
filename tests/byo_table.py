"""A small bring-your-own features table, made with numpy/pandas only (not the synthetic simulator).

``byo_table(n_customers, months, seed)`` returns one row per customer and month with the columns a
user might bring: an integer id ``cust_no``, the month as ``'YYYY-MM'`` text in ``snapshot_month``,
a 0/1 label ``bought`` and the columns in :data:`FEATURE_COLS` (numeric, some with missing values)
of which :data:`CATEGORICAL_COLS` are strings. Names differ from ``user_id``/``month``/``y`` so a
test exercises the ``features.custom`` mapping.

Each customer has a persistent propensity and a profile; the monthly columns are noisy readings of
both. The label's log-odds depend non-linearly on a handful of columns (a saturating engagement
term, a bump in tenure, an interaction of a visit count with the plan, a region effect) plus the
hidden propensity and noise, with the intercept set for ~4-4.5% positives (fewer in the first
months, whose 3-month sums are shorter): a LightGBM on a few thousand rows reaches an out-of-fold
AUC of roughly 0.75-0.8. The other columns are correlated distractors or pure noise. Same
arguments, same frame.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ID_COL, MONTH_COL, LABEL_COL = "cust_no", "snapshot_month", "bought"
CATEGORICAL_COLS = ["region", "plan"]
NUMERIC_COLS = ["tenure_months", "age", "income_k", "web_sessions", "web_sessions_3m", "app_logins", "email_clicks",
                "store_visits", "store_visits_3m", "calls", "complaints", "quote_requests", "balance", "payment_delay",
                "discount_used", "support_minutes", "noise_a", "noise_b", "noise_c"]
FEATURE_COLS = NUMERIC_COLS + CATEGORICAL_COLS
NULLABLE = ["income_k", "web_sessions", "app_logins", "balance", "support_minutes", "region"]  # ~5% missing each
REGIONS, PLANS = ["north", "south", "east", "west", "island"], ["basic", "plus", "premium"]


def byo_table(n_customers: int = 1500, months: list[str] | tuple[str, ...] = ("2024-01", "2024-02", "2024-03",
                                                                            "2024-04"), seed: int = 0) -> pd.DataFrame:
    """``n_customers`` x ``len(months)`` rows (``months``: consecutive ``'YYYY-MM'``, oldest first): id, month,
    label and :data:`FEATURE_COLS` (see the module doc)."""
    rng = np.random.default_rng(seed)
    n, t = n_customers, len(months)
    # customer level: hidden propensity, profile
    latent = rng.normal(size=n)
    region = rng.choice(REGIONS, size=n, p=[0.3, 0.25, 0.2, 0.2, 0.05])
    plan = rng.choice(PLANS, size=n, p=[0.5, 0.35, 0.15])
    tenure0 = rng.gamma(2.0, 18.0, size=n)
    age = rng.normal(45, 12, size=n).clip(18, 90).round()
    income = np.exp(rng.normal(4.0 + 0.1 * latent, 0.4, size=n))


    def rep(a: np.ndarray) -> np.ndarray:  # a customer's value on each of its rows (customer-major, months in order)
        return np.repeat(a, t)

    def pois(mean) -> np.ndarray:  # counts with a per-row mean
        return rng.poisson(np.clip(np.broadcast_to(mean, n * t), 0, None)).astype(float)

    k = np.tile(np.arange(t), n)  # month number of each row
    lat = rep(latent) + rng.normal(0, 0.5, size=n * t)  # this month's intent

    df = pd.DataFrame({
        ID_COL: rep(np.arange(100_001, 100_001 + n, dtype=np.int64)),
        MONTH_COL: np.tile(np.asarray(months, dtype=object), n),
        "tenure_months": rep(tenure0).round() + k,
        "age": rep(age),
        "income_k": rep(income).round(1),
        "web_sessions": pois(2.0 * np.exp(0.5 * lat)),
        "app_logins": pois(3.0 + 0.8 * lat),
        "email_clicks": pois(0.6 * np.exp(0.3 * lat)),
        "store_visits": pois(0.3 * np.exp(0.6 * lat)),
        "calls": pois(0.5 + 0.2 * lat),
        "complaints": pois(0.1 + 0.05 * (rep(plan) == "basic")),
        "quote_requests": pois(0.05 * np.exp(0.8 * lat)),
        "balance": rng.normal(1000, 400, size=n * t).round(2),
        "payment_delay": pois(0.3 - 0.1 * lat),
        "discount_used": rng.binomial(1, 0.2, size=n * t).astype(float),
        "support_minutes": rng.gamma(1.0, 5.0, size=n * t).round(1),
        "noise_a": rng.normal(size=n * t), "noise_b": rng.uniform(size=n * t), "noise_c": pois(1.0),
        "region": rep(region).astype(object), "plan": rep(plan).astype(object),
    })
    # 3-month sums of this customer's rows (fewer at the start)
    for col in ("web_sessions", "store_visits"):
        df[f"{col}_3m"] = df.groupby(ID_COL)[col].transform(lambda s: s.rolling(3, min_periods=1).sum())
    # label: non-linear in a handful of columns, plus hidden intent and noise
    z = (1.5 * np.tanh(df["web_sessions_3m"] / 8.0)
         + 0.9 * np.exp(-((df["tenure_months"] - 48.0) / 15.0) ** 2)
         + 0.45 * df["store_visits"] * (df["plan"] != "basic")
         + 0.6 * np.minimum(df["quote_requests"], 2)
         + df["region"].map({"north": 0.0, "south": 0.3, "east": -0.3, "west": 0.0, "island": 0.6}).to_numpy()
         + 0.8 * lat + rng.normal(0, 0.5, size=n * t))
    df[LABEL_COL] = rng.binomial(1, 1.0 / (1.0 + np.exp(-(z - 5.1)))).astype(np.int32)
    for col in NULLABLE:  # missing values after the label: missingness is noise, not signal
        df.loc[rng.uniform(size=n * t) < 0.05, col] = None
    return df[[ID_COL, MONTH_COL, LABEL_COL, *FEATURE_COLS]]
