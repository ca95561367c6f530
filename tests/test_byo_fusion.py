"""Bring-your-own features through the modelling stages: a user's own table (made here with
numpy/pandas, tests/byo_table.py, never the simulator) → ``features`` (``features.source: custom``)
→ ``folds`` → ``train-base`` → ``meta-features`` → ``fusion``, with no synthetic table (owners,
monthly_activity, purchases, oracle) anywhere under the root. One module: the stages run once."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from remedi_spark.config import replace
from remedi_spark.fusion.meta_models import STRATEGIES
from remedi_spark.io.store import TableStore
from remedi_spark.pipeline import run_stage
from tests.byo_table import (CATEGORICAL_COLS, FEATURE_COLS, ID_COL, LABEL_COL, MONTH_COL, NULLABLE,
                             byo_table)
from tests.tiny import lgbm_spec

N_CUSTOMERS, MONTHS, SEED = 1500, ["2024-01", "2024-02", "2024-03", "2024-04"], 11
N_FOLDS = 5  # the fusion cross-fits its meta-models over these folds; 3 saves ~20 s of train-base
SYNTHETIC = ("owners", "monthly_activity", "purchases", "oracle")
STAGES = ("features", "folds", "train-base", "meta-features", "fusion")
# its own bring-your-own world run through five stages (~100 s), then fusion re-run per check: the slow tier
pytestmark = pytest.mark.slow
# small-data LightGBMs (the defaults are sized for 800k owners); all features, native backend
SMALL = {"num_iterations": 100, "learning_rate": 0.05, "num_leaves": 7, "min_data_in_leaf": 30}
MODELS = [lgbm_spec("lgbm_small", SMALL),
          lgbm_spec("lgbm_wide", {**SMALL, "num_leaves": 15, "min_data_in_leaf": 20, "feature_fraction": 0.6}),
          lgbm_spec("lgbm_focal", SMALL, "focal")]
WORKERS = 1  # one LightGBM worker per fit: on a few thousand rows two data-parallel workers only add the network setup
# a teacher that learnt nothing: the paper's head at a learning rate that leaves it at the base rate
UNTRAINED = {"linear_skip": False, "bags": 1, "lr": 1e-9, "epochs": 2}


@pytest.fixture(scope="module")
def byo(spark, base_cfg, tmp_path_factory):
    """The user's table as a Delta path, the config that reads it, and every stage's summary."""
    root = tmp_path_factory.mktemp("byo")
    table = byo_table(N_CUSTOMERS, MONTHS, SEED)
    path = str(root / "my_features")
    spark.createDataFrame(table).write.format("delta").save(path)
    custom = {"path": path, "id_col": ID_COL, "month_col": MONTH_COL, "label_col": LABEL_COL,
              "feature_cols": FEATURE_COLS, "categorical_cols": CATEGORICAL_COLS}
    cfg = replace(base_cfg, tables={"root": str(root / "tables")},
                  features={"source": "custom", "custom": custom}, folds={"n_folds": N_FOLDS},
                  base_models={"models": MODELS, "early_stopping_rounds": 20, "num_workers": WORKERS},
                  fusion={"variants": {}}, evaluation={"bootstrap": {"replicates": 200}})
    summaries = {stage: run_stage(spark, cfg, stage) for stage in STAGES}
    return cfg, table, summaries, TableStore(spark, cfg.tables.root)


def test_features_hold_the_custom_rows_and_no_synthetic_table_exists(byo):
    cfg, table, summaries, store = byo
    features = store.read("features").toPandas()
    assert len(features) == len(table) == N_CUSTOMERS * len(MONTHS)
    assert sorted(features["month"].unique()) == MONTHS == summaries["features"]["months"]
    assert features["y"].sum() == table[LABEL_COL].sum() and features["label_complete"].all()
    assert 0.03 <= table[LABEL_COL].mean() <= 0.06
    mine = table.rename(columns={ID_COL: "user_id", MONTH_COL: "month", LABEL_COL: "y"})
    got = features.merge(mine, on=["user_id", "month"], suffixes=("", "_mine"))
    assert len(got) == len(table) and (got["y"] == got["y_mine"]).all()
    for col in FEATURE_COLS:  # values and missing values carried over, strings stay strings
        assert got[col].isna().sum() == mine[col].isna().sum(), col
        same = got[col].isna() | (got[col] == got[f"{col}_mine"])
        assert same.all(), col
    assert all(features[c].dropna().map(type).eq(str).all() for c in CATEGORICAL_COLS)
    assert all(table[c].isna().any() for c in NULLABLE)
    nulls = [F.count(F.when(F.col(c).isNull(), 1)).alias(c) for c in NULLABLE]
    spark_nulls = store.read("features").agg(*nulls).first()
    assert [spark_nulls[c] for c in NULLABLE] == [table[c].isna().sum() for c in NULLABLE]  # nulls, not NaN
    for name in SYNTHETIC:
        assert not store.exists(name), name
    assert not set(os.listdir(cfg.tables.root)) & set(SYNTHETIC)


def test_every_training_row_has_an_oof_prediction_per_model(byo):
    cfg, table, summaries, store = byo
    folds = store.read("folds").toPandas()
    in_training = (folds["split"] == "train") & (folds["oot_split"] == "train")  # the evaluation month is not
    train = folds[in_training].set_index(["user_id", "month"]).sort_index()
    oof = store.read("oof_predictions").toPandas()
    assert set(oof["model"]) == {m["name"] for m in MODELS}
    for model in (m["name"] for m in MODELS):
        rows = oof[(oof["model"] == model) & (oof["fold"] >= 0)].set_index(["user_id", "month"]).sort_index()
        assert rows.index.equals(train.index), model  # exactly one OOF prediction per training row
        assert (rows["fold"] == train["fold"]).all() and rows["p"].between(0, 1).all()
        auc = roc_auc_score(train["y"], rows["p"])
        assert auc > 0.6, (model, auc)


def test_fusion_results_cover_every_strategy_on_held_out_owners(byo):
    cfg, table, summaries, store = byo
    results = store.read("fusion_results").toPandas()
    for evaluation in ("user_split", "out_of_time"):
        rows = results[results["evaluation"] == evaluation]
        assert set(STRATEGIES) <= set(rows["name"]), evaluation
        fused = rows[rows["name"].isin(list(STRATEGIES))]
        assert np.isfinite(fused["logloss"]).all() and fused["auc"].between(0, 1).all()
    assert "oracle" not in set(results["name"])  # a bring-your-own table has no ceiling


def test_meta_oof_rows_for_every_strategy_and_the_hybrid_expert_is_no_worse_than_the_average(byo):
    cfg, table, summaries, store = byo
    results = store.read("fusion_results").toPandas()
    meta = results[results["evaluation"] == "meta_oof"].set_index("name")
    assert set(STRATEGIES) | {m["name"] for m in MODELS} <= set(meta.index)
    assert (meta["rows"] == summaries["fusion"]["fit_rows"]).all()
    diff = meta.loc["hybrid_expert - simple_average"]
    assert diff["logloss_ci_low"] <= 0, diff  # not worse than the simple average beyond noise
    rate = meta.loc["hybrid_expert", "positives"] / meta.loc["hybrid_expert", "rows"]
    entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert meta.loc["hybrid_expert", "logloss"] < entropy - 0.01  # it learnt something
    assert meta.loc["hybrid_expert", "auc"] > 0.7


def _teacher_head_kind(spark, store):
    import json

    from remedi_spark.io import files

    return json.loads(files.read_text(spark, f"{store.root}/models/teacher/model.json"))["kind"]


def test_a_weak_teacher_is_flagged_replaced_or_stopped_as_configured(spark, byo):
    from remedi_spark.fusion.train import WeakTeacherError

    cfg, table, summaries, store = byo
    weak = {"meta_model": UNTRAINED, "ablations": [], "variants": {}}
    with pytest.warns(RuntimeWarning, match="weaker than its inputs"):
        warned = run_stage(spark, replace(cfg, fusion={**weak, "on_weak_teacher": "warn"}), "fusion")
    assert warned["teacher"]["weak"] and warned["teacher"]["chosen"] == "hybrid_expert"
    assert any("simple_average" in r for r in warned["teacher"]["reasons"])
    assert _teacher_head_kind(spark, store) == "hybrid_expert"

    fallback = run_stage(spark, replace(cfg, fusion={**weak, "on_weak_teacher": "fallback"}), "fusion")
    chosen = fallback["teacher"]["chosen"]
    assert fallback["teacher"]["action"] == "fallback" and chosen in STRATEGIES and chosen != "hybrid_expert"
    results = store.read("fusion_results").toPandas()
    assert set(results.loc[results["teacher"], "name"]) == {chosen}
    assert _teacher_head_kind(spark, store) == chosen
    p_chosen = results[(results["name"] == chosen) & (results["evaluation"] == "user_split")]["auc"].item()
    teacher = store.read("teacher_predictions").toPandas().merge(store.read("folds").toPandas(), on=["user_id", "month"])
    held = teacher[teacher["split_x"] == "test"]
    assert roc_auc_score(held["y"], held["p_teacher"]) == pytest.approx(p_chosen, abs=1e-9)

    before = store.version("teacher_predictions")
    with pytest.raises(WeakTeacherError, match="on_weak_teacher: fail"):
        run_stage(spark, replace(cfg, fusion={**weak, "on_weak_teacher": "fail"}), "fusion")
    assert store.version("teacher_predictions") == before  # nothing to distill from
    results = store.read("fusion_results").toPandas()
    assert results.loc[results["evaluation"] == "meta_oof", "name"].str.startswith("hybrid_expert -").any()

    # with `teacher: auto` the untrained head is not chosen: the best meta-OOF strategy is
    auto = run_stage(spark, replace(cfg, fusion={**weak, "teacher": "auto"}), "fusion")
    assert auto["teacher"]["chosen"] != "hybrid_expert" and auto["teacher"]["mode"] == "auto"


def test_fusion_seeds_repeat_the_meta_oof_comparison_per_network_seed(spark, byo):
    from remedi_spark.fusion.train import format_seeds, seed_summary

    cfg, table, summaries, store = byo
    own = cfg.fusion.meta_model.get("seed", 7)
    summary = run_stage(spark, replace(cfg, fusion={"ablations": [], "variants": {}, "seeds": [own, own + 1]}), "fusion")
    results = pd.DataFrame(summary["results"])
    seeded = results[results["section"] == "seed"]
    assert set(seeded["seed"]) == {own, own + 1}
    assert set(seeded["name"]) >= {"hybrid_expert", "no_hybrid", "hybrid_expert - simple_average"}
    main = results[(results["evaluation"] == "meta_oof") & (results["name"] == "hybrid_expert")
                   & (results["section"] == "fusion")].iloc[0]
    again = seeded[(seeded["name"] == "hybrid_expert") & (seeded["seed"] == own)].iloc[0]
    other = seeded[(seeded["name"] == "hybrid_expert") & (seeded["seed"] == own + 1)].iloc[0]
    assert again["logloss"] == pytest.approx(main["logloss"], rel=1e-9)  # the same seed reproduces the main row
    assert other["logloss"] != again["logloss"]  # another seed trains other networks
    stats = seed_summary(summary["results"]).set_index("name")
    assert stats.loc["hybrid_expert", "seeds"] == 2 and stats.loc["hybrid_expert", "logloss_std"] > 0
    assert "mean ± sd" in format_seeds(summary["results"])
