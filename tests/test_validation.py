"""Every validation rule: the error names the table, the column and the problem; nothing is written."""
import pytest
from pyspark.sql import functions as F

from remedi_spark.io.schemas import DataValidationError, validate
from remedi_spark.io.store import TableStore
from tests.tiny import activity, frame, owner

pytestmark = pytest.mark.reliability

M = "2024-06"


@pytest.fixture
def good(spark):
    return frame(spark, "monthly_activity", [activity(1, M), activity(2, M, voice_cnt=3)])


def _problems(df, table="monthly_activity", **kw):
    with pytest.raises(DataValidationError) as info:
        validate(df, table, **kw)
    assert info.value.table == table
    assert f"table {table!r}" in str(info.value)
    return info.value.problems


def test_good_input_passes(good):
    validate(good, "monthly_activity", partitions=[M])


def test_missing_column(good):
    assert _problems(good.drop("voice_cnt")) == [("voice_cnt", "missing")]


def test_mistyped_column(good):
    assert _problems(good.withColumn("voice_cnt", F.col("voice_cnt").cast("string"))) == [
        ("voice_cnt", "expected type integer, found string")]


def test_unexpected_column(good):
    assert _problems(good.withColumn("shoe_size", F.lit(42))) == [("shoe_size", "not in the schema (unexpected column)")]


def test_null_key(good):
    problems = _problems(good.withColumn("user_id", F.when(F.col("user_id") == 2, None).otherwise(F.col("user_id"))))
    assert problems == [("user_id", "1 rows with key column has null values, e.g. (user_id=None, month='2024-06')")]


def test_negative_count(good):
    problems = _problems(good.withColumn("voice_cnt", F.col("voice_cnt") - 5))
    assert problems == [("voice_cnt", "2 rows with negative values (must be >= 0), "
                                      "e.g. (user_id=1, month='2024-06'), (user_id=2, month='2024-06')")]


def test_duplicate_keys(good):
    problems = _problems(good.unionByName(good.filter("user_id = 2")))
    assert problems == [("user_id,month", "1 duplicate keys, e.g. (user_id=2, month='2024-06')")]


def test_empty_input(good):
    assert _problems(good.limit(0)) == [("*", "input is empty (0 rows)")]


def test_bad_month_format(good):
    problems = _problems(good.withColumn("month", F.lit("2024-6")))
    assert problems == [("month", "2 rows with values not in 'YYYY-MM' form, "
                                  "e.g. (user_id=1, month='2024-6'), (user_id=2, month='2024-6')")]


def test_disallowed_value(spark):
    bad = frame(spark, "owners", [owner(1, region_tier=9)])
    assert _problems(bad, "owners") == [("region_tier", "1 rows with values outside [1, 2, 3, 4], e.g. (user_id=1)")]


def test_feature_tables_take_numeric_extras_only(spark):
    base = spark.createDataFrame([(1, M, 0, 0, 0, 0, True, 0, 1, 1.5)],
                                 "user_id long, month string, y int, y_h1 int, y_h2 int, y_h3 int, "
                                 "label_complete boolean, y_engage int, y_visit int, f1 double")
    validate(base, "features")
    bad = base.withColumn("f2", F.array(F.lit(1)))
    assert _problems(bad, "features") == [("f2", "feature columns must be numeric, boolean or string, found array<int>")]


def test_nan_and_infinite_floats(good):
    bad = good.withColumn("applet_flux", F.when(F.col("user_id") == 1, F.lit(float("nan")))
                          .otherwise(F.lit(float("inf"))))
    assert _problems(bad) == [("applet_flux", "2 rows with NaN or infinite values (missing must be null), "
                                              "e.g. (user_id=1, month='2024-06'), (user_id=2, month='2024-06')")]


def test_nan_in_a_feature_column(spark):
    df = spark.createDataFrame([(1, M, 0, None, None, None, True, None, None, float("-inf"))],
                               "user_id long, month string, y int, y_h1 int, y_h2 int, y_h3 int, "
                               "label_complete boolean, y_engage int, y_visit int, f1 double")
    assert _problems(df, "features") == [("f1", "1 rows with NaN or infinite values (missing must be null), "
                                                "e.g. (user_id=1, month='2024-06')")]


def test_a_column_with_no_value_is_a_broken_extract(good):
    bad = good.withColumn("survey_score", F.lit(None).cast("double"))
    assert _problems(bad) == [("survey_score", "all 2 values are null (a broken extract? drop the column or "
                                               "fix the source)")]
    validate(good.withColumn("survey_score", F.when(F.col("user_id") == 1, None).otherwise(1.0)),
             "monthly_activity")  # some nulls are missing values, fine


def test_duplicates_show_a_few_keys(good):
    doubled = good.unionByName(good)
    assert _problems(doubled) == [("user_id,month", "2 duplicate keys, e.g. (user_id=1, month='2024-06'), "
                                                    "(user_id=2, month='2024-06')")]


def test_failed_write_writes_nothing(spark, tmp_path, good):
    store = TableStore(spark, str(tmp_path / "t"))
    version = store.write_months(good, "monthly_activity", [M])
    with pytest.raises(DataValidationError):
        store.write_months(good.withColumn("voice_cnt", F.lit(-1)), "monthly_activity", [M])
    assert store.version("monthly_activity") == version
    assert store.read("monthly_activity").agg(F.min("voice_cnt")).first()[0] == 0
