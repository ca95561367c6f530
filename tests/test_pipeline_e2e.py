"""The pipeline end to end on a tiny population (``run_pipeline``): OOF → meta-features → fusion →
teacher scorer → distillation → scoring → lead list → report, with MLflow tracking: the session's
shared world (tests/world.py), read here; the tests that rerun a stage do so on a copy of it."""
import re
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from remedi_spark.config import replace
from remedi_spark.io.schemas import DataValidationError
from remedi_spark.fusion.meta_features import meta_feature_names
from remedi_spark.fusion.teacher import teacher_scores
from remedi_spark.io.store import TableStore
from remedi_spark.pipeline import run_stage
from remedi_spark.tracking import PIPELINE_TAG, Tracker
from tests.world import K, MODELS, copy_world



@pytest.fixture(scope="module")
def pipeline(world):
    return world.cfg, world.out


@pytest.fixture
def writable(world, tmp_path):
    """The world copied to this test's own root, for the tests that rerun a stage."""
    return copy_world(world, tmp_path / "w")


@pytest.fixture(scope="module")
def fused(spark, pipeline):
    cfg, out = pipeline
    return cfg, out["fusion"], TableStore(spark, cfg.tables.root)


@pytest.fixture(scope="module")
def distilled(spark, pipeline):
    cfg, out = pipeline
    month = TableStore(spark, cfg.tables.root).read("folds").filter("oot_split = 'test'").agg(F.max("month")).first()[0]
    assert out["evaluation"]["month"] == month
    return out["distill"], month, out["score[evaluation]"], out["lead-list[evaluation]"]


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
    assert {"hybrid_expert[paper]", "hybrid_expert[no_skip]"} <= names  # head variants (conf/base.yaml)
    assert set(results["evaluation"]) == {"meta_oof", "user_split", "out_of_time"}
    assert (results["run_id"] == summary["run_id"]).all()
    ranked = results[results["section"] != "difference"]
    for evaluation in ("meta_oof", "user_split", "out_of_time"):  # every ranker on every evaluation
        assert set(ranked.loc[ranked["evaluation"] == evaluation, "name"]) >= names - {"oracle"} - set(
            results.loc[results["section"] == "difference", "name"])
    assert (results["auc_ci_low"] <= results["auc"] + 1e-12).all() and (results["auc"] <= results["auc_ci_high"] + 1e-12).all()
    meta_oof = results[results["evaluation"] == "meta_oof"]
    assert meta_oof["rows"].nunique() == 1 and meta_oof["rows"].iloc[0] == summary["fit_rows"]
    assert results.loc[results["teacher"], "name"].unique().tolist() == [summary["teacher"]["chosen"]]
    oot = results[results["evaluation"] == "out_of_time"]
    evaluation_rows = store.read("folds").filter("oot_split = 'test'").count()  # every owner of that month
    assert (oot["rows"] == evaluation_rows).all()
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
    # The neural base models compute in float32 and the scorer batches rows differently from the
    # refit, so the two agree to float32 rounding (~1e-6 relative), not bit for bit; a wrong model,
    # feature order or head would miss by orders of magnitude more.
    np.testing.assert_allclose(got["p_scorer"], got["p_teacher"], rtol=1e-5, atol=1e-9)


def test_distillation_table_compares_students_with_the_teacher(distilled):
    summary, month = distilled[0], distilled[1]
    assert summary["evaluation_month"] == month
    for evaluation in ("user_split", "out_of_time"):
        rows = {r["name"]: r for r in summary["results"] if r["evaluation"] == evaluation}
        assert set(rows) == {"teacher", "student", "hard_label", "student - teacher", "hard_label - teacher"}
        assert rows["teacher"]["corr_vs_teacher"] == pytest.approx(1.0)
        ranked = [r for r in rows.values() if r["kind"] != "difference"]
        assert all(np.isfinite(r["corr_vs_teacher"]) and r["mse_vs_teacher"] >= 0 for r in ranked)
        for r in rows.values():  # every estimate inside its interval, differences included
            assert r["auc_ci_low"] - 1e-9 <= r["auc"] <= r["auc_ci_high"] + 1e-9
        diff = rows["student - teacher"]
        assert diff["auc"] == pytest.approx(rows["student"]["auc"] - rows["teacher"]["auc"], abs=1e-4)
    assert summary["inference"]["teacher"] > 0 and summary["inference"]["student"] > 0


@pytest.mark.slow  # re-runs distill (two students) on a copy of the world
def test_student_reproduces_a_known_teacher_on_held_out_owners(spark, fused, tmp_path):
    """With ~10 held-out buyers the tiny pipeline's teacher is mostly noise, so the distillation
    mechanics are checked against a teacher that is a known smooth function of the features."""
    cfg, _, store = fused
    other = replace(cfg, tables={"root": str(tmp_path / "t")}, distill={"timing_rows": 0})
    copy = TableStore(spark, other.tables.root)
    features = store.read("features")
    copy.write_months(features, "features", [r[0] for r in features.select("month").distinct().collect()])
    copy.write_table(store.read("folds"), "folds")
    z = -5.0 + 0.8 * F.log1p(F.coalesce("visit_days_sum3", F.lit(0.0))) + 0.6 * F.log1p(
        F.coalesce("voice_cnt_sum3", F.lit(0.0))) + 0.02 * F.coalesce("vehicle_age_months", F.lit(0.0))
    teacher = store.read("folds").join(features, ["user_id", "month"]).select(
        "user_id", "month", "split", (1 / (1 + F.exp(-z))).alias("p_teacher"), F.lit("known").alias("run_id"))
    copy.write_table(teacher, "teacher_predictions")
    rows = {r["name"]: r for r in run_stage(spark, other, "distill")["results"] if r["evaluation"] == "user_split"}
    assert rows["student"]["corr_vs_teacher"] > 0.95 and rows["student"]["rank_corr_vs_teacher"] > 0.9
    assert rows["student"]["mse_vs_teacher"] < rows["hard_label"]["mse_vs_teacher"]


def test_scores_cover_the_month_with_unique_ranks(fused, distilled):
    cfg, _, store = fused
    _, month, scored, _ = distilled
    scores = store.read("scores", months=[month]).toPandas()
    assert len(scores) == scored["owners"] == store.read("features", months=[month]).count()
    assert sorted(scores["rank"]) == list(range(1, len(scores) + 1))
    top = scores.sort_values("rank")
    assert top["score"].is_monotonic_decreasing and top["percentile"].iloc[0] == 100.0


def test_lead_list_has_k_unique_eligible_owners(spark, fused, distilled):
    cfg, _, store = fused
    _, month, _, summary = distilled
    leads = store.read("lead_list", months=[month]).toPandas()
    assert len(leads) == min(K, summary["eligible"]) and sorted(leads["lead_rank"]) == list(range(1, len(leads) + 1))
    owners = store.read("owners").toPandas().set_index("user_id").loc[leads["user_id"]]
    assert not owners["do_not_contact"].any()
    first = str(pd.Period(month, "M") - (cfg.lead_list.exclude_purchase_months - 1))
    window = (F.col("month") >= first) & (F.col("month") <= month)
    recent = {r["user_id"] for r in store.read("purchases").filter(window).select("user_id").collect()}
    assert not recent & set(leads["user_id"])
    age = (pd.Period(month, "M") - pd.PeriodIndex(owners["vehicle_start_month"], freq="M")).map(lambda d: d.n)
    assert (np.asarray(age) >= cfg.lead_list.min_vehicle_age_months).all()
    assert set(leads["reason"]) <= {"dealer visits", "calls to the brand", "digital engagement",
                                    "owner and vehicle profile", "other"}
    export = spark.read.parquet(f"{summary['export']}/parquet")
    assert export.columns == ["user_id", "rank", "score", "reason"] and export.count() == len(leads)


def test_rescoring_a_month_replaces_it_and_caps_apply(spark, writable, distilled):
    cfg, store = writable, TableStore(spark, writable.tables.root)
    _, month, scored, _ = distilled
    run_stage(spark, cfg, "score", month=month)
    assert store.read("scores", months=[month]).count() == scored["owners"]
    capped = replace(cfg, lead_list={"cap_column": "region_id", "cap_per_value": 5})
    run_stage(spark, capped, "lead-list", month=month)
    leads = store.read("lead_list", months=[month]).toPandas()
    assert leads.groupby("region_id").size().max() <= 5
    assert len(leads) == leads["user_id"].nunique()  # the month replaced, not appended to


def test_a_month_without_features_is_a_clear_error(spark, writable):
    cfg = writable
    with pytest.raises(DataValidationError, match="no feature rows for month 2031-01"):
        run_stage(spark, cfg, "score", month="2031-01")


def test_report_holds_every_table_and_figure(spark, pipeline):
    cfg, out = pipeline
    report = out["report"]
    assert report["pipeline_run_id"] == out["pipeline_run_id"] and report["report"].endswith("report.html")
    page = open(report["report"], encoding="utf-8").read()
    for title in ("Table 1", "Table 2", "Table 3", "Table 4", "Data versions", "Month by month"):
        assert title in page
    names = {"gains", "lift", "precision_at_k", "business_recall_at_k", "score_histogram", "calibration",
             "importance", "monthly", "diversity"}
    assert set(report["figures"]) == names
    assert page.count("data:image/png;base64,") == len(names)  # self-contained: figures inline
    for name in names:
        with open(f"{report['dir']}/figures/{name}.png", "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    numbers = json.load(open(f"{report['dir']}/report.json"))
    # the base models' diversity on the OOF rows: every pair of the 4 models, on every OOF row
    diversity = numbers["diversity"]
    assert "Diversity of the base models" in page and diversity["models"] == [m["name"] for m in MODELS]
    assert len(diversity["pairs"]) == 6 and diversity["rows"] == out["train-base"]["models"]["mlp"]["oof"]["rows"]
    # the MLP (all features) against the logloss LightGBM on the same columns, on the same OOF rows
    [versus] = numbers["neural_vs_lightgbm"]["pairs"]
    assert (versus["neural"], versus["lightgbm"]) == ("mlp", "lgbm_logloss") and "mlp − lgbm_logloss" in page
    assert versus["auc_diff_ci_low"] <= versus["auc_diff"] <= versus["auc_diff_ci_high"]
    assert numbers["neural_vs_lightgbm"]["rows"] == diversity["rows"]
    assert {"base_models", "fusion", "ablations", "variants", "differences", "distillation"} == set(numbers["tables"])
    assert numbers["teacher"]["teacher"] == out["fusion"]["teacher"]["chosen"]
    diffs = numbers["tables"]["differences"]["meta_oof"]
    assert diffs and all(r["auc_verdict"] in ("better", "worse", "no difference") for r in diffs)
    assert "The teacher" in page and "AUC interval" in page
    oracle = [r for r in numbers["tables"]["base_models"]["user_split"] if r["name"] == "oracle"]
    assert len(oracle) == 1 and oracle[0]["share_of_oracle"] == pytest.approx(1.0)
    ev = numbers["evaluation"]
    assert ev["month"] == out["evaluation"]["month"] and ev["scorers"][0] == "student"
    assert ev["k"] in ev["curves"]["student"]["k"]  # the chosen K is on every curve
    months = {r["month"] for r in numbers["monthly"]}
    assert len(months) == len(out["folds"]["months"])


def test_report_data_versions_come_from_the_run_manifests(spark, pipeline):
    cfg, out = pipeline
    store = TableStore(spark, cfg.tables.root)
    numbers = json.load(open(f"{out['report']['dir']}/report.json"))
    versions = numbers["data_versions"]["tables"]
    distill = store.load_manifest(out["distill"]["run_id"])
    assert distill["parent"] == out["pipeline_run_id"]
    assert versions["distill_results"] == distill["writes"][0]["version"]
    assert versions["teacher_predictions"] == store.load_manifest(out["fusion"]["run_id"])["reads"].get(
        "teacher_predictions", versions["teacher_predictions"])
    stages = {r["run_id"] for r in numbers["data_versions"]["by_stage"]}
    assert out["fusion"]["run_id"] in stages and out["score[evaluation]"]["run_id"] in stages


def test_mlflow_run_holds_the_pipeline_metrics_report_and_student(spark, pipeline):
    cfg, out = pipeline
    tracker = Tracker(cfg, TableStore(spark, cfg.tables.root).root)
    run_id = tracker.find_run(PIPELINE_TAG, out["pipeline_run_id"])
    assert run_id is not None
    client = tracker.mlflow.tracking.MlflowClient()
    run = client.get_run(run_id)
    fusion_auc = {r["name"]: r["auc"] for r in out["fusion"]["results"]
                  if r["section"] == "fusion" and r["evaluation"] == "user_split"}
    assert run.data.metrics["fusion.results.fusion.hybrid_expert.user_split.auc"] == pytest.approx(fusion_auc["hybrid_expert"])
    assert run.data.metrics["evaluation.precision"] == pytest.approx(out["evaluation"]["precision"])
    assert run.data.params["lead_list.k"] == str(K)
    artifacts = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/report.json", "report/figures"} <= artifacts
    models = tracker.mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    student = [m for m in models if m.source_run_id == run_id and m.name == "student"]
    assert student, "the student was not logged as an MLflow model"
    loaded = tracker.mlflow.pyfunc.load_model(student[0].model_uri)
    inputs = loaded.metadata.get_input_schema().input_names()
    assert len(inputs) > 10 and "vehicle_age_months" in inputs


def test_the_first_registered_student_becomes_champion_and_scores_from_the_registry(spark, pipeline, writable):
    """The registry flow of a pipeline run on a fresh root: its student is registered (version 1,
    alias challenger), promoted into the empty champion seat, the decision is in the MLflow run, the
    pipeline manifest and the report, and `score` with models:/remedi-student@champion writes the
    same scores as the student folder did (the scoring on a copy of the world)."""
    cfg, out = pipeline
    store = TableStore(spark, cfg.tables.root)
    assert out["distill"]["registered"]["version"] == "1"
    promotion = out["promote"]
    assert promotion["decision"] == "promote" and promotion["champion_version"] is None
    assert promotion["month"] == out["evaluation"]["month"] and promotion["champion_after"] == "1"
    tracker = Tracker(cfg, store.root)
    assert tracker.alias_version("champion") == "1" and tracker.alias_version("challenger") == "1"
    run = tracker.mlflow.tracking.MlflowClient().get_run(tracker.find_run(PIPELINE_TAG, out["pipeline_run_id"]))
    assert run.data.tags["remedi.promotion.decision"] == "promote"
    assert run.data.metrics["promote.p_at_k_challenger"] == pytest.approx(promotion["p_at_k_challenger"])
    assert store.load_manifest(out["pipeline_run_id"])["info"]["promotion"]["decision"] == "promote"
    report = json.loads(open(f"{out['report']['dir']}/report.json").read())
    assert report["promotion"]["champion_after"] == "1"
    assert "Model registry: challenger vs champion" in open(out["report"]["report"], encoding="utf-8").read()
    month = promotion["month"]
    before = store.read("scores", months=[month]).select("user_id", "score").toPandas().sort_values("user_id")
    summary = run_stage(spark, replace(writable, scoring={"model_uri": "models:/remedi-student@champion"}), "score",
                        month=month)
    assert summary["model"] == "models:/remedi-student@champion (version 1)"
    after = TableStore(spark, writable.tables.root).read("scores", months=[month]).select("user_id", "score").toPandas().sort_values("user_id")
    np.testing.assert_array_equal(after["user_id"], before["user_id"])
    np.testing.assert_allclose(after["score"], before["score"], rtol=0, atol=1e-12)


@pytest.mark.slow  # monitors a month twice on a full copy of the world
def test_monitor_realized_metrics_equal_a_direct_computation(spark, pipeline, writable):
    from remedi_spark.metrics import lead_metrics

    out, cfg = pipeline[1], writable
    store = TableStore(spark, cfg.tables.root)
    month = out["evaluation"]["month"]
    summary = run_stage(spark, cfg, "monitor", month=month)
    assert month in summary["closed_months"]
    realized = summary["realized"][month]
    labels = store.read("features", months=[month]).select("user_id", "y")
    leads = store.read("lead_list", months=[month]).select("user_id").join(labels, "user_id").toPandas()
    assert realized["lead_list.precision"] == pytest.approx(leads["y"].mean())
    ranking = store.read("scores", months=[month]).join(labels, "user_id").toPandas().sort_values("user_id")  # ties: lower id first
    direct = lead_metrics(ranking["y"].to_numpy(), ranking["score"].to_numpy(), len(leads))
    assert realized["ranking.precision_at_k"] == pytest.approx(direct["precision_at_k"])
    assert realized["ranking.auc"] == pytest.approx(direct["auc"])
    table = store.read("monitoring", months=[month]).toPandas()
    rates = table[(table["check"] == "realized") & table["metric"].isin(["precision", "auc", "precision_at_k"])]
    assert len(rates) == 3 and (rates["ci_low"] <= rates["value"]).all() and (rates["value"] <= rates["ci_high"]).all()
    assert (rates["ci_level"] == cfg.evaluation.bootstrap.level).all()
    decision = table[table["check"] == "decision"]
    assert len(decision) == 1 and decision["flagged"].item() == summary["retrain"] == bool(summary["reasons"])
    assert summary["model_age_months"] == 1  # the student's newest training month is the one before it
    psi = table[table["check"] == "feature_psi"]
    assert len(psi) > 10 and psi["value"].ge(0).all()
    run_stage(spark, cfg, "monitor", month=month)
    assert store.read("monitoring", months=[month]).count() == len(table)  # replaced, not appended


def test_the_console_summary_prints_every_section_with_its_verdicts(pipeline):
    # what `make demo` prints last: it once failed after every stage had run (an Interval without its level)
    from remedi_spark.cli import format_pipeline

    cfg, out = pipeline
    text = format_pipeline(out)
    for section in ("base models", "distillation, user_split", "distillation, out_of_time", "lead-list[evaluation]"):
        assert section in text, section
    rows = [line for line in text.splitlines() if line.startswith("| student - teacher |")]
    assert len(rows) == 2 and all(re.search(r"\((no difference|better|worse)\)", line) for line in rows)
