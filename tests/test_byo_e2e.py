"""Bring your own data, end to end, on the bring-your-own profile (conf/byo.yaml): a user's table
(made here with numpy/pandas, tests/byo_table.py, never the simulator) exported as a Parquet file
goes through every stage — features, folds, base models, meta-features, fusion, distillation,
scoring, lead list, report — with no synthetic table under the root; the same table as a CSV goes
through ``folds``; models the table cannot feed are refused before any training."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from remedi_spark.config import ConfigError, load_config, replace
from remedi_spark.io.schemas import DataValidationError
from remedi_spark.io.store import TableStore
from remedi_spark.leads.lead_list import FILTER_INPUTS
from remedi_spark.pipeline import run_pipeline, run_stage
from tests.byo_table import CATEGORICAL_COLS, FEATURE_COLS, ID_COL, LABEL_COL, MONTH_COL, byo_table
from tests.conftest import REPO, TEST_SETTINGS

N_CUSTOMERS, MONTHS, SEED = 1500, ["2024-01", "2024-02", "2024-03", "2024-04"], 23
SYNTHETIC = ("owners", "monthly_activity", "purchases", "oracle")
GROUPS = {"web": ["web_sessions", "app_logins", "email_clicks"], "store": ["store_visits", "quote_requests", "calls"],
          "profile": ["tenure_months", "age", "income_k", "region", "plan"]}
CUSTOM = {"id_col": ID_COL, "month_col": MONTH_COL, "label_col": LABEL_COL, "feature_cols": FEATURE_COLS,
          "categorical_cols": CATEGORICAL_COLS}


def byo_config(root, source: dict, **sections):
    """conf/byo.yaml as the tests run it, reading ``source`` (format and path) with the table's columns."""
    cfg = load_config(REPO / "conf" / "byo.yaml", TEST_SETTINGS)
    return replace(cfg, tables={"root": str(root)}, features={"custom": {**CUSTOM, **source}},
                   evaluation={"bootstrap": {"replicates": 200}}, **sections)


@pytest.fixture(scope="module")
def table():
    return byo_table(N_CUSTOMERS, MONTHS, SEED)


@pytest.fixture(scope="module")
def parquet_run(spark, table, tmp_path_factory):
    """The table as a Parquet file (written by pandas, as a warehouse export would be) and the pipeline over it."""
    root = tmp_path_factory.mktemp("byo_e2e")
    path = str(root / "export" / "my_features.parquet")
    os.makedirs(os.path.dirname(path))
    table.to_parquet(path, index=False)
    cfg = byo_config(root / "tables", {"format": "parquet", "path": path}, folds={"n_folds": 3},
                     base_models={"feature_groups": GROUPS, "early_stopping_rounds": 20},
                     report={"curve_points": 20, "top_features": 5})
    return cfg, run_pipeline(spark, cfg), TableStore(spark, cfg.tables.root)


@pytest.mark.slow
def test_every_stage_runs_on_a_parquet_table_with_no_synthetic_table(parquet_run):
    cfg, out, store = parquet_run
    assert "generate" not in out  # a custom feature source needs no simulated world
    for stage in ("features", "folds", "train-base", "meta-features", "fusion", "distill", "score[evaluation]",
                  "lead-list[evaluation]", "report"):
        assert out[stage]["run_id"], stage
    for name in SYNTHETIC:
        assert not store.exists(name), name
    assert len(store.read("features").toPandas()) == N_CUSTOMERS * len(MONTHS)
    assert store.read("scores").count() == N_CUSTOMERS  # every owner of the evaluation month is scored


@pytest.mark.slow
def test_lead_list_skips_the_filters_whose_tables_are_absent_and_takes_k_as_a_fraction(parquet_run):
    cfg, out, store = parquet_run
    lead = out["lead-list[evaluation]"]
    assert lead["skipped_filters"] == [f"{name} (no {t} table)" for name, t in FILTER_INPUTS.items()]
    assert lead["excluded"] == {} and lead["eligible"] == lead["scored"] == N_CUSTOMERS
    assert lead["leads"] == lead["k"] == round(cfg.lead_list.k * N_CUSTOMERS)
    leads = store.read("lead_list").toPandas()
    assert set(leads["reason"]) <= {*GROUPS, "other"} and set(leads["reason"]) & set(GROUPS)
    scores = store.read("scores").toPandas().sort_values(["score", "user_id"], ascending=[False, True])
    assert set(leads["user_id"]) == set(scores["user_id"].head(lead["k"]))  # no filter: the top K by score
    evaluation = out["evaluation"]
    assert evaluation["oracle_precision"] is None and evaluation["positives"] > 0
    assert evaluation["skipped_filters"] == lead["skipped_filters"]
    html = open(glob.glob(f"{out['report']['dir']}/*.html")[0]).read()
    assert "Business filters skipped" in html and "no purchases table" in html
    from remedi_spark.cli import format_pipeline

    assert "filters skipped: no_owner_record (no owners table)" in format_pipeline(out)  # the console says so too


@pytest.mark.slow
def test_the_profiles_models_train_enough_steps_and_beat_the_base_rate_out_of_fold(parquet_run):
    cfg, out, store = parquet_run
    metrics = store.read("base_model_metrics").toPandas()
    oof = metrics[metrics["split"] == "oof"].set_index("model")
    assert set(oof.index) == {m.name for m in cfg.base_models.models}
    for model, row in oof.iterrows():  # a ranking no better than the base rate has AUC 0.5
        assert row["auc_ci_low"] > 0.5, (model, row["auc"], row["auc_ci_low"], row["positives"])
    neural = [m for m in cfg.base_models.models if m.backend == "torch"]
    assert neural
    for spec in neural:  # the refit on every training row (a fold's fit has fewer rows: a smaller batch)
        info = json.load(open(f"{store.root}/models/{spec.name}/model.json"))["info"]
        # a few thousand rows at batch 1,024 would be 2-3 optimiser steps an epoch
        assert info["steps_per_epoch"] >= spec.params["min_steps_per_epoch"], info
        assert info["batch_size"] < spec.params["batch_size"], info


@pytest.fixture(scope="module")
def csv_store(spark, table, tmp_path_factory):
    """The same table as a CSV export (header, text values) through features and folds."""
    root = tmp_path_factory.mktemp("byo_csv")
    path = str(root / "my_features.csv")
    table.to_csv(path, index=False)
    cfg = byo_config(root / "tables", {"format": "csv", "path": path}, base_models={"feature_groups": GROUPS})
    summaries = {stage: run_stage(spark, cfg, stage) for stage in ("features", "folds")}
    return cfg, summaries, TableStore(spark, cfg.tables.root), path


@pytest.mark.slow
def test_a_csv_table_goes_through_folds_with_the_values_of_the_parquet_import(csv_store, table):
    cfg, summaries, store, _ = csv_store
    features = store.read("features").toPandas().set_index(["user_id", "month"]).sort_index()
    mine = table.rename(columns={ID_COL: "user_id", MONTH_COL: "month", LABEL_COL: "y"}) \
        .set_index(["user_id", "month"]).sort_index()
    assert features.index.equals(mine.index) and (features["y"] == mine["y"]).all()
    for col in FEATURE_COLS:
        if col in CATEGORICAL_COLS:
            assert features[col].fillna("∅").equals(mine[col].fillna("∅")), col
        else:  # numbers as written by pandas' CSV writer, read back as doubles
            assert np.allclose(features[col].astype(float), mine[col].astype(float), equal_nan=True), col
    folds = store.read("folds").toPandas()
    assert len(folds) == len(table) and summaries["folds"]["oot_test_month"] == MONTHS[-1]
    assert folds.groupby("user_id")["fold"].nunique().max() == 1  # user-grouped


def test_a_csv_value_that_is_not_a_number_names_its_column_and_rows_and_writes_nothing(spark, table, tmp_path):
    bad = table.head(200).copy()
    bad["age"] = bad["age"].astype(object)
    bad.loc[bad.index[[3, 7]], "age"] = "forty"
    path = str(tmp_path / "bad.csv")
    bad.to_csv(path, index=False)
    cfg = byo_config(tmp_path / "tables", {"format": "csv", "path": path})
    with pytest.raises(DataValidationError, match=r"(?s)custom features .*'age': 2 values are not double "
                                                  rf"\(e\.g\. {ID_COL}={bad[ID_COL].iloc[3]} value 'forty'"):
        run_stage(spark, cfg, "features")
    assert not TableStore(spark, cfg.tables.root).exists("features")


@pytest.mark.slow
def test_models_the_table_cannot_feed_are_refused_before_any_training(spark, csv_store):
    cfg, _, store, _ = csv_store
    kaml = {"name": "kaml", "family": "kaml", "backend": "torch", "objective": "logloss", "feature_group": None,
            "params": {"epochs": 1, "batch_size": 256}}
    dealer = {"name": "lgbm_dealer", "family": "lgbm", "backend": "native", "objective": "logloss",
              "feature_group": "dealer", "params": {}}
    wrong = replace(cfg, base_models={"models": [kaml, dealer],
                                      "feature_groups": {**GROUPS, "dealer": ["visit_days", "service_visit_cnt"]}})
    with pytest.raises(ConfigError) as err:
        run_stage(spark, wrong, "train-base")
    text = str(err.value)
    assert "model 'kaml' trains on the labels ['y_h1', 'y_h2', 'y_h3']" in text and "label_cols" in text
    assert "model 'lgbm_dealer': feature_group 'dealer' matches no column" in text
    assert not store.exists("oof_predictions")


def test_declared_labels_must_be_known_and_must_not_be_features(base_cfg, tmp_path):
    with pytest.raises(ConfigError, match="unknown labels"):
        replace(base_cfg, features={"custom": {"label_cols": {"y_h4": "bought_m4"}}})
    with pytest.raises(ConfigError, match="format 'table' reads a metastore"):
        replace(base_cfg, features={"custom": {"format": "table", "path": "/x"}})


def test_declared_labels_are_imported_and_satisfy_kaml(spark, table, tmp_path):
    frame = table.head(300).copy()
    rng = np.random.default_rng(0)
    for h in (1, 2, 3):
        frame[f"bought_m{h}"] = rng.binomial(1, 0.02, len(frame))
    path = str(tmp_path / "mine.parquet")
    frame.to_parquet(path, index=False)
    labels = {f"y_h{h}": f"bought_m{h}" for h in (1, 2, 3)}
    cfg = byo_config(tmp_path / "tables", {"format": "parquet", "path": path, "label_cols": labels})
    run_stage(spark, cfg, "features")
    got = TableStore(spark, cfg.tables.root).read("features").toPandas().sort_values(["user_id", "month"])
    want = frame.sort_values([ID_COL, MONTH_COL])
    for h in (1, 2, 3):
        assert (got[f"y_h{h}"].to_numpy() == want[f"bought_m{h}"].to_numpy()).all()
    assert got["y_engage"].isna().all()  # undeclared: unknown
    leak = byo_config(tmp_path / "t2", {"format": "parquet", "path": path,
                                        "feature_cols": [*FEATURE_COLS, "bought_m1"], "label_cols": labels})
    with pytest.raises(DataValidationError, match="'bought_m1': a label column is also listed in feature_cols"):
        run_stage(spark, leak, "features")


def test_k_is_a_count_or_a_fraction_of_the_scored_owners(base_cfg):
    from remedi_spark.metrics import lead_count

    assert lead_count(replace(base_cfg, lead_list={"k": 40}).lead_list.k, 1000) == 40
    assert lead_count(replace(base_cfg, lead_list={"k": 0.05}).lead_list.k, 1000) == 50
    assert lead_count(replace(base_cfg, lead_list={"k": 0.0001}).lead_list.k, 1000) == 1
    for bad in (0, -5, 1.5, 0.0):
        with pytest.raises(ConfigError, match="lead_list.k"):
            replace(base_cfg, lead_list={"k": bad})

