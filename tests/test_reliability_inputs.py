"""Bad input at the entry tables beyond the validator rules of test_validation: gaps and empty
months in the raw data, months without positives, columns with no value, unseen categories. Each
gives one clear error naming table, column and problem (and nothing is written downstream) or a
logged, documented repair."""
import pytest

from remedi_spark.features.build import build_features
from remedi_spark.folds.assign import assign_folds
from remedi_spark.io.schemas import DataValidationError
from remedi_spark.io.store import TableStore
from remedi_spark.models.base import FeatureSpec
from remedi_spark.months import month_range
from tests.tiny import activity, frame, owner, purchase

pytestmark = pytest.mark.reliability
MONTHS = month_range("2024-06", "2024-10")


def _world(spark, cfg_at, months=MONTHS, purchases=(("2024-09", 1),), **activity_values):
    """Three owners with activity in ``months``; ``activity_values`` (e.g. a column set to None)
    are written past the store's own validation."""
    cfg = cfg_at()
    store = TableStore(spark, cfg.tables.root)
    store.write_table(frame(spark, "owners", [owner(1), owner(2), owner(3)]), "owners")
    store.write_months(frame(spark, "monthly_activity", [activity(u, m) for m in months for u in (1, 2, 3)]),
                       "monthly_activity", list(months))
    rows = [activity(u, m, **activity_values) for m in months for u in (1, 2, 3)]
    store.write_months(frame(spark, "purchases", [purchase(u, m) for m, u in purchases]), "purchases",
                       sorted({m for m, _ in purchases}))
    if activity_values:  # written around the store's validation, like an upstream system would
        frame(spark, "monthly_activity", rows).write.format("delta").mode("overwrite") \
            .save(store.path("monthly_activity"))
    return cfg, store


def test_a_missing_month_inside_the_raw_range_is_refused(spark, cfg_at):
    cfg, store = _world(spark, cfg_at, months=[m for m in MONTHS if m != "2024-08"])
    with pytest.raises(DataValidationError, match=r"(?s)'monthly_activity'.*'month': no rows for months "
                                                  r"\['2024-08'\] between 2024-06 and 2024-10: a missing extract"):
        build_features(spark, cfg, store)
    assert not store.exists("features")


def test_a_raw_column_without_any_value_is_refused(spark, cfg_at):
    cfg, store = _world(spark, cfg_at, survey_score=None)
    with pytest.raises(DataValidationError, match=r"(?s)'monthly_activity'.*'survey_score': all 15 values are null"):
        build_features(spark, cfg, store)
    assert not store.exists("features")


def test_months_without_positives_are_logged_and_kept(spark, cfg_at, capsys):
    cfg, store = _world(spark, cfg_at, purchases=(("2024-06", 1),))  # labels only count T+1..T+3
    summary = build_features(spark, cfg, store)
    assert summary["warnings"] == ["features month 2024-06: no positives among 3 labelled rows; is the purchases "
                                   "extract for the months after it complete?",
                                   "features month 2024-07: no positives among 3 labelled rows; is the purchases "
                                   "extract for the months after it complete?"]
    assert "[remedi] warning: features month 2024-06" in capsys.readouterr().err
    folds = assign_folds(spark, cfg, store)
    assert folds["warnings"] == ["the out-of-time test month 2024-07 has no positives: its AUC and lift are "
                                 "undefined; check the purchases extract or set folds.months"]


def test_a_custom_feature_column_without_any_value_is_refused(spark, cfg_at, tmp_path):
    path = str(tmp_path / "mine")
    spark.createDataFrame([(7, "2024-06", 1, 0.5, None), (8, "2024-06", 0, 1.5, None)],
                          "cid int, m string, bought int, score double, empty double").write.format("delta").save(path)
    custom = {"path": path, "id_col": "cid", "month_col": "m", "label_col": "bought",
              "feature_cols": ["score", "empty"], "categorical_cols": []}
    cfg = cfg_at(features={"source": "custom", "custom": custom})
    store = TableStore(spark, cfg.tables.root)
    with pytest.raises(DataValidationError, match=r"(?s)custom features .*'empty': all values are null"):
        build_features(spark, cfg, store)
    assert not store.exists("features")


def test_a_custom_feature_table_with_infinite_values_is_refused(spark, cfg_at, tmp_path):
    path = str(tmp_path / "mine")
    spark.createDataFrame([(7, "2024-06", 1, float("inf")), (8, "2024-06", 0, 1.5)],
                          "cid int, m string, bought int, score double").write.format("delta").save(path)
    custom = {"path": path, "id_col": "cid", "month_col": "m", "label_col": "bought",
              "feature_cols": ["score"], "categorical_cols": []}
    cfg = cfg_at(features={"source": "custom", "custom": custom})
    store = TableStore(spark, cfg.tables.root)
    with pytest.raises(DataValidationError, match=r"(?s)'features'.*'score': 1 rows with NaN or infinite values \(missing must be "
                                                  r"null\), e\.g\. \(user_id=7, month='2024-06'\)"):
        build_features(spark, cfg, store)
    assert not store.exists("features")


def test_unseen_categories_are_counted_and_scored_as_missing(spark):
    train = spark.createDataFrame([(1, "2024-06", "suv", 1.0), (2, "2024-06", "compact", 2.0)],
                                  "user_id long, month string, segment string, x double")
    spec = FeatureSpec.from_frame(train)
    new = spark.createDataFrame([(3, "2024-07", "van", 1.0), (4, "2024-07", "suv", 1.0), (5, "2024-07", None, 1.0)],
                                "user_id long, month string, segment string, x double")
    assert spec.unseen_counts(new) == {"segment": 1}
    assert spec.unseen_counts(train) == {}
    codes = {r["user_id"]: r["segment"] for r in spec.encode(new).collect()}
    assert codes == {3: None, 4: 1.0, 5: None}  # vocabulary is sorted: compact=0, suv=1


def test_bad_owner_and_purchase_extracts_are_refused_before_features(spark, cfg_at):
    cfg, store = _world(spark, cfg_at)
    bad_owner = frame(spark, "owners", [owner(1), owner(2, segment="hovercraft")])
    bad_owner.write.format("delta").mode("overwrite").save(store.path("owners"))  # around the store, like an upstream job
    with pytest.raises(DataValidationError, match=r"(?s)'owners'.*'segment': 1 rows with values outside"):
        build_features(spark, cfg, store)
    store.write_table(frame(spark, "owners", [owner(1), owner(2), owner(3)]), "owners")
    dup = frame(spark, "purchases", [purchase(1, "2024-09"), purchase(1, "2024-09")])
    dup.write.format("delta").mode("overwrite").save(store.path("purchases"))
    with pytest.raises(DataValidationError, match=r"(?s)'purchases'.*1 duplicate keys, e\.g\. \(user_id=1, "
                                                  r"month='2024-09'\)"):
        build_features(spark, cfg, store)
    assert not store.exists("features")
