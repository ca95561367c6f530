"""Feature job on a hand-built world: labels per horizon, open windows, window features, idempotence."""
import pytest
from pyspark.sql import functions as F

from remedi_spark.features.build import build_features
from remedi_spark.io.schemas import DataValidationError
from remedi_spark.io.store import TableStore
from remedi_spark.months import month_range
from tests.tiny import activity, frame, owner, purchase

MONTHS = month_range("2024-06", "2024-10")


def _hand_built(spark, cfg) -> tuple:
    """Three owners' raw tables over 2024-06..2024-10 on ``cfg``'s root: (spark, cfg, store)."""
    store = TableStore(spark, cfg.tables.root)
    store.write_table(frame(spark, "owners", [
        owner(1), owner(2, has_loan=True, loan_term_months=60), owner(3)]), "owners")
    visits2 = dict(zip(MONTHS, [1, 0, 2, 0, 3]))
    rows = [activity(1, m) for m in MONTHS] + [activity(2, m, visit_days=visits2[m]) for m in MONTHS]
    rows += [activity(3, "2024-06", visit_days=1), activity(3, "2024-08", visit_days=2)]  # 2024-07 absent
    store.write_months(frame(spark, "monthly_activity", rows), "monthly_activity", MONTHS)
    store.write_months(frame(spark, "purchases", [purchase(1, "2024-09")]), "purchases", ["2024-09"])
    return spark, cfg, store


@pytest.fixture
def world(spark, cfg_at):
    """The hand-built raw tables on this test's own root (for the tests that build or break features)."""
    return _hand_built(spark, cfg_at())


@pytest.fixture(scope="module")
def built(spark, base_cfg, tmp_path_factory):
    """The hand-built world with its features built once, for the tests that only read them:
    (store, the feature job's summary)."""
    from remedi_spark.config import replace

    cfg = replace(base_cfg, tables={"root": str(tmp_path_factory.mktemp("features") / "tables")})
    spark, cfg, store = _hand_built(spark, cfg)
    return store, build_features(spark, cfg, store)


def _rows(store, *cols):
    df = store.read("features")
    return {(r["user_id"], r["month"]): r for r in df.select("user_id", "month", *cols).collect()}


def test_labels_per_horizon_and_open_windows(built):
    store, summary = built
    assert summary["observed_through"] == "2024-10"
    r = _rows(store, "y", "y_h1", "y_h2", "y_h3", "label_complete")
    lab = {k: (v["y"], v["y_h1"], v["y_h2"], v["y_h3"], v["label_complete"]) for k, v in r.items()}
    # user 1 buys in 2024-09
    assert lab[(1, "2024-06")] == (1, 0, 0, 1, True)
    assert lab[(1, "2024-07")] == (1, 0, 1, 0, True)  # buy in T+2 → y = 1, y_h2 = 1
    assert lab[(1, "2024-08")] == (1, 1, 0, None, False)  # T+3 not observed yet: null, y known positive
    assert lab[(1, "2024-09")] == (None, 0, None, None, False)
    assert lab[(1, "2024-10")] == (None, None, None, None, False)
    assert lab[(2, "2024-07")] == (0, 0, 0, 0, True)
    assert lab[(2, "2024-08")] == (None, 0, 0, None, False)  # unknown, not negative


def test_window_recency_and_vehicle_features(built):
    store, _ = built
    r = _rows(store, "visit_days", "visit_days_sum3", "visit_days_mean3", "visit_days_sum6", "visit_days_mom",
              "months_since_dealer_visit", "vehicle_age_months", "months_since_last_purchase", "loan_months_left",
              "history_months", "brand")
    u2 = r[(2, "2024-10")]
    assert (u2["visit_days_sum3"], u2["visit_days_mom"], u2["visit_days_sum6"]) == (5, 3, 6)
    assert u2["visit_days_mean3"] == pytest.approx(5 / 3)
    assert r[(2, "2024-09")]["months_since_dealer_visit"] == 1
    assert r[(2, "2024-06")]["loan_months_left"] == 7  # 2020-01 + 60 months = 2025-01
    assert r[(1, "2024-06")]["months_since_dealer_visit"] is None  # no visit in the look-back
    # a missing month is not the previous month: no month-over-month value, window sums what exists
    u3 = r[(3, "2024-08")]
    assert (u3["visit_days_mom"], u3["visit_days_sum3"], u3["history_months"]) == (None, 3, 2)
    # a purchase resets the vehicle age
    assert r[(1, "2024-08")]["vehicle_age_months"] == 55 and r[(1, "2024-08")]["months_since_last_purchase"] is None
    assert (r[(1, "2024-10")]["vehicle_age_months"], r[(1, "2024-10")]["months_since_last_purchase"]) == (1, 1)
    assert r[(1, "2024-06")]["brand"] == "aurora"


@pytest.mark.slow  # the feature job three times over
def test_rebuilding_one_month_is_idempotent(world):
    spark, cfg, store = world
    build_features(spark, cfg, store)
    before = store.read("features").count()
    build_features(spark, cfg, store, months=["2024-08"])
    build_features(spark, cfg, store, months=["2024-08"])
    after = store.read("features")
    assert after.count() == before
    assert after.groupBy("user_id", "month").count().filter("count > 1").count() == 0


def test_asking_for_a_month_without_data_fails_clearly(world):
    spark, cfg, store = world
    with pytest.raises(DataValidationError, match=r"(?s)monthly_activity.*no rows for requested months \['2024-12'\]"):
        build_features(spark, cfg, store, months=["2024-12"])
    assert not store.exists("features")


def test_bad_raw_input_is_refused_before_writing(world):
    spark, cfg, store = world
    bad = frame(spark, "monthly_activity", [activity(1, "2024-10", voice_cnt=-2)])
    # written around the store's validation to simulate an upstream system producing bad data
    bad.write.format("delta").mode("overwrite").option("replaceWhere", "month = '2024-10'") \
        .save(store.path("monthly_activity"))
    with pytest.raises(DataValidationError, match="(?s)voice_cnt.*negative"):
        build_features(spark, cfg, store)
    assert not store.exists("features")


def test_custom_feature_table(spark, cfg_at, tmp_path):
    path = str(tmp_path / "mine")
    spark.createDataFrame(
        [(7, "2024-06-01", 1, 0.5, "a"), (7, "2024-07-01", 0, 1.5, "b"), (8, "2024-06-01", None, 2.0, "a")],
        "cid int, snapshot string, bought int, score double, tier string",
    ).withColumn("snapshot", F.to_date("snapshot")).write.format("delta").save(path)
    custom = {"path": path, "id_col": "cid", "month_col": "snapshot", "label_col": "bought",
              "feature_cols": ["score", "tier"], "categorical_cols": ["tier"]}
    cfg = cfg_at(features={"source": "custom", "custom": custom})
    store = TableStore(spark, cfg.tables.root)
    summary = build_features(spark, cfg, store)
    assert summary["months"] == ["2024-06", "2024-07"]
    rows = {(r["user_id"], r["month"]): r for r in store.read("features").collect()}
    assert rows[(7, "2024-06")]["y"] == 1 and rows[(7, "2024-06")]["score"] == 0.5
    assert rows[(8, "2024-06")]["label_complete"] is False
    missing = cfg_at(tables={"root": str(tmp_path / "t2")},
                     features={"source": "custom", "custom": {**custom, "feature_cols": ["score", "nope"]}})
    with pytest.raises(DataValidationError, match=r"(?s)custom features .*'nope': missing"):
        build_features(spark, missing, TableStore(spark, missing.tables.root))
