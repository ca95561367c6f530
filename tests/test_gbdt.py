"""GBDT base models: both backends learn the same signal, saved models reload identically, OOF covers
every training row exactly once per model."""
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from remedi_spark.config import ModelSpec
from remedi_spark.io.store import TableStore
from remedi_spark.models.base import FeatureSpec, load_model
from remedi_spark.models.gbdt.native import collect_with_retries
from remedi_spark.models.registry import build_model
from remedi_spark.pipeline import run_stage
from tests.world import MODELS as WORLD_MODELS, copy_tables

FAST = {"num_iterations": 60, "learning_rate": 0.1, "min_data_in_leaf": 20}


@pytest.fixture(scope="module")
def toy(spark):
    """40k rows, ~3% positives, a non-linear signal in two of five features plus a categorical."""
    rng = np.random.default_rng(11)
    n = 40_000
    x = rng.normal(size=(n, 5))
    cat = rng.choice(["a", "b", "c"], n)
    logit = 1.5 * x[:, 0] + np.where(x[:, 1] > 0.5, 1.0, 0.0) + (cat == "c") * 0.7 - 4.2
    pdf = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)]).assign(
        cat=cat, y=(rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), user_id=np.arange(n), month="2024-06")
    df = spark.createDataFrame(pdf)
    features = FeatureSpec.from_frame(df)
    encoded = features.encode(df, extra=("y",)).cache()
    part = F.col("user_id") % 10
    return features, encoded.filter(part < 7), encoded.filter(part == 7), encoded.filter(part > 7)


def _auc(model, test):
    scored = model.predict(test).join(test.select("user_id", "y"), "user_id").toPandas()
    return roc_auc_score(scored["y"], scored["p"]), scored


def _spec(name, backend, objective="logloss"):
    return ModelSpec(name=name, family="lgbm", backend=backend, objective=objective, feature_group=None, params=FAST)


def test_backends_agree_and_learn(toy, base_cfg):
    features, train, valid, test = toy
    aucs = {}
    for backend in ("synapseml", "native"):
        model = build_model(_spec(backend, backend), base_cfg.base_models, features).fit(train, valid)
        aucs[backend] = _auc(model, test)[0]
    assert min(aucs.values()) > 0.75, aucs
    assert abs(aucs["synapseml"] - aucs["native"]) < 0.01, aucs


@pytest.mark.parametrize("backend", ["synapseml", "native"])
def test_the_same_rows_in_another_layout_give_the_same_model(toy, base_cfg, backend):
    """What makes a stage rerun (or a cluster run) reproduce local results: the model does not
    depend on how the input rows happen to be partitioned or ordered."""
    features, train, valid, test = toy
    spec = _spec("m", backend)
    texts = [build_model(spec, base_cfg.base_models, features).fit(rows, valid).artifact()
             for rows in (train, train.repartition(5).sortWithinPartitions(F.desc("user_id")))]
    # native: data-parallel over num_workers partitions, as on a cluster (SynapseML's default streaming
    # transfer trains serially on local[2]: one worker per executor)
    if backend == "native":
        assert b"[tree_learner: data]" in texts[0] and b"[num_machines: 2]" in texts[0]
    # the trees, not the parameters section after them (it records each run's ports)
    models = [text.split(b"\nparameters:")[0] for text in texts]
    assert b"Tree=10" in models[0]
    assert models[0] == models[1]


@pytest.mark.parametrize("backend, objective", [("synapseml", "logloss"), ("native", "focal")])
def test_saved_model_reloads_and_predicts_identically(spark, toy, base_cfg, tmp_path, backend, objective):
    features, train, valid, test = toy
    model = build_model(_spec("m", backend, objective), base_cfg.base_models, features).fit(train, valid)
    auc, before = _auc(model, test)
    assert auc > 0.75
    model.save(spark, str(tmp_path / "m"))
    reloaded = load_model(spark, str(tmp_path / "m"), base_cfg.base_models, [str(tmp_path)])
    after = reloaded.predict(test).toPandas()
    merged = before.merge(after, on=["user_id", "month"], suffixes=("", "_reloaded"))
    assert len(merged) == len(before)
    np.testing.assert_allclose(merged["p"], merged["p_reloaded"], rtol=0, atol=1e-12)


def test_focal_model_refuses_synapseml(toy, base_cfg):
    features, train, valid, _ = toy
    with pytest.raises(ValueError, match="SynapseML cannot take a Python objective"):
        build_model(_spec("f", "synapseml", "focal"), base_cfg.base_models, features).fit(train, valid)


def test_oof_covers_every_training_row_once_per_model(spark, world):
    """On the shared world's train-base: three LightGBMs (SynapseML, focal, dealer features) and the MLP."""
    cfg, summary = world.cfg, world.out["train-base"]
    store = TableStore(spark, cfg.tables.root)
    folds = store.read("folds")
    oof = store.read("oof_predictions")
    assert sorted(summary["models"]) == sorted(m["name"] for m in WORLD_MODELS)
    assert {m["backend"] for m in WORLD_MODELS if m["family"] == "lgbm"} == {"synapseml", "native"}
    assert summary["evaluation_month"] == folds.agg(F.max("month")).first()[0]
    for name in summary["models"]:
        mine = oof.filter(F.col("model") == name)
        # out of fold: the training owners outside the evaluation month, each in its own fold
        train_rows = folds.filter("split = 'train' AND oot_split = 'train'").select("user_id", "month", "fold")
        got = mine.filter("fold >= 0").select("user_id", "month", "fold")
        assert got.count() == train_rows.count()
        assert got.exceptAll(train_rows).count() == 0 and train_rows.exceptAll(got).count() == 0
        # the refit predicts the held-out owners and every owner of the evaluation month
        refit_rows = folds.filter("split = 'test' OR oot_split = 'test'").select("user_id", "month", "split")
        held = mine.filter("fold = -1").select("user_id", "month", "split")
        assert held.count() == refit_rows.count() and held.exceptAll(refit_rows).count() == 0
        assert mine.filter("p < 0 OR p > 1 OR p IS NULL").count() == 0
    metrics = store.read("base_model_metrics").toPandas()
    assert set(metrics["model"]) == set(summary["models"])
    rows = {"oof": folds.filter("split = 'train' AND oot_split = 'train'").count(),
            "test": folds.filter("split = 'test'").count(), "out_of_time": folds.filter("oot_split = 'test'").count()}
    assert (metrics["rows"] == metrics["split"].map(rows)).all() and len(metrics) == len(summary["models"]) * len(rows)
    for metric in ("auc", "precision_at_k", "logloss"):  # every estimate inside its interval
        assert (metrics[f"{metric}_ci_low"] <= metrics[metric]).all()
        assert (metrics[metric] <= metrics[f"{metric}_ci_high"]).all()
    # the dealer model only saw dealer features; the sidecar says so and names the data versions
    sidecar = load_model(spark, f"{cfg.tables.root}/models/lgbm_dealer", cfg.base_models, [cfg.tables.root])
    assert all(c.startswith(("visit_", "service_visit", "months_since_dealer", "brands_per_visit", "non_service"))
               for c in sidecar.features.columns)


@pytest.mark.slow  # re-runs train-base for one model on a copy of the world
def test_rerunning_train_base_replaces_the_model_partition(spark, world, tmp_path):
    """Re-running one model (on a copy of the world's tables) replaces its partition of the OOF
    predictions instead of adding to it, and leaves the other models' rows alone."""
    store = TableStore(spark, world.root)
    folds, oof = store.read("folds"), store.read("oof_predictions")
    mine = copy_tables(spark, world, tmp_path / "t", tables=("features", "folds", "oof_predictions"))
    run_stage(spark, mine, "train-base", models=["lgbm_dealer"])
    again = TableStore(spark, mine.tables.root).read("oof_predictions")
    assert again.filter(F.col("model") == "lgbm_dealer").count() == folds.count()
    assert again.filter(F.col("model") != "lgbm_dealer").count() == oof.filter(F.col("model") != "lgbm_dealer").count()


def test_feature_order_survives_the_json_sidecar():
    import json

    spec = FeatureSpec(numeric=["b_num", "a_num"], categorical={"segment": ["x", "y"], "gender": ["F", "M"]})
    again = FeatureSpec(**json.loads(json.dumps(spec.to_dict(), sort_keys=True)))
    assert again.columns == spec.columns == ["b_num", "a_num", "gender", "segment"]
    assert again.categorical_indexes == [2, 3]


class _Job:
    """A barrier job whose first ``failures`` collects raise ``error`` (as Spark wraps a task's error)."""

    def __init__(self, failures, error):
        self.failures, self.error, self.calls = failures, error, 0

    def collect(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError(f"An error occurred while calling o1.collectToPython.\n{self.error}\n\tat org.apache")
        return ["model"]


SOCKET_RESET = "lightgbm.basic.LightGBMError: Socket send error, Connection reset by peer (code: 104)"


def test_a_fit_whose_workers_lost_their_connection_runs_again_other_errors_do_not():
    job = _Job(1, SOCKET_RESET)
    with pytest.warns(RuntimeWarning, match="lost their connection .*Socket send error.*attempt 2 of 2"):
        assert collect_with_retries(job, 1, "fit") == ["model"]
    assert job.calls == 2
    # retries spent: the network error itself is raised
    job = _Job(2, SOCKET_RESET)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="Connection reset by peer"):
        collect_with_retries(job, 1, "fit")
    assert job.calls == 2
    # any other failure (bad data, a bug) is raised at once, never re-run
    job = _Job(1, "lightgbm.basic.LightGBMError: Check failed: (num_data) > (0)")
    with pytest.raises(RuntimeError, match="Check failed"):
        collect_with_retries(job, 3, "fit")
    assert job.calls == 1
