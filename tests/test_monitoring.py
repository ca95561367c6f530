"""Monitoring: PSI against hand-computed cases, Spark PSI = numpy PSI on the same buckets, a
drifted synthetic month flagged and a stable one not, the retraining rules."""
import numpy as np
import pandas as pd
import pytest

from remedi_spark.config import replace
from remedi_spark.io.store import TableStore
from remedi_spark.monitoring.monitor import decide
from remedi_spark.monitoring.psi import (bucket_counts, bucket_of, psi, psi_band, psi_from_counts, psi_table,
                                         spark_edges)
from remedi_spark.pipeline import run_stage


def test_psi_hand_computed():
    # shares 0.5/0.5 → 0.25/0.75: (0.25-0.5)·ln(0.5) + (0.75-0.5)·ln(1.5)
    expected = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.75 - 0.5) * np.log(0.75 / 0.5)
    assert psi_from_counts({"a": 50, "b": 50}, {"a": 25, "b": 75}) == pytest.approx(expected)
    assert expected == pytest.approx(0.2747, abs=1e-4)
    assert psi_from_counts({"a": 3, "b": 7}, {"a": 30, "b": 70}) == pytest.approx(0.0)
    # a bucket empty on one side counts as a share of 1e-4, not infinity
    assert np.isfinite(psi_from_counts({"a": 10}, {"a": 5, "missing": 5}))


def test_psi_bands():
    assert [psi_band(v) for v in (0.0, 0.0999, 0.1, 0.2499, 0.25, 3.0)] == [
        "stable", "stable", "moderate", "moderate", "significant", "significant"]


def test_buckets_put_edges_low_and_missing_apart():
    labels = bucket_of(np.array([0.5, 1.0, 1.5, 2.0, 9.0, np.nan]), [1.0, 2.0])
    assert labels.tolist() == ["b0", "b0", "b1", "b1", "b2", "missing"]


def test_numpy_psi_sees_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 20_000)
    assert psi(reference, rng.normal(0, 1, 20_000)) < 0.01
    assert psi(reference, rng.normal(1, 1, 20_000)) > 0.25


def test_spark_psi_equals_numpy_on_the_same_buckets(spark):
    rng = np.random.default_rng(1)
    ref = pd.DataFrame({"x": rng.gamma(2, 1, 3000), "c": rng.choice(["a", "b", "c"], 3000)})
    cur = pd.DataFrame({"x": rng.gamma(2, 1.3, 2000), "c": rng.choice(["a", "b"], 2000)})
    ref.loc[ref.index[:100], "x"] = np.nan
    cur.loc[cur.index[:300], "x"] = np.nan  # a feed going dark is drift too
    sref, scur = spark.createDataFrame(ref), spark.createDataFrame(cur)
    got = psi_table(sref, scur, ["x", "c"]).set_index("feature")
    edges = spark_edges(sref, ["x", "c"], 10, 0.001)["x"]
    count = lambda v: pd.Series(bucket_of(v, edges)).value_counts().to_dict()  # noqa: E731
    assert got.loc["x", "psi"] == pytest.approx(psi_from_counts(count(ref["x"].to_numpy()), count(cur["x"].to_numpy())))
    assert got.loc["c", "psi"] == pytest.approx(psi_from_counts(ref["c"].value_counts().to_dict(),
                                                                cur["c"].value_counts().to_dict()))
    counts = bucket_counts(scur, ["x"], {"x": edges})
    assert counts.loc[counts["bucket"] == "missing", "rows"].item() == 300


@pytest.fixture(scope="module")
def drifted_world(spark, base_cfg, tmp_path_factory):
    cfg = replace(base_cfg, tables={"root": str(tmp_path_factory.mktemp("drift") / "t")},
                  synthetic={"n_users": 3000, "chunk_users": 1500, "start_month": "2024-03", "end_month": "2024-12",
                             "drift_month": "2024-12", "drift_strength": 1.0})
    run_stage(spark, cfg, "generate")
    run_stage(spark, cfg, "features")
    return cfg, TableStore(spark, cfg.tables.root)


DIGITAL = ["web_query_cnt_s1", "analysis_cnt", "applet_flux", "web_query_cnt_s1_sum3", "analysis_cnt_sum3",
           "applet_flux_sum3"]


def test_a_drifted_month_is_flagged_and_a_stable_one_is_not(drifted_world):
    cfg, store = drifted_world
    reference = store.read("features", months=["2024-06", "2024-07", "2024-08", "2024-09"])
    stable = psi_table(reference, store.read("features", months=["2024-11"]), DIGITAL)
    drifted = psi_table(reference, store.read("features", months=["2024-12"]), DIGITAL)
    assert (stable["band"] != "significant").all(), stable
    assert (drifted.set_index("feature").loc[["web_query_cnt_s1", "analysis_cnt"], "band"] == "significant").all(), drifted


def test_retraining_rules(base_cfg):
    cfg = replace(base_cfg, monitoring={"min_realized_precision": 0.03, "max_model_age_months": 6})
    ok = [{"check": "realized", "subject": "lead_list", "metric": "precision", "value": 0.04, "evaluated_month": "2024-10"},
          {"check": "feature_psi", "subject": "x", "value": 0.4, "band": "significant", "flagged": False},
          {"check": "score_psi", "subject": "student", "value": 0.05, "band": "stable", "flagged": False}]
    assert decide(ok, model_age=2, cfg=cfg) == (False, [])
    low = [{**ok[0], "value": 0.01}, {**ok[1], "flagged": True}, ok[2]]
    retrain, reasons = decide(low, model_age=7, cfg=cfg)
    assert retrain and len(reasons) == 3
    assert "1.00%" in reasons[0] and "top feature x" in reasons[1] and "7 months" in reasons[2]
