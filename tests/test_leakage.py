"""Leakage invariants on a tiny synthetic world: what every fit may see.

* base models (fold models, refits) and students fit and early-stop only on training owners outside
  the evaluation month; fusion's meta-models fit only on those rows' meta-features;
* out-of-fold predictions come from models that did not see the row: a canary feature that copies
  the label in fold 0's rows cannot lift fold 0's OOF AUC.

Each check also runs a deliberately leaking variant and detects it, so none can pass vacuously.
The rules are checked by recording the rows handed to every ``fit`` (fit rows and early-stopping
rows) and comparing them with the folds table, not by re-reading the code's own filters.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from remedi_spark.config import replace
from remedi_spark.distill import students
from remedi_spark.fusion import train as fusion_train
from remedi_spark.io.store import TableStore
from remedi_spark.pipeline import run_stage
from remedi_spark.training import oof
from tests.tiny import lgbm_spec

# every feature in every tree (no column sampling a canary column could shift); small leaves, so a
# canary on fold 0's ~25 buyers can be learnt when a model is allowed to see it; one LightGBM worker
# per fit (two data-parallel workers on a few thousand rows only add the network setup)
FAST = {"num_iterations": 30, "learning_rate": 0.1, "min_data_in_leaf": 5, "feature_fraction": 1.0}
MODELS = [lgbm_spec("lgbm", FAST)]
META = {"raw_hidden": [8], "relative_hidden": [16], "output_hidden": [8], "epochs": 5, "batch_size": 256,
        "lr": 0.01, "patience": 5, "min_valid_positives": 3, "bags": 1}
KEYS = ["user_id", "month"]
# each check re-runs a stage twice (honest and deliberately leaking) on a copy of the world: the slow tier
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def leak_world(spark, base_cfg, world):
    """The shared world's features and folds (tests/world.py, read only) and this module's config;
    each test copies features and folds into its own root."""
    assert world.cfg.folds.n_folds == 2
    cfg = replace(base_cfg, tables={"root": world.root}, folds={"n_folds": 2},
                  base_models={"models": MODELS, "early_stopping_rounds": 10, "num_workers": 1},
                  fusion={"meta_model": META, "variants": {}, "ablations": []},
                  distill={"students": [{"name": "student", "objective": "mse", "target": "teacher",
                                         "params": FAST}], "timing_rows": 0},
                  evaluation={"bootstrap": {"replicates": 50}})  # the intervals are not what is checked here
    store = TableStore(spark, world.root)
    folds = store.read("folds").toPandas()
    allowed = folds[(folds["split"] == "train") & (folds["oot_split"] == "train")]
    assert 0 < len(allowed) < len(folds) and (folds["oot_split"] == "test").any()
    return cfg, store, folds, set(zip(allowed["user_id"], allowed["month"]))


def _fresh_root(spark, cfg, store, path) -> tuple:
    """``cfg`` on a new root holding the world's features and folds."""
    mine = replace(cfg, tables={"root": str(path)})
    copy = TableStore(spark, mine.tables.root)
    features = store.read("features")
    copy.write_months(features, "features", [r[0] for r in features.select("month").distinct().collect()])
    copy.write_table(store.read("folds"), "folds")
    return mine, copy


def _keys(frame) -> set:
    return {tuple(r) for r in frame.select(*KEYS).toPandas().itertuples(index=False)}


def _record_fits(monkeypatch, module) -> list[tuple[str, set, set]]:
    """Every model built through ``module.build_model`` records (name, fit rows, early-stopping rows)."""
    seen: list[tuple[str, set, set]] = []
    real = module.build_model

    def build(spec, settings, features):
        model = real(spec, settings, features)
        fit = model.fit

        def recorded(train, valid):
            seen.append((spec.name, _keys(train), _keys(valid)))
            return fit(train, valid)
        model.fit = recorded
        return model
    monkeypatch.setattr(module, "build_model", build)
    return seen


def _leaky_training_frame(real, splits=("test", oof.EVALUATION)):
    """A training frame whose rows of ``splits`` (held-out owners, evaluation month) are marked ``train``."""
    def frame(*args, **kwargs):
        data = real(*args, **kwargs)
        return data.withColumn("split", F.when(F.col("split").isin(*splits), "train").otherwise(F.col("split")))
    return frame


def _outside(seen, allowed) -> dict[str, int]:
    """Per fit: how many fit or early-stopping rows are not training owners outside the evaluation month."""
    return {f"{name}#{i}": len((fit | stop) - allowed) for i, (name, fit, stop) in enumerate(seen)}


def test_base_models_fit_and_stop_early_only_on_training_owners_outside_the_evaluation_month(
        spark, leak_world, monkeypatch, tmp_path):
    cfg, store, folds, allowed = leak_world
    mine, _ = _fresh_root(spark, cfg, store, tmp_path / "ok")
    seen = _record_fits(monkeypatch, oof)
    run_stage(spark, mine, "train-base")
    assert len(seen) == mine.folds.n_folds + 1  # K fold models and the refit
    assert all(stop for _, _, stop in seen)  # every model stopped early on some rows
    assert not any(_outside(seen, allowed).values())
    refit_rows = seen[-1][1] | seen[-1][2]
    assert refit_rows == allowed  # the refit used every allowed row, fit or early stopping

    # positive control: a training frame that lets held-out and evaluation-month rows in is caught
    leaky, _ = _fresh_root(spark, cfg, store, tmp_path / "leaky")
    seen.clear()
    monkeypatch.setattr(oof, "training_frame", _leaky_training_frame(oof.training_frame))
    run_stage(spark, leaky, "train-base")
    assert all(_outside(seen, allowed).values())


def test_students_fit_and_stop_early_only_on_training_owners_outside_the_evaluation_month(
        spark, leak_world, monkeypatch, tmp_path):
    cfg, store, folds, allowed = leak_world

    def with_teacher(path):
        mine, copy = _fresh_root(spark, cfg, store, path)
        features = store.read("features")
        z = -5.0 + 0.8 * F.log1p(F.coalesce("visit_days_sum3", F.lit(0.0)))  # any teacher will do
        copy.write_table(store.read("folds").join(features, KEYS).select(
            *KEYS, "split", (1 / (1 + F.exp(-z))).alias("p_teacher"), F.lit("known").alias("run_id")),
            "teacher_predictions")
        return mine

    seen = _record_fits(monkeypatch, students)
    summary = run_stage(spark, with_teacher(tmp_path / "ok"), "distill")
    assert len(seen) == 1 and not any(_outside(seen, allowed).values())
    evaluation_rows = int((folds["oot_split"] == "test").sum())
    oot = [r for r in summary["results"] if r["evaluation"] == "out_of_time" and r["name"] == "student"]
    assert oot and oot[0]["rows"] == evaluation_rows  # and it is evaluated on every owner of that month

    seen.clear()
    # (the held-out owners stay held out: the stage still needs rows to evaluate on)
    monkeypatch.setattr(students, "training_frame", _leaky_training_frame(students.training_frame, (oof.EVALUATION,)))
    run_stage(spark, with_teacher(tmp_path / "leaky"), "distill")
    assert all(_outside(seen, allowed).values())


def test_meta_models_fit_only_on_training_owners_outside_the_evaluation_month(spark, leak_world, monkeypatch, tmp_path):
    cfg, store, folds, allowed = leak_world
    mine, _ = _fresh_root(spark, cfg, store, tmp_path / "root")
    run_stage(spark, mine, "train-base")
    run_stage(spark, mine, "meta-features")
    frames: list[pd.DataFrame] = []
    fitted: list[set] = []
    real_frame, real_fit = fusion_train._meta_frame, fusion_train.Candidate.fit

    def meta_frame(*args):
        pdf, x = real_frame(*args)
        frames.append(pdf)
        return pdf, x

    def fit(self, rows, y, groups):
        pdf = frames[-1]
        fitted.append(set(zip(pdf["user_id"].to_numpy()[rows], pdf["month"].to_numpy()[rows])))
        return real_fit(self, rows, y, groups)

    monkeypatch.setattr(fusion_train, "_meta_frame", meta_frame)
    monkeypatch.setattr(fusion_train.Candidate, "fit", fit)
    run_stage(spark, mine, "fusion")
    assert fitted and all(rows and rows <= allowed for rows in fitted)
    assert set().union(*fitted) == allowed  # the final fits use every allowed row

    # positive control: a meta frame that forgets the splits lets held-out and evaluation rows in
    fitted.clear()

    def forgetful(*args):
        pdf, x = real_frame(*args)
        frames.append(pdf.assign(split="train", oot_split="train"))
        return frames[-1], x
    monkeypatch.setattr(fusion_train, "_meta_frame", forgetful)
    run_stage(spark, mine, "fusion")
    assert any(rows - allowed for rows in fitted)


def _fold0_oof_auc(spark, cfg, store, path, monkeypatch, canary: bool, leak: bool) -> float:
    """Fold 0's OOF AUC of the base model, with a canary feature equal to the label on fold 0's
    training rows (0 elsewhere) and, for the positive control, fold models that fit on every fold."""
    mine, copy = _fresh_root(spark, cfg, store, path)
    with monkeypatch.context() as m:
        if canary:
            real = oof.training_frame

            def with_canary(*args, **kwargs):
                data = real(*args, **kwargs)
                in_fold0 = (F.col("fold") == 0) & (F.col("split") == "train")
                return data.withColumn("canary", F.when(in_fold0, F.col("y").cast("double")).otherwise(0.0))
            m.setattr(oof, "training_frame", with_canary)
        if leak:
            m.setattr(oof, "fold_fit_rows", lambda pool, k: pool)
        run_stage(spark, mine, "train-base")
    rows = copy.read("oof_predictions").filter("fold = 0").join(copy.read("folds").select(*KEYS, "y"), KEYS).toPandas()
    assert rows["y"].sum() >= 5
    return float(roc_auc_score(rows["y"], rows["p"]))


def test_oof_predictions_come_from_models_that_did_not_see_the_row(spark, leak_world, monkeypatch, tmp_path):
    cfg, store, _, _ = leak_world
    plain = _fold0_oof_auc(spark, cfg, store, tmp_path / "plain", monkeypatch, canary=False, leak=False)
    canary = _fold0_oof_auc(spark, cfg, store, tmp_path / "canary", monkeypatch, canary=True, leak=False)
    assert canary - plain <= 0.01
    # positive control: fold models that saw fold 0 learn the canary and nearly rank it perfectly
    leaked = _fold0_oof_auc(spark, cfg, store, tmp_path / "leaked", monkeypatch, canary=True, leak=True)
    assert leaked - plain > 0.05 and leaked > 0.95
    assert np.isfinite([plain, canary, leaked]).all()
