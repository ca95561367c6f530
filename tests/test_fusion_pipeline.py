"""Fusion end to end on a tiny population: OOF → meta-features → fusion results → teacher scorer."""
import numpy as np
import pytest
from pyspark.sql import functions as F

from remedi_spark.config import replace
from remedi_spark.fusion.meta_features import meta_feature_names
from remedi_spark.fusion.teacher import teacher_scores
from remedi_spark.io.store import TableStore
from remedi_spark.pipeline import run_stage

FAST = {"num_iterations": 40, "learning_rate": 0.1, "min_data_in_leaf": 20}
MODELS = [
    {"name": "lgbm_logloss", "family": "lgbm", "backend": "native", "objective": "logloss", "feature_group": None,
     "params": FAST},
    {"name": "lgbm_focal", "family": "lgbm", "backend": "native", "objective": "focal", "feature_group": None,
     "params": FAST},
    {"name": "lgbm_dealer", "family": "lgbm", "backend": "native", "objective": "logloss", "feature_group": "dealer",
     "params": FAST},
    {"name": "mlp", "family": "mlp", "backend": "torch", "objective": "logloss", "feature_group": None,
     "params": {"epochs": 1, "batch_size": 512, "model": {"emb_dim": 4, "hidden": [16]}}},
]
META = {"raw_hidden": [8], "relative_hidden": [16], "output_hidden": [8], "epochs": 3, "batch_size": 512}


@pytest.fixture(scope="module")
def fused(spark, base_cfg, tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    cfg = replace(base_cfg, tables={"root": str(root / "t")}, synthetic={"n_users": 3000, "chunk_users": 1500},
                  folds={"n_folds": 2}, base_models={"models": MODELS, "early_stopping_rounds": 10},
                  fusion={"meta_model": META})
    for stage in ("generate", "features", "folds", "train-base", "meta-features"):
        run_stage(spark, cfg, stage)
    return cfg, run_stage(spark, cfg, "fusion"), TableStore(spark, cfg.tables.root)


def test_results_table_has_every_row_kind(fused):
    cfg, summary, store = fused
    results = store.read("fusion_results").toPandas()
    names = set(results["name"])
    assert {m["name"] for m in MODELS} <= names
    assert {"simple_average", "weighted_average", "stacking_lr", "stacking_gbdt", "no_hybrid", "hybrid_expert",
            "oracle"} <= names
    # trees_only = the three GBDTs, neural_only = the MLP alone (M = 1), plus without focal / subset models
    assert {"hybrid_expert[trees_only]", "hybrid_expert[neural_only]", "hybrid_expert[without_focal]",
            "hybrid_expert[without_subset]"} <= names
    assert set(results["evaluation"]) == {"user_split", "out_of_time"}
    assert (results["run_id"] == summary["run_id"]).all()
    oot = results[results["evaluation"] == "out_of_time"]
    user = results[results["evaluation"] == "user_split"]
    assert (oot["rows"] < user["rows"].max()).all() and oot["rows"].nunique() == 1
    assert results.loc[results["name"] == "oracle", "auc"].min() > 0.5  # tiny: ~30 held-out positives


def test_meta_features_and_teacher_predictions_cover_the_oof_rows(fused):
    cfg, summary, store = fused
    meta = store.read("meta_features")
    models = summary["models"]
    assert meta.columns[-len(meta_feature_names(models)):] == meta_feature_names(models)
    teacher = store.read("teacher_predictions")
    assert teacher.count() == meta.count() == store.read("folds").count()
    assert teacher.filter("p_teacher < 0 OR p_teacher > 1").count() == 0


def test_teacher_scorer_reproduces_held_out_teacher_predictions(spark, fused):
    """Held-out rows were scored by the refit base models, exactly what the scorer loads from disk."""
    cfg, summary, store = fused
    held = store.read("teacher_predictions").filter("split = 'test'")
    features = store.read("features").join(held.select("user_id", "month"), ["user_id", "month"])
    scored = teacher_scores(spark, cfg, store, features).withColumnRenamed("p_teacher", "p_scorer")
    got = scored.join(held, ["user_id", "month"]).toPandas()
    assert len(got) == held.count() > 0
    np.testing.assert_allclose(got["p_scorer"], got["p_teacher"], rtol=1e-6, atol=1e-9)
