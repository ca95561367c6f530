"""Stage tune (issue 25): search spaces checked at load, tuned params merged by name, a search that
reads training owners outside the evaluation month only, and an overlay that trains."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from pyspark.sql import functions as F

from remedi_spark.config import ConfigError, load_config, parse_space, replace
from remedi_spark.tuning.space import as_model_params
from tests.conftest import REPO
from tests.tiny import TINY_MLP, lgbm_spec

LOCAL = REPO / "conf" / "local.yaml"


def _profile(tmp_path, text: str):
    path = tmp_path / "profile.yaml"
    path.write_text(f"extends: {LOCAL}\n" + text)
    return path


# --- configuration (no Spark) -------------------------------------------------------------------

@pytest.mark.parametrize("space, message", [
    ("lgbm: {num_leaves: [300, 20]}", r"tuning.spaces.lgbm.num_leaves: low 300 > high 20"),
    ("lgbm: {leaves: [2, 20]}", r"tuning.spaces.lgbm.leaves: unknown parameter"),
    ("lgbm: {learning_rate: [0.0, 0.1, log]}", r"tuning.spaces.lgbm.learning_rate: a log scale needs low > 0"),
    ("lgbm: {num_leaves: [7.5, 20]}", r"tuning.spaces.lgbm.num_leaves: num_leaves is an integer parameter"),
    ("lgbm: {num_leaves: [7, 20, linear]}", r"tuning.spaces.lgbm.num_leaves: expected \[low, high\]"),
    ("lgbm: {num_leaves: {low: 7, high: 20}}", r"tuning.spaces.lgbm.num_leaves: a mapping holds `choices` only"),
    ("lgbm: {feature_fraction: [low, 1.0]}", r"tuning.spaces.lgbm.feature_fraction: low and high must both be"),
    ("mlp: {lr: {choices: []}}", r"tuning.spaces.mlp.lr: choices must be a non-empty list"),
    ("mlp: {emb_dim: {choices: [4, 8.5]}}", r"tuning.spaces.mlp.emb_dim: emb_dim is an integer parameter"),
    ("mlp: {num_leaves: [7, 20]}", r"tuning.spaces.mlp.num_leaves: unknown parameter"),
    ("gbm: {num_leaves: [7, 20]}", r"tuning.spaces.gbm: unknown family"),
])
def test_a_bad_space_is_a_config_error_naming_the_key(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_profile(tmp_path, "tuning:\n  spaces:\n    " + space + "\n"))


@pytest.mark.parametrize("override, message", [
    ("tuning.inner_folds=0", r"tuning.inner_folds: expected a positive integer"),
    ("tuning.metric=auc", r"tuning.metric: 'auc' is not one of"),
    ("tuning.max_trials=0", r"tuning.max_trials: expected a positive integer"),
    ("tuning.timeout_minutes=0", r"tuning.timeout_minutes: expected a positive number"),
    ("tuning.models=[lgbm_nope]", r"tuning.models: unknown models \['lgbm_nope'\]"),
    ("base_models.tuned_params={lgbm_nope: {num_leaves: 3}}", r"base_models.tuned_params: \['lgbm_nope'\] are not"),
    ("distill.tuned_params={student: 3}", r"distill.tuned_params.student: expected a mapping"),
])
def test_bad_tuning_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LOCAL, [override])


def test_a_profile_replaces_a_space_entry_whole(tmp_path):
    cfg = load_config(_profile(tmp_path, "tuning:\n  spaces:\n    mlp: {lr: {choices: [0.001, 0.01]}}\n"
                                         "    lgbm: {num_leaves: [15, 31]}\n"))
    assert {r.name: r for r in parse_space(cfg.tuning.spaces, "mlp")}["lr"].choices == (0.001, 0.01)
    leaves = {r.name: r for r in parse_space(cfg.tuning.spaces, "lgbm")}["num_leaves"]
    assert (leaves.low, leaves.high, leaves.log) == (15, 31, False)


def test_the_default_spaces_parse():
    cfg = load_config(LOCAL)
    lgbm = {r.name: r for r in parse_space(cfg.tuning.spaces, "lgbm")}
    assert lgbm["num_leaves"].integer and lgbm["num_leaves"].log and not lgbm["feature_fraction"].integer
    assert {r.name for r in parse_space(cfg.tuning.spaces, "mlp")} >= {"lr", "emb_dim", "width", "dropout",
                                                                      "batch_size"}
    assert "learning_rate" not in {r.name for r in parse_space({"lgbm": {"learning_rate": None, "num_leaves": [2, 9]}},
                                                               "lgbm")}
    with pytest.raises(ConfigError, match="tuning.spaces.deepfm: no search space"):
        parse_space(cfg.tuning.spaces, "deepfm")


def test_tuned_params_merge_into_their_model_by_name(tmp_path):
    path = _profile(tmp_path, "base_models:\n  tuned_params:\n    lgbm_focal: {num_leaves: 63, lambda_l2: 3.5}\n"
                              "    mlp: {lr: 0.003, model: {emb_dim: 8, hidden: [64]}}\n"
                              "distill:\n  tuned_params:\n    student: {learning_rate: 0.11}\n")
    plain, cfg = load_config(LOCAL), load_config(path)
    specs, before = {s.name: s for s in cfg.base_models.models}, {s.name: s for s in plain.base_models.models}
    assert specs["lgbm_focal"].params == {"num_leaves": 63, "lambda_l2": 3.5}
    assert specs["lgbm_dealer"].params == before["lgbm_dealer"].params  # other models untouched
    # mappings merge key by key (patience, epochs, the zoo's other keys stay); lists are replaced whole
    mlp = specs["mlp"].params
    assert mlp["lr"] == 0.003 and mlp["epochs"] == before["mlp"].params["epochs"]
    assert mlp["model"] == {**before["mlp"].params["model"], "emb_dim": 8, "hidden": [64]}
    students = {s["name"]: s for s in cfg.distill.students}
    assert students["student"]["params"] == {"learning_rate": 0.11}
    assert students["deep_student"]["params"] == {s["name"]: s for s in plain.distill.students}["deep_student"]["params"]
    # the dict a run manifest records holds both; loading it again (replace) merges to the same config
    again = replace(cfg, folds={"n_folds": 5})
    assert again.base_models.models == cfg.base_models.models and again.distill.students == cfg.distill.students
    assert again.to_dict()["base_models"]["tuned_params"]["lgbm_focal"] == {"num_leaves": 63, "lambda_l2": 3.5}


def test_neural_values_map_onto_the_model_params():
    params = {"epochs": 4, "lr": 0.001, "model": {"emb_dim": 16, "hidden": [200, 200]}}
    assert as_model_params("mlp", {"lr": 0.01, "width": 64, "emb_dim": 4, "batch_size": 1024}, params) == {
        "lr": 0.01, "batch_size": 1024, "model": {"emb_dim": 4, "hidden": [64, 64]}}
    assert as_model_params("mlp", {"depth": 3}, params) == {"model": {"hidden": [200, 200, 200]}}
    assert as_model_params("lgbm", {"num_leaves": 31}, params) == {"num_leaves": 31}


def _fake_study(values_of, folds=(0, 1, 2), **settings):
    """run_study over one float parameter x in [0, 1] whose fold metric is ``values_of(x, fold)``
    (None = the fit fails): the search loop without Spark or LightGBM."""
    from remedi_spark.config import ParamRange
    from remedi_spark.tuning.lgbm import FoldJob
    from remedi_spark.tuning.study import run_study

    t = replace(load_config(LOCAL), tuning={"max_trials": 12, "timeout_minutes": None, "prune_startup_trials": 3,
                                            "prune_warmup_folds": 0, **settings}).tuning
    calls = []

    def run_jobs(jobs):
        calls.append(len(jobs))
        out = []
        for job in jobs:
            value = values_of(job.params["x"], job.fold)
            out.append({"trial": job.trial, "fold": job.fold, "value": value, "best_iteration": 1, "seconds": 0.01,
                        "error": None if value is not None else "ValueError: bad"})
        return out

    study, records = run_study("m", [ParamRange("x", low=0.0, high=1.0)], t, list(folds),
                               lambda trial, fold, values: FoldJob(trial, fold, dict(values), None, 1, None, False),
                               run_jobs, 2, 0.9)
    return study, records, calls


def test_the_study_prunes_on_the_inner_folds_and_keeps_the_budget():
    from remedi_spark.tuning.study import best_trial

    study, records, calls = _fake_study(lambda x, fold: x + 0.01 * fold)
    assert [r.trial for r in records] == list(range(12))  # max_trials, in trial order
    assert max(calls) == 2  # two trials per batch (two slots)
    pruned = [r for r in records if r.state == "pruned"]
    done = [r for r in records if r.state == "complete"]
    assert pruned and all(len(r.values) < 3 for r in pruned) and all(len(r.values) == 3 for r in done)
    # pruned trials were worse than the median of the complete ones at the fold they stopped
    assert min(r.values[-1] for r in pruned) > min(r.values[0] for r in done)
    best = best_trial(records, "logloss")
    assert best.value == min(r.value for r in done) and study.best_trial.number == best.trial
    # a failing fit is a failed trial, not a failed search; precision_at_k is maximised
    _, records, _ = _fake_study(lambda x, fold: None if x > 0.8 else x, metric="precision_at_k")
    failed = [r for r in records if r.state == "fail"]
    assert failed and all(r.error == "ValueError: bad" and r.value is None for r in failed)
    assert best_trial(records, "precision_at_k").value == max(r.value for r in records if r.state == "complete")
    # wall-time budget: no new batch after timeout_minutes
    _, records, calls = _fake_study(lambda x, fold: x, timeout_minutes=1e-9)
    assert len(records) == 2 and len(calls) == 3  # the first batch, fold by fold


def test_the_report_compares_the_newest_default_and_tuned_runs():
    import pandas as pd

    from remedi_spark.report.tuning import compare_runs

    def run(run_id, started, tuned):
        return {"run_id": run_id, "job": "train-base", "started_at": started,
                "conf": {"base_models": {"tuned_params": tuned}}}

    manifests = [run("a", "1", {}), run("b", "2", {"m": {"num_leaves": 7}}), run("c", "3", {}),
                 {"run_id": "t", "job": "tune", "started_at": "4", "conf": {},
                  "info": {"models": {"m": {"trials": 30, "metric": "logloss", "best_value": 0.02,
                                            "importance": {"num_leaves": 0.7}}}}}]
    metrics = pd.DataFrame([{"model": model, "run_id": r, "split": split, "rows": 100, "ci_level": 0.9,
                             **{f"{m}{end}": value for m in ("logloss", "auc", "precision_at_k")
                                for end in ("", "_ci_low", "_ci_high")}}
                            for model, r, split, value in [("m", "a", "oof", 0.5), ("m", "b", "oof", 0.3),
                                                           ("m", "c", "oof", 0.4), ("m", "c", "test", 0.9),
                                                           ("n", "a", "oof", 0.5), ("n", "c", "oof", 0.5)]])
    (row,) = compare_runs(manifests, metrics)  # n: never tuned, no row
    assert (row["name"], row["default_run"], row["tuned_run"]) == ("m", "c", "b")  # the newest of each
    assert (row["default_logloss"], row["tuned_logloss"]) == (0.4, 0.3) and row["tuned_params"] == {"num_leaves": 7}
    assert row["trials"] == 30 and row["importance"] == {"num_leaves": 0.7}
    assert row["tuned_logloss_ci"] == "0.30000 [0.30000, 0.30000]"


def test_what_tune_searches_by_default():
    from remedi_spark.tuning.stage import choose

    cfg = load_config(LOCAL)
    chosen = [(t.spec.name, t.family, t.student, t.soft) for t in choose(cfg, None)]
    lgbm = [(s.name, "lgbm", False, False) for s in cfg.base_models.models if s.family == "lgbm"]
    assert chosen == [*lgbm, ("mlp", "mlp", False, False), ("student", "student", True, True)]  # no deepfm space
    assert [t.spec.name for t in choose(replace(cfg, tuning={"models": ["hard_label"]}), None)] == ["hard_label"]
    assert not choose(cfg, ["hard_label"])[0].soft  # a label-target student fits the label
    with pytest.raises(ConfigError, match=r"tune: unknown models \['nope'\]"):
        choose(cfg, ["nope"])
    with pytest.raises(ConfigError, match="tuning.spaces.deepfm: no search space"):
        choose(cfg, ["deepfm"])


def test_the_overlay_extends_its_profile_and_keeps_other_models(tmp_path):
    from remedi_spark.tuning.output import default_overlay_path, write_overlay

    conf = tmp_path / "conf"
    conf.mkdir()
    profile = conf / "mine.yaml"
    profile.write_text(f"extends: {LOCAL}\n")
    overlay = default_overlay_path(profile)
    assert overlay == conf / "tuned" / "mine.yaml"
    write_overlay(overlay, profile, {"lgbm_focal": {"num_leaves": 9}}, {}, "run-1")
    write_overlay(overlay, profile, {"lgbm_dealer": {"num_leaves": 11}}, {"student": {"lambda_l2": 2.0}}, "run-2")
    data = yaml.safe_load(overlay.read_text())
    assert data["extends"] == "../mine.yaml" and "run-2" in overlay.read_text()
    assert data["base_models"]["tuned_params"] == {"lgbm_dealer": {"num_leaves": 11}, "lgbm_focal": {"num_leaves": 9}}
    # searched again on the overlay itself: updated in place, still extending the profile
    assert default_overlay_path(overlay) == overlay
    write_overlay(overlay, overlay, {"lgbm_focal": {"num_leaves": 13}}, {}, "run-3")
    cfg = load_config(overlay)
    specs = {s.name: s.params for s in cfg.base_models.models}
    assert specs["lgbm_focal"] == {"num_leaves": 13} and specs["lgbm_dealer"] == {"num_leaves": 11}
    assert {s["name"]: s["params"] for s in cfg.distill.students}["student"] == {"lambda_l2": 2.0}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "remedi_spark", "tune", *args], cwd=REPO, capture_output=True,
                          text=True)


def test_the_cli_refuses_a_bad_space_and_a_horizon_model_before_spark_starts(tmp_path):
    bad = _profile(tmp_path, "tuning:\n  spaces:\n    lgbm: {num_leaves: [300, 20]}\n")
    proc = _cli("--conf", str(bad))
    assert proc.returncode == 2 and "tuning.spaces.lgbm.num_leaves: low 300 > high 20" in proc.stderr
    proc = _cli("--conf", str(LOCAL), "--models", "kaml")
    assert proc.returncode == 2 and "'kaml' (kaml) trains on horizon or auxiliary labels" in proc.stderr
    for p in (proc,):
        assert "started" not in p.stderr and "Traceback" not in p.stderr  # no session, no stage run


# --- searches on a tiny world (Spark) -------------------------------------------------------------

FAST = {"num_iterations": 40, "learning_rate": 0.1, "min_data_in_leaf": 5}
SPACE = {"num_leaves": [4, 31, "log"], "min_data_in_leaf": [5, 60, "log"], "feature_fraction": [0.5, 1.0],
         "lambda_l2": [0.01, 10.0, "log"]}
UNSEARCHED = {"learning_rate": None, "bagging_fraction": None}  # in conf/base.yaml's spaces: left out here
MLP_SPACE = {"lr": [0.001, 0.02, "log"], "width": {"choices": [8, 16]}, "dropout": [0.0, 0.3], "emb_dim": None,
             "depth": None, "batch_size": {"choices": [256, 512]}}
TUNING = {"max_trials": 5, "timeout_minutes": None, "inner_folds": 2, "prune_startup_trials": 2, "parallelism": "tasks",
          "sample_rows": 4000,
          "spaces": {"lgbm": {**SPACE, **UNSEARCHED}, "student": {**SPACE, **UNSEARCHED}, "mlp": MLP_SPACE}}
KEYS = ["user_id", "month"]


@pytest.fixture(scope="module")
def world(spark, base_cfg, tmp_path_factory):
    """generate → features → folds once, and a stand-in teacher (a noisy function of the label: the
    student's search only needs its probabilities); each test copies them into its own root."""
    from remedi_spark.io.store import TableStore
    from remedi_spark.pipeline import run_stage

    root = tmp_path_factory.mktemp("tuning")
    cfg = replace(base_cfg, tables={"root": str(root / "world")}, synthetic={"n_users": 3000, "chunk_users": 1500},
                  folds={"n_folds": 3},
                  base_models={"models": [lgbm_spec("lgbm", FAST), lgbm_spec("lgbm_focal", FAST, "focal"), TINY_MLP],
                               "early_stopping_rounds": 10, "num_workers": 1},
                  distill={"students": [{"name": "student", "objective": "mse", "target": "teacher", "params": FAST}],
                           "timing_rows": 0},
                  tuning=TUNING)
    for stage in ("generate", "features", "folds"):
        run_stage(spark, cfg, stage)
    store = TableStore(spark, cfg.tables.root)
    teacher = store.read("features").join(store.read("folds").select(*KEYS, "split"), KEYS) \
        .select(*KEYS, "split", (0.05 + 0.5 * F.col("y") * F.rand(3)).alias("p_teacher"), F.lit("x").alias("run_id"))
    store.write_table(teacher.filter(F.col("y").isNotNull()), "teacher_predictions")
    return cfg, store


def _copy(spark, cfg, store, path, features=None):
    """``cfg`` on a new root with the world's tables (``features`` replacing its features)."""
    from remedi_spark.io.store import TableStore

    mine = replace(cfg, tables={"root": str(path)})
    copy = TableStore(spark, mine.tables.root)
    features = store.read("features") if features is None else features
    copy.write_months(features, "features", sorted(r[0] for r in features.select("month").distinct().collect()))
    copy.write_table(store.read("folds"), "folds")
    copy.write_table(store.read("teacher_predictions"), "teacher_predictions")
    return mine, copy


def _scrambled(store, cfg, rows: str):
    """The features with every numeric feature and the labels replaced by noise on ``rows``:
    ``held_out`` = every row a search must not read (held-out owners, the evaluation month, open
    windows: training_frame's split other than train), ``training`` = training rows of fold 0."""
    from remedi_spark.training.oof import training_frame

    splits = training_frame(store, cfg).select(*KEYS, "split", "fold")
    hit = (F.col("split") != "train") if rows == "held_out" else ((F.col("split") == "train") & (F.col("fold") == 0))
    features = store.read("features")
    marked = features.join(splits.withColumn("_hit", hit).select(*KEYS, "_hit"), KEYS, "left") \
        .withColumn("_hit", F.coalesce(F.col("_hit"), F.lit(True)))
    numeric = [f.name for f in features.schema.fields if f.name not in KEYS and f.dataType.typeName() in
               ("double", "integer", "long") and not f.name.startswith("y")]
    assert marked.filter(F.col("_hit")).limit(1).count() == 1
    noise = {c: (F.rand(100 + i) * 50).cast(features.schema[c].dataType) for i, c in enumerate(numeric)}
    noise["y"] = 1 - F.col("y")
    return marked.select(*[F.when(F.col("_hit"), noise[c]).otherwise(F.col(c)).alias(c) if c in noise else F.col(c)
                           for c in features.columns])


def _search(spark, cfg, store, models):
    from remedi_spark.tuning.stage import run_tuning

    summary = run_tuning(spark, cfg, store, models=models)
    results = store.read("tuning_results").toPandas().sort_values(["model", "trial"], ignore_index=True)
    return summary, results[["model", "trial", "state", "params", "value", "folds"]]


@pytest.mark.slow
def test_the_search_never_reads_held_out_rows(spark, world, tmp_path):
    """A canary that changes only the rows a search must not read (held-out owners, the evaluation
    month: features replaced by noise, labels flipped) changes no trial's params or metric, for a
    LightGBM base model, the student and a neural model; the same change on training rows does (the
    check can fail)."""
    cfg, store = world
    models = ["lgbm_focal", "student", "mlp"]
    _, expected = _search(spark, cfg, store, models)  # on the world itself
    canary_cfg, canary = _copy(spark, cfg, store, tmp_path / "canary", _scrambled(store, cfg, "held_out"))
    _, seen = _search(spark, canary_cfg, canary, models)
    assert len(expected) == 15 and (expected["state"] != "fail").all()
    assert seen.equals(expected)
    leak_cfg, leak = _copy(spark, cfg, store, tmp_path / "leak", _scrambled(store, cfg, "training"))
    _, changed = _search(spark, leak_cfg, leak, ["lgbm_focal"])
    assert not changed["value"].equals(expected[expected["model"] == "lgbm_focal"]["value"].reset_index(drop=True))


@pytest.mark.slow
def test_a_five_trial_study_writes_results_and_an_overlay_that_trains(spark, world, tmp_path):
    from remedi_spark.io.store import TableStore
    from remedi_spark.pipeline import run_stage
    from remedi_spark.tuning.output import default_overlay_path

    cfg, store = world
    mine, copy = _copy(spark, cfg, store, tmp_path / "tables")
    profile = tmp_path / "conf" / "tiny.yaml"
    profile.parent.mkdir()
    profile.write_text(yaml.safe_dump(mine.to_dict()))
    overlay = default_overlay_path(profile)
    # trials on the driver here (Spark tasks in the canary test), MLflow on: a child run per trial
    searching = replace(mine, tuning={"parallelism": "driver"}, tracking={"enabled": True})
    summary = run_stage(spark, searching, "tune", models=["lgbm", "student", "mlp"], overlay=str(overlay),
                        profile=str(profile))
    assert summary["overlay"] == str(overlay) and overlay.parent.name == "tuned"
    results = copy.read("tuning_results").toPandas()
    for model in ("lgbm", "student", "mlp"):
        rows = results[results["model"] == model]
        assert sorted(rows["trial"]) == [0, 1, 2, 3, 4] and rows["best"].sum() == 1
        assert set(rows["state"]) <= {"complete", "pruned"} and (rows["seconds"] > 0).all()
        done = rows[rows["state"] == "complete"]
        assert (done["folds"] == 2).all() and (done["value_ci_low"] <= done["value"]).all()
        best = rows[rows["best"]].iloc[0]
        assert best["value"] == done["value"].min()  # log loss: lower is better
        space = {k for k, v in (MLP_SPACE if model == "mlp" else SPACE).items() if v is not None}
        assert set(json.loads(best["params"])) == space
        if model != "mlp":
            assert json.loads(best["params"]) == summary["models"][model]["best_params"]
        assert summary["models"][model]["mlflow_trials"] == 5
    import mlflow

    children = mlflow.search_runs(experiment_names=[mine.tracking.experiment], output_format="list",
                                  filter_string="tags.`remedi.tune.model` = 'lgbm'")
    assert len(children) == 5 and all(c.data.tags.get("mlflow.parentRunId") for c in children)
    best_child = next(c for c in children if c.data.tags["remedi.tune.best"] == "True")
    assert best_child.data.metrics["logloss_value"] == pytest.approx(summary["models"]["lgbm"]["best_value"])
    # the overlay extends the profile and carries the best params; loaded, they reach the models
    text = yaml.safe_load(overlay.read_text())
    assert text["extends"] == "../tiny.yaml"
    tuned = load_config(overlay)
    best_lgbm, best_student = summary["models"]["lgbm"]["best_params"], summary["models"]["student"]["best_params"]
    best_lgbm_value = summary["models"]["lgbm"]["best_value"]
    assert {s.name: s for s in tuned.base_models.models}["lgbm"].params == {**FAST, **best_lgbm}
    assert {s["name"]: s for s in tuned.distill.students}["student"]["params"] == {**FAST, **best_student}
    # neural values land where the model reads them: width x the model's depth (1) = model.hidden
    values = json.loads(results[(results["model"] == "mlp") & results["best"]].iloc[0]["params"])
    mlp = {s.name: s for s in tuned.base_models.models}["mlp"].params
    assert mlp["lr"] == values["lr"] and mlp["batch_size"] == values["batch_size"] and mlp["epochs"] == 1
    assert mlp["model"] == {"emb_dim": 4, "hidden": [values["width"]], "dropout": values["dropout"]}
    # train-base on the overlay trains with them; its run manifest records them
    run_stage(spark, tuned, "train-base", models=["lgbm"])
    sidecar = json.loads((tmp_path / "tables" / "models" / "lgbm" / "model.json").read_text())
    assert {k: sidecar["params"][k] for k in best_lgbm} == best_lgbm
    manifest = TableStore(spark, mine.tables.root).manifests()[-1]
    assert manifest["job"] == "train-base" and manifest["conf"]["base_models"]["tuned_params"]["lgbm"] == best_lgbm
    # and once more without the overlay: the report's tuning section puts the two runs side by side
    from remedi_spark.report.tuning import tuning_numbers, tuning_section

    run_stage(spark, mine, "train-base", models=["lgbm"])
    numbers = tuning_numbers(TableStore(spark, mine.tables.root), mine)
    (row,) = numbers["rows"]
    assert row["name"] == "lgbm" and row["tuned_run"] == manifest["run_id"] and row["default_run"] != row["tuned_run"]
    assert row["tuned_params"] == best_lgbm and row["trials"] == 5 and row["search_best"] == best_lgbm_value
    assert row["default_logloss"] > 0 and row["tuned_logloss"] > 0 and "[" in row["tuned_logloss_ci"]
    # the paired difference reads the tuned run's predictions back from the Delta version it wrote (the
    # default run has replaced the partition since): same rows and the same estimates as each run's
    # own metrics row, and an interval around its estimate
    diff = row["difference"]
    assert diff["rows"] == row["rows"] and diff["positives"] > 0
    for metric in ("logloss", "auc", "precision_at_k"):
        assert diff[metric]["estimate"] == pytest.approx(row[f"tuned_{metric}"] - row[f"default_{metric}"], abs=1e-9)
        assert diff[metric]["low"] <= diff[metric]["estimate"] <= diff[metric]["high"]
    assert diff["logloss"]["estimate"] != 0  # two different models' predictions, not one read twice
    held_out = row["difference_held_out"]  # the held-out owners: their own rows, never the OOF ones
    assert held_out["rows"] > 0 and held_out["rows"] + diff["rows"] <= copy.read("features").count()
    assert held_out["logloss"]["low"] <= held_out["logloss"]["estimate"] <= held_out["logloss"]["high"]
    html = tuning_section(numbers)[0][1]
    assert "Tuning" in tuning_section(numbers)[0][0] and row["tuned_logloss_ci"] in html and row["diff_auc"] in html
