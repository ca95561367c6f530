"""The walk-forward backtest (stage ``backtest``) on a small synthetic world: every model of backtest
month T trained only on months t with t + 3 <= T, every owner of T scored, one ``backtest_results`` row
per month and ranker with intervals, the mean over months, and a bad ``backtest.months`` or
``backtest.models`` refused with the key named before anything is written. One module: the
backtest runs once (two months, one small native LightGBM; a few minutes on 2 cores)."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from remedi_spark.backtest.evaluate import evaluate_months, list_ranking
from remedi_spark.backtest.plan import plan_months
from remedi_spark.backtest.rankers import MonthRankers
from remedi_spark.config import ConfigError, replace
from remedi_spark.io import files
from remedi_spark.io.store import TableStore
from remedi_spark.metrics import bootstrap
from remedi_spark.months import month_range, parse_month
from remedi_spark.pipeline import run_stage
from tests.tiny import lgbm_spec

pytestmark = pytest.mark.slow

FAST = {"num_iterations": 30, "learning_rate": 0.1, "min_data_in_leaf": 20}
MODELS = [lgbm_spec("lgbm_logloss", FAST), lgbm_spec("lgbm_dealer", FAST, feature_group="dealer"),
          lgbm_spec("lgbm_calls", FAST, feature_group="calls")]
CHAIN_MODELS = ["lgbm_logloss", "lgbm_dealer"]  # backtest.models: lgbm_calls stays out of the chains
META = {"raw_hidden": [8], "relative_hidden": [16], "output_hidden": [8], "epochs": 10, "batch_size": 256, "lr": 0.01,
        "patience": 5, "min_valid_positives": 5, "bags": 1}
STUDENTS = [{"name": "student", "objective": "mse", "target": "teacher", "params": FAST}]
FEATURE_MONTHS = month_range("2024-03", "2024-12")  # fully labelled: 2024-03..2024-09
BACKTEST = ["2024-08", "2024-09"]  # training months 2024-03..05 and 2024-03..06
K = 150


@pytest.fixture(scope="module")
def world(spark, base_cfg, tmp_path_factory):
    """Raw tables and features of 2,500 owners (4x the purchase rate: ~50 buyers a month); two of the
    three configured LightGBMs in the chains (``backtest.models``)."""
    root = tmp_path_factory.mktemp("backtest")
    cfg = replace(base_cfg, tables={"root": str(root / "t")},
                  synthetic={"n_users": 2500, "chunk_users": 1250, "start_month": "2023-12", "end_month": "2024-12",
                             "hazard_scale": 2.0},
                  folds={"n_folds": 2}, base_models={"models": MODELS, "early_stopping_rounds": 10, "num_workers": 1},
                  fusion={"meta_model": META, "ablations": ["trees_only"], "variants": {"paper": {"bags": 1}}},
                  distill={"students": STUDENTS, "timing_rows": 0}, lead_list={"k": K},
                  evaluation={"bootstrap": {"replicates": 200}}, backtest={"months": 2, "models": CHAIN_MODELS})
    run_stage(spark, cfg, "generate")
    run_stage(spark, cfg, "features", months=FEATURE_MONTHS)
    return cfg


@pytest.fixture(scope="module")
def backtest(spark, world):
    summary = run_stage(spark, world, "backtest")
    return world, summary, TableStore(spark, world.tables.root).read("backtest_results").toPandas()


def test_plan_gives_each_month_its_closed_windows_and_refuses_too_many_months():
    labelled = month_range("2024-03", "2024-09")
    plan = plan_months(labelled, 2)
    assert [m.month for m in plan] == BACKTEST
    assert [list(m.training) for m in plan] == [month_range("2024-03", "2024-05"), month_range("2024-03", "2024-06")]
    with pytest.raises(ConfigError, match=r"backtest\.months: 5 backtest months would start at 2024-05.*at most 4"):
        plan_months(labelled, 5)
    with pytest.raises(ConfigError, match=r"backtest\.months: 9 .*at most 4"):
        plan_months(labelled, 9)
    with pytest.raises(ConfigError, match=r"backtest\.months: must be at least 1"):
        plan_months(labelled, 0)


def test_list_metrics_are_the_lead_list_and_match_the_shared_bootstrap():
    rng = np.random.default_rng(3)
    n = 2000
    user_id = rng.permutation(np.arange(1, n + 1) * 3)
    y = (rng.random(n) < 0.04).astype(np.int64)
    score = np.round(rng.random(n) + 0.4 * y, 2)  # ties: broken by owner id, as the lead-list stage does
    eligible = rng.random(n) < 0.85
    region = rng.integers(0, 4, n)
    rank, k_list = list_ranking(score, user_id, eligible, 100, region, 20)
    expected = pd.DataFrame({"u": user_id, "s": score, "e": eligible, "r": region})
    expected = expected[expected["e"]].sort_values(["s", "u"], ascending=[False, True])
    expected = expected[expected.groupby("r").cumcount() < 20].head(100)
    top = np.argsort(-rank, kind="stable")[:k_list]
    assert k_list == 80 and set(user_id[top]) == set(expected["u"])  # 4 regions x 20
    frame = pd.DataFrame({"user_id": user_id, "y": y, "eligible": eligible, "student": score, "teacher": -score})
    rows = evaluate_months([MonthRankers("2024-09", frame, {"student": "s", "teacher": "t"})], 100, replicates=150,
                           seed=5, level=0.9)
    student = next(r for r in rows if r["kind"] == "ranker" and r["ranker"] == "student")
    rank, k_list = list_ranking(score, user_id, eligible, 100)
    shared = bootstrap(y, {"s": rank}, user_id, k_list / n, replicates=150, seed=5, level=0.9)["intervals"]["s"]
    for metric in ("precision_at_k", "business_recall_at_k", "lift_at_k"):
        iv = shared[metric]
        assert (student[metric], student[f"{metric}_ci_low"], student[f"{metric}_ci_high"]) == pytest.approx(
            (iv.estimate, iv.low, iv.high))
    assert student["recall_at_k"] == pytest.approx(student["business_recall_at_k"] / 3)
    assert student["hits"] == y[np.argsort(-rank, kind="stable")[:k_list]].sum()
    assert {r["kind"] for r in rows} == {"ranker", "difference", "mean", "mean_difference"}


def test_bad_config_is_refused_before_anything_is_written(spark, world, tmp_path):
    store = TableStore(spark, world.tables.root)
    before = store.version("backtest_results") if store.exists("backtest_results") else None
    scratch = f"{world.tables.root}/scratch_backtest"
    with pytest.raises(ConfigError, match=r"backtest\.months: 6 backtest months would start at 2024-04.*at most 4"):
        run_stage(spark, replace(world, backtest={"months": 6, "root": scratch}), "backtest")
    with pytest.raises(ConfigError, match=r"backtest\.models: \['nope'\] are not in base_models\.models"):
        run_stage(spark, replace(world, backtest={"models": ["nope"], "root": scratch}), "backtest")
    assert not os.path.exists(scratch)
    assert (store.version("backtest_results") if store.exists("backtest_results") else None) == before


def test_every_model_of_month_t_trained_only_on_closed_months(spark, backtest):
    cfg, summary, _ = backtest
    assert list(summary["months"]) == BACKTEST
    for month, info in summary["months"].items():
        sub = TableStore(spark, info["sub_root"])
        allowed = {t for t in FEATURE_MONTHS if parse_month(t) + 3 <= parse_month(month)}
        assert set(info["training_months"]) == allowed
        features_months = {r[0] for r in sub.read("features").select("month").distinct().collect()}
        assert features_months == allowed | {month}  # nothing after T exists in the sub-root
        folds = sub.read("folds").toPandas()
        assert set(folds.loc[folds["oot_split"] == "test", "month"]) == {month}
        assert set(folds["month"]) - {month} == allowed
        fit_rows = int(((folds["split"] == "train") & (folds["oot_split"] == "train")).sum())
        for name in ("lgbm_logloss", "student"):
            sidecar = json.loads(files.read_text(spark, f"{sub.root}/models/{name}/model.json"))
            # the features version the model read holds no month after T ...
            version = sidecar["data_versions"]["features"]
            read = {r[0] for r in sub.read("features", version=version).select("month").distinct().collect()}
            assert read == allowed | {month}, name
            # ... and it fitted on training owners outside T only (early-stopping owners aside)
            assert 0 < sidecar["info"]["train_rows"] <= fit_rows, name
        assert not os.path.exists(f"{sub.root}/models/lgbm_calls")  # not in backtest.models
        oof = sub.read("oof_predictions").filter(F.col("month") == month)
        assert oof.filter(F.col("fold") != -1).count() == 0  # T's rows come from the refit, never a fold model
        assert summary["months"][month]["folds"]["evaluation_month"] == month


def test_every_owner_of_month_t_is_scored_and_listed_by_the_filters(spark, backtest):
    cfg, summary, _ = backtest
    for month, info in summary["months"].items():
        sub = TableStore(spark, info["sub_root"])
        owners = sub.read("features", months=[month]).count()
        assert info["owners"] == owners == sub.read("scores", months=[month]).count() > 2000
        assert sub.read("teacher_predictions").filter(F.col("month") == month).count() == owners
        assert info["student_list_is_the_lead_list"]  # the evaluated list is the lead-list stage's list
        assert sub.read("lead_list", months=[month]).count() == K
        assert set(info["rankers"]) == {"student", "teacher", "best_base", "stacking_lr", "simple_average", "oracle"}


def test_results_hold_every_month_and_ranker_with_intervals(backtest):
    cfg, summary, results = backtest
    assert results["run_id"].nunique() == 1 and results["run_id"].iloc[0] == summary["run_id"]
    rankers = results[results["kind"] == "ranker"]
    assert set(rankers["month"]) == set(BACKTEST)
    for month in BACKTEST:
        part = rankers[rankers["month"] == month]
        assert set(part["ranker"]) == {"student", "teacher", "best_base", "stacking_lr", "simple_average", "oracle"}
        assert (part["k"] == K).all() and part["positives"].nunique() == 1 and part["positives"].iloc[0] > 10
        assert (part["training_months"] == ",".join(summary["months"][month]["training_months"])).all()
        best = part.loc[part["ranker"] == "best_base", "model"].iloc[0]
        assert best == summary["months"][month]["best_base_model"] and best in CHAIN_MODELS
        assert part.loc[part["ranker"] == "stacking_lr", "model"].iloc[0] == ",".join(sorted(CHAIN_MODELS))
    diffs = results[results["kind"] == "difference"]
    assert set(diffs["ranker"]) == {"student - teacher", "teacher - best_base", "teacher - stacking_lr",
                                    "teacher - simple_average"}
    means = results[results["kind"] == "mean"].set_index("ranker")
    for ranker, row in means.iterrows():
        monthly = rankers[rankers["ranker"] == ranker]
        assert row["precision_at_k"] == pytest.approx(monthly["precision_at_k"].mean())
        assert row["positives"] == monthly["positives"].sum() and row["month"] == "mean"
    assert set(results.loc[results["kind"] == "mean_difference", "ranker"]) == set(diffs["ranker"])
    for metric in ("precision_at_k", "business_recall_at_k", "recall_at_k", "lift_at_k", "auc"):
        low, high, value = results[f"{metric}_ci_low"], results[f"{metric}_ci_high"], results[metric]
        assert results[metric].notna().all(), metric
        assert ((low <= value + 1e-9) & (value <= high + 1e-9)).all(), metric
    np.testing.assert_allclose(rankers["business_recall_at_k"], 3 * rankers["recall_at_k"])
    assert (results["ci_level"] == cfg.evaluation.bootstrap.level).all()
    assert rankers.loc[rankers["ranker"] == "oracle", "auc"].min() > 0.6
    assert os.path.exists(summary["report"])
    assert all(os.path.exists(f"{os.path.dirname(summary['report'])}/figures/backtest_{m}.png")
               for m in [*BACKTEST, "mean"])


def test_report_section_shows_the_newest_backtest(backtest):
    from remedi_spark.report.backtest import backtest_figures, backtest_numbers, backtest_section

    _, _, results = backtest
    numbers = backtest_numbers(results, 3)
    pngs = backtest_figures(numbers)
    [(title, inner)] = backtest_section(numbers, pngs)
    assert title == "Backtest"
    assert "Business Recall exceeds 100%" in inner.replace("\n", " ")  # the footnote, with plain recall beside it
    assert inner.count("<tr") == len(results) + 1 and "student - teacher" in inner
    assert set(pngs) == {f"backtest_{m}" for m in [*BACKTEST, "mean"]}
    assert numbers["months"] == BACKTEST
