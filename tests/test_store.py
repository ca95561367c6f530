"""Table store: month replacement is idempotent, time travel works, runs record versions."""
import pytest
from pyspark.sql import functions as F

from remedi_spark.io.store import RunManifest, TableStore
from tests.tiny import activity, frame

MONTHS = ["2024-06", "2024-07"]


@pytest.fixture
def store(spark, tmp_path):
    return TableStore(spark, str(tmp_path / "t"), RunManifest("test", {"k": 1}))


def _two_months(spark, visits=1):
    rows = [activity(u, m, visit_days=visits) for u in (1, 2, 3) for m in MONTHS]
    return frame(spark, "monthly_activity", rows)


def test_rewriting_a_month_replaces_it_and_leaves_others(spark, store):
    store.write_months(_two_months(spark), "monthly_activity", MONTHS)
    again = frame(spark, "monthly_activity", [activity(u, "2024-07", visit_days=5) for u in (1, 2, 3, 4)])
    store.write_months(again, "monthly_activity", ["2024-07"])
    store.write_months(again, "monthly_activity", ["2024-07"])  # twice: still no duplicates
    counts = {r["month"]: (r["n"], r["v"]) for r in store.read("monthly_activity").groupBy("month")
              .agg(F.count(F.lit(1)).alias("n"), F.max("visit_days").alias("v")).collect()}
    assert counts == {"2024-06": (3, 1), "2024-07": (4, 5)}


def test_time_travel_returns_the_previous_version(spark, store):
    v0 = store.write_months(_two_months(spark, visits=1), "monthly_activity", MONTHS)
    v1 = store.write_months(_two_months(spark, visits=7), "monthly_activity", MONTHS)
    assert v1 == v0 + 1
    assert store.read("monthly_activity", version=v0).agg(F.max("visit_days")).first()[0] == 1
    assert store.read("monthly_activity").agg(F.max("visit_days")).first()[0] == 7


def test_manifest_records_read_and_written_versions(spark, store):
    v = store.write_months(_two_months(spark), "monthly_activity", MONTHS)
    store.read("monthly_activity").count()
    run_id = store.save_manifest()
    saved = store.load_manifest(run_id)
    assert saved["reads"] == {"monthly_activity": v}
    assert saved["writes"] == [{"table": "monthly_activity", "version": v, "partitions": MONTHS}]
    assert saved["conf"] == {"k": 1}
    history = spark.sql(f"DESCRIBE HISTORY delta.`{store.path('monthly_activity')}`").first()
    assert history["userMetadata"] == run_id


def test_rows_outside_the_written_months_are_refused(spark, store):
    from remedi_spark.io.schemas import DataValidationError

    with pytest.raises(DataValidationError, match="rows outside the partitions being written"):
        store.write_months(_two_months(spark), "monthly_activity", ["2024-06"])
    assert not store.exists("monthly_activity")


def test_reading_a_missing_table_says_which(store):
    with pytest.raises(FileNotFoundError, match="'features' does not exist"):
        store.read("features")
