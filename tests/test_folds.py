"""Fold job: users never split, strata balanced, deterministic, evaluation splits as documented."""
import pytest
from pyspark.sql import functions as F

from remedi_spark.folds.assign import assign_folds
from remedi_spark.io.schemas import DataValidationError
from remedi_spark.io.store import TableStore

MONTHS = ["2024-06", "2024-07", "2024-08"]
N_USERS = 400


@pytest.fixture
def world(spark, cfg_at):
    cfg = cfg_at()
    store = TableStore(spark, cfg.tables.root)
    rows = []
    for u in range(1, N_USERS + 1):
        for i, m in enumerate(MONTHS):
            complete = m != "2024-08"
            y = (1 if (u % 13 == 0 and i == 0) else 0) if complete else None
            rows.append((u, m, y, y, 0 if complete else None, None, complete, None, None, float(u % 7)))
    df = spark.createDataFrame(rows, "user_id long, month string, y int, y_h1 int, y_h2 int, y_h3 int, "
                                     "label_complete boolean, y_engage int, y_visit int, f double")
    store.write_months(df, "features", MONTHS)
    return spark, cfg, store


def _folds(store):
    return store.read("folds").toPandas()


def test_users_never_span_folds_and_strata_are_balanced(world):
    spark, cfg, store = world
    summary = assign_folds(spark, cfg, store)
    folds = _folds(store)
    assert set(folds["month"]) == {"2024-06", "2024-07"}  # only fully labelled rows
    assert (folds.groupby("user_id")["fold"].nunique() == 1).all()
    assert (folds.groupby("user_id")["split"].nunique() == 1).all()
    users = folds.groupby("user_id").agg(fold=("fold", "first"), pos=("y", "max"), split=("split", "first"))
    pos_per_fold = users[users.pos == 1].groupby("fold").size()
    assert sorted(pos_per_fold.index) == list(range(5))
    assert pos_per_fold.max() - pos_per_fold.min() <= 1
    neg_per_fold = users[users.pos == 0].groupby("fold").size()
    assert neg_per_fold.max() - neg_per_fold.min() <= 1
    # 20% of each stratum in the random hold-out
    for pos, group in users.groupby("pos"):
        assert abs((group.split == "test").sum() - 0.2 * len(group)) <= 1
    assert summary["oot_test_month"] == "2024-07"
    assert set(folds.loc[folds.oot_split == "test", "month"]) == {"2024-07"}


def test_deterministic_and_seeded(world, cfg_at):
    spark, cfg, store = world
    assign_folds(spark, cfg, store)
    first = _folds(store).sort_values(["user_id", "month"]).reset_index(drop=True)
    assign_folds(spark, cfg, store)
    again = _folds(store).sort_values(["user_id", "month"]).reset_index(drop=True)
    assert first.equals(again)
    reseeded = cfg_at(tables={"root": cfg.tables.root}, folds={"seed": 99})
    assign_folds(spark, reseeded, store)
    other = _folds(store).sort_values(["user_id", "month"]).reset_index(drop=True)
    assert not first["fold"].equals(other["fold"])


def test_months_without_labels_are_refused(world, cfg_at):
    spark, cfg, store = world
    bad = cfg_at(tables={"root": cfg.tables.root}, folds={"months": ["2024-08"]})
    with pytest.raises(DataValidationError, match=r"no fully labelled rows for folds.months \['2024-08'\]"):
        assign_folds(spark, bad, store)
    assert not store.exists("folds")


def test_rerun_replaces_the_table(world):
    spark, cfg, store = world
    assign_folds(spark, cfg, store)
    assign_folds(spark, cfg, store)
    assert store.read("folds").count() == N_USERS * 2
    assert store.read("folds").agg(F.countDistinct("user_id")).first()[0] == N_USERS


def test_a_single_labelled_month_has_no_evaluation_month(world, cfg_at):
    """With one labelled month there is nothing to train on besides it: it is not held out of training."""
    from remedi_spark.folds.assign import evaluation_month

    spark, cfg, store = world
    summary = assign_folds(spark, cfg_at(tables={"root": cfg.tables.root}, folds={"months": ["2024-06"]}), store)
    assert summary["oot_test_month"] is None and "no evaluation month" in summary["warnings"][0]
    folds = store.read("folds")
    assert folds.filter("oot_split = 'test'").count() == 0 and evaluation_month(folds) is None
    assign_folds(spark, cfg, store)
    assert evaluation_month(store.read("folds")) == "2024-07"
