"""The simulated world behind the synthetic data: owners, latent purchase intent, channels.

Pure numpy, one chunk of users at a time, so the Spark job can run it per partition and
the tests can call it directly. Nothing here knows about Spark.

The story, in brief:

* Each owner has static attributes (brand, segment, region, age, loan, app, ...) and an
  unobserved, idiosyncratic propensity.
* Purchase intent is a hidden 4-state chain (dormant → aware → exploring → shopping) that
  moves month to month. How fast it climbs depends on a *drive* that saturates with vehicle
  age, jumps when a car loan ends, and differs by segment and region.
* Purchases happen mostly from the shopping state; a purchase resets the vehicle age and
  starts a cool-down during which the owner cannot buy again.
* Intent leaks into the observed channels with different lags, thresholds and segment
  effects (digital channels lead and are weaker for older owners, calls lag, dealer visits
  only appear once exploring, service visits are pure confounders, some columns are noise).
* Because the chain and its covariates are known, the true probability of buying in
  T+1, T+2, T+3 is computed exactly by forward propagation: the ``oracle``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BRANDS = np.array(["aurora", "bexley", "corsa", "dunmore", "elan", "fjord", "galea", "harlan"])
BRAND_P = np.array([0.24, 0.18, 0.15, 0.12, 0.11, 0.09, 0.06, 0.05])
SEGMENTS = np.array(["economy", "compact", "midsize", "suv", "premium"])
SEGMENT_P = np.array([0.25, 0.25, 0.2, 0.2, 0.1])
N_STATES = 4  # dormant, aware, exploring, shopping
SHOPPING = 3
COOLDOWN_MONTHS = 6  # no second purchase within this many months (must exceed the 3-month window)
N_REGIONS = 40
DEALERS_PER_REGION = 8

# Columns of the monthly activity table, with their Spark types (the schema file repeats them).
COUNT_CHANNELS = [
    "visit_days", "visit_brand_cnt", "service_visit_cnt", "voice_cnt", "voice_call_brand_cnt",
    "company_app_cnt", "app_active_days", "web_query_cnt_s1", "analysis_cnt", "used_request_cnt",
    "finance_calc_cnt", "email_open_cnt", "push_click_cnt", "social_share_cnt",
]
AMOUNT_CHANNELS = ["visit_total_dura", "applet_flux", "weather_index", "survey_score"]


@dataclass(frozen=True)
class WorldParams:
    """Knobs of the simulated world that the config exposes (see conf/base.yaml ``synthetic``)."""

    seed: int
    hazard_scale: float
    missing_rate: float
    burn_in_months: int
    drift_month_index: int | None = None  # from this month on, behaviour shifts (monitoring demos)
    drift_strength: float = 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def chunk_rng(seed: int, chunk: int) -> np.random.Generator:
    """The random stream of one user chunk: the same (seed, chunk) always gives the same data."""
    return np.random.default_rng(np.random.SeedSequence([seed, chunk]))


def draw_owners(rng: np.random.Generator, user_ids: np.ndarray, start_index: int) -> dict[str, np.ndarray]:
    """Static owner attributes for ``user_ids``; ``start_index`` is the first simulated month."""
    n = len(user_ids)
    owner_age = np.clip(rng.normal(44, 12, n), 19, 80).round().astype(np.int32)
    region = rng.integers(0, N_REGIONS, n)
    region_tier = np.minimum(1 + region // 8, 4).astype(np.int32)  # 8 tier-1 regions, ..., 16 tier-4
    vehicle_age0 = np.clip(rng.gamma(2.2, 26.0, n), 1, 240).round().astype(np.int32)
    has_loan = rng.random(n) < 0.45
    loan_term = rng.choice(np.array([36, 48, 60], dtype=np.int32), n)
    young = owner_age < 40
    return {
        "user_id": user_ids.astype(np.int64),
        "brand": rng.choice(BRANDS, n, p=BRAND_P),
        "segment": rng.choice(SEGMENTS, n, p=SEGMENT_P),
        "region_id": region.astype(np.int32),
        "region_tier": region_tier,
        "dealer_id": np.char.add("D", (region * 100 + rng.integers(0, DEALERS_PER_REGION, n)).astype(str)),
        "owner_age": owner_age,
        "gender": rng.choice(np.array(["F", "M", "U"]), n, p=[0.38, 0.57, 0.05]),
        "vehicle_start_index": (start_index - vehicle_age0).astype(np.int32),
        "has_loan": has_loan,
        "loan_term_months": np.where(has_loan, loan_term, 0).astype(np.int32),
        "loyalty_member": rng.random(n) < 0.3,
        "do_not_contact": rng.random(n) < 0.04,
        "has_app": rng.random(n) < np.where(young, 0.75, 0.45),
        # unobserved traits
        "digital": rng.lognormal(0.0, 0.9, n),
        "propensity": rng.normal(0.0, 0.6, n),
        "service_phase": rng.integers(0, 6, n),
    }


def drive(owners: dict[str, np.ndarray], vehicle_start: np.ndarray, t: int, params: WorldParams) -> np.ndarray:
    """Readiness to move towards a purchase in month ``t`` (larger = climbs intent faster)."""
    age_y = (t - vehicle_start) / 12.0
    seg = owners["segment"]
    d = 1.6 * np.tanh(age_y / 5.0)
    d += np.where((seg == "premium") & (age_y > 3.0), 0.7, 0.0)  # threshold: premium owners upgrade early
    d += np.where(seg == "economy", 0.4 * np.tanh(age_y / 9.0) - 0.2, 0.0)
    loan_end = vehicle_start + owners["loan_term_months"]
    to_loan_end = loan_end - t
    d += np.where(owners["has_loan"] & (to_loan_end >= -1) & (to_loan_end <= 3), 1.0, 0.0)
    d += np.array([0.25, 0.1, 0.0, -0.15])[owners["region_tier"] - 1]
    d -= 0.01 * np.abs(owners["owner_age"] - 45)
    d += owners["propensity"]
    d += 0.15 * np.cos(2 * np.pi * ((t % 12) - 3) / 12.0)  # spring peak
    return d


_UP_OFFSET = np.array([4.5, 3.2, 2.4])  # how hard each climb is: dormant→aware, aware→exploring, exploring→shopping
_DOWN = np.array([0.0, 0.30, 0.25, 0.22])  # chance to fall back one level
_BASE_HAZARD = np.array([0.0004, 0.0015, 0.008, 0.08])  # dormant owners still buy now and then (write-offs, impulse)


def transition_matrix(d: np.ndarray) -> np.ndarray:
    """Per-user 4×4 transition matrices, shape (n, 4, 4), rows sum to 1."""
    n = len(d)
    up = 0.6 * _sigmoid(d[:, None] - _UP_OFFSET[None, :])  # (n, 3)
    p = np.zeros((n, N_STATES, N_STATES))
    for s in range(N_STATES):
        go_up = up[:, s] if s < N_STATES - 1 else np.zeros(n)
        go_down = np.full(n, _DOWN[s])
        if s < N_STATES - 1:
            p[:, s, s + 1] = go_up
        if s > 0:
            p[:, s, s - 1] = go_down
        p[:, s, s] = 1.0 - go_up - go_down
    return p


def hazard(d: np.ndarray, params: WorldParams) -> np.ndarray:
    """Purchase probability per state, shape (n, 4), before the cool-down is applied."""
    h = params.hazard_scale * _BASE_HAZARD[None, :] * np.exp(0.45 * d)[:, None]
    return np.clip(h, 0.0, 0.9)


def step_states(rng: np.random.Generator, state: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Draw next states from per-user transition matrices."""
    cum = np.cumsum(p[np.arange(len(state)), state], axis=1)
    return np.minimum((rng.random(len(state))[:, None] > cum).sum(axis=1), N_STATES - 1)


def oracle_probabilities(
    owners: dict[str, np.ndarray], state: np.ndarray, cooldown: np.ndarray,
    vehicle_start: np.ndarray, t: int, params: WorldParams,
) -> np.ndarray:
    """Exact P(purchase in month t+h) for h = 1, 2, 3, given the state at the end of month ``t``.

    Propagates the distribution over intent states forward with the same transition and
    hazard rules as the simulation; mass that buys leaves (a second purchase inside the
    window is impossible because the cool-down is longer than the window). Returns (n, 3).
    """
    n = len(state)
    dist = np.zeros((n, N_STATES))
    dist[np.arange(n), state] = 1.0
    out = np.zeros((n, 3))
    cd = cooldown.copy()
    for h in range(1, 4):
        d = drive(owners, vehicle_start, t + h, params)
        dist = np.einsum("ns,nst->nt", dist, transition_matrix(d))
        cd = np.maximum(cd - 1, 0)
        hz = hazard(d, params) * (cd == 0)[:, None]
        out[:, h - 1] = (dist * hz).sum(axis=1)
        dist = dist * (1.0 - hz)
    return out


def _negbin(rng: np.random.Generator, mean: np.ndarray, shape: float) -> np.ndarray:
    """Over-dispersed counts (gamma–Poisson) with the given mean; small ``shape`` = heavy tail."""
    return rng.poisson(rng.gamma(shape, np.maximum(mean, 1e-9) / shape)).astype(np.int64)


def emit_activity(
    rng: np.random.Generator, owners: dict[str, np.ndarray], s_now: np.ndarray, s_prev: np.ndarray,
    bought_prev: np.ndarray, vehicle_start: np.ndarray, t: int, params: WorldParams,
) -> dict[str, np.ndarray]:
    """One month of observed channel activity. Counts are float arrays with NaN for missing."""
    n = len(s_now)
    age = owners["owner_age"]
    digital = owners["digital"] * np.where(age < 40, 1.5, np.where(age > 58, 0.5, 1.0))
    # older owners barely show intent online: the digital signal is damped for them (segment-specific effect)
    online_gain = np.where(age > 58, 0.3, 1.0)
    vehicle_age_y = (t - vehicle_start) / 12.0
    intent_link = 1.0  # how strongly digital activity follows intent
    if params.drift_month_index is not None and t >= params.drift_month_index:
        # the shift (monitoring demos): a campaign inflates digital activity for every owner and
        # drowns its link to purchase intent, and showroom events add dealer visits (below);
        # buying itself is unchanged, so the features drift and the model loses precision
        digital = digital * (1.0 + 3.0 * params.drift_strength)
        intent_link = max(0.0, 1.0 - params.drift_strength)
        online_gain = online_gain * intent_link

    def lift(table: list[float], states: np.ndarray, gain: np.ndarray | float = 1.0) -> np.ndarray:
        return np.exp(gain * np.log(np.asarray(table))[states])

    # dealer visits: service visits every six months (confounder) + shopping visits from "exploring" on (threshold)
    service = ((t + owners["service_phase"]) % 6 == 0) & (rng.random(n) < 0.7)
    service = service | (bought_prev & (rng.random(n) < 0.8))  # delivery/first service after a purchase
    shop_visits = rng.poisson(np.array([0.0, 0.02, 0.45, 1.9])[s_now])
    visit_days = service.astype(np.int64) + shop_visits
    if intent_link < 1.0:  # the shift: dealers also log showroom-event visits, whatever the owner's intent
        visit_days = visit_days + (rng.random(n) < 0.4 * (1.0 - intent_link)).astype(np.int64)
    other_brands = rng.binomial(np.minimum(shop_visits, 4), 0.55)
    visit_brand_cnt = np.where(visit_days > 0, np.where(service | (shop_visits > other_brands), 1, 0) + other_brands, 0)
    visit_brand_cnt = np.maximum(visit_brand_cnt, (visit_days > 0).astype(np.int64))
    dura = service * rng.lognormal(np.log(80), 0.4, n) + shop_visits * rng.lognormal(np.log(40), 0.6, n)
    dura = np.where(visit_days > 0, dura, 0.0)
    dura[(visit_days > 0) & (rng.random(n) < 0.12)] = np.nan  # sensor gaps at dealers

    # calls lag intent by a month and matter more for older owners
    call_gain = np.where(age > 50, 1.6, np.where(age < 35, 0.6, 1.0))
    voice_cnt = _negbin(rng, 0.35 * lift([1.0, 1.4, 2.6, 4.5], s_prev, call_gain), 1.2)
    call_brands = rng.binomial(3, np.array([0.01, 0.08, 0.3, 0.55])[s_prev])
    voice_call_brand_cnt = np.where(voice_cnt > 0, np.minimum(voice_cnt, 1 + call_brands), 0)

    # apps: count of manufacturer apps (diversity) climbs with intent; active days are engagement, not intent
    has_app = owners["has_app"]
    company_app_cnt = has_app.astype(np.int64) + rng.binomial(4, np.array([0.01, 0.04, 0.18, 0.33])[s_now])
    app_days = np.where(has_app, rng.binomial(30, np.clip(0.08 * digital + 0.25 * bought_prev, 0, 0.95)), np.nan)

    # digital channels lead intent (aware/exploring), saturate, and have heavy tails
    web = _negbin(rng, 2.0 * digital * lift([1.0, 2.2, 3.4, 3.8], s_now, online_gain), 0.6)
    analysis = _negbin(rng, 0.6 * digital * lift([1.0, 2.8, 4.5, 5.0], np.maximum(s_now, s_prev), online_gain), 0.5)
    applet_on = rng.random(n) < np.clip(0.35 * digital, 0.05, 0.9)
    applet = np.where(applet_on, rng.lognormal(np.log(3.0 * digital) + 0.5 * intent_link * (s_now >= 2), 1.3), 0.0)

    # trade-in lookups: intent × vehicle age interaction; finance calculator: loan holders and economy owners
    used = rng.poisson(0.04 + np.array([0.0, 0.25, 0.9, 1.4])[s_now] * np.where(vehicle_age_y > 4, 1.5, 0.4))
    fin_gain = np.where(owners["has_loan"] | (owners["segment"] == "economy"), 1.0, 0.2)
    finance = rng.poisson(0.02 + fin_gain * np.array([0.0, 0.08, 0.35, 0.8])[s_now])

    cols: dict[str, np.ndarray] = {
        "visit_days": visit_days, "visit_brand_cnt": visit_brand_cnt,
        "service_visit_cnt": service.astype(np.int64), "voice_cnt": voice_cnt,
        "voice_call_brand_cnt": voice_call_brand_cnt, "company_app_cnt": company_app_cnt,
        "app_active_days": app_days, "web_query_cnt_s1": web, "analysis_cnt": analysis,
        "used_request_cnt": used, "finance_calc_cnt": finance,
        # pure noise: engagement that has nothing to do with buying
        "email_open_cnt": _negbin(rng, 3.0 * owners["digital"], 1.0),
        "push_click_cnt": np.where(has_app, _negbin(rng, 1.2 * owners["digital"], 0.8), 0),
        "social_share_cnt": _negbin(rng, np.full(n, 0.3), 0.3),
        "visit_total_dura": dura, "applet_flux": applet,
        "weather_index": rng.normal(0.0, 1.0, n),
        "survey_score": np.where(rng.random(n) < 0.3, rng.integers(1, 11, n), np.nan),
    }
    out: dict[str, np.ndarray] = {}
    for name, values in cols.items():
        values = values.astype(np.float64)
        if name not in ("weather_index",):
            values[rng.random(n) < params.missing_rate] = np.nan  # feed outages, at random
        out[name] = values
    return out


def simulate_chunk(
    params: WorldParams, chunk: int, user_ids: np.ndarray, start_index: int, end_index: int,
) -> tuple[dict[str, np.ndarray], list[pd.DataFrame]]:
    """Simulate one chunk of users over months ``start_index..end_index`` (inclusive).

    Returns the static owner attributes and one frame per month with activity, the
    purchase flag and the oracle probabilities. Deterministic in (seed, chunk).
    """
    rng = chunk_rng(params.seed, chunk)
    owners = draw_owners(rng, user_ids, start_index)
    n = len(user_ids)
    vehicle_start = owners["vehicle_start_index"].copy()
    state = np.zeros(n, dtype=np.int64)
    cooldown = np.zeros(n, dtype=np.int64)
    bought_prev = np.zeros(n, dtype=bool)
    frames: list[pd.DataFrame] = []
    for t in range(start_index - params.burn_in_months, end_index + 1):
        d = drive(owners, vehicle_start, t, params)
        s_prev = state
        state = step_states(rng, state, transition_matrix(d))
        cooldown = np.maximum(cooldown - 1, 0)
        hz = hazard(d, params)[np.arange(n), state] * (cooldown == 0)
        bought = rng.random(n) < hz
        activity = emit_activity(rng, owners, state, s_prev, bought_prev, vehicle_start, t, params) \
            if t >= start_index else None
        # a purchase resets the car, the intent and starts the cool-down
        vehicle_start = np.where(bought, t, vehicle_start)
        cooldown = np.where(bought, COOLDOWN_MONTHS, cooldown)
        state = np.where(bought, 0, state)
        bought_prev = bought
        if activity is None:
            continue
        oracle = oracle_probabilities(owners, state, cooldown, vehicle_start, t, params)
        frame = pd.DataFrame(activity)
        frame.insert(0, "user_id", owners["user_id"])
        frame.insert(1, "month_index", t)
        frame["purchased"] = bought
        frame["p_h1"], frame["p_h2"], frame["p_h3"] = oracle[:, 0], oracle[:, 1], oracle[:, 2]
        frames.append(frame)
    return owners, frames
