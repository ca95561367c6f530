"""Negative sampling of the base models' fit rows (training.negative_rate): which rows a fit keeps, and the
prior correction that keeps the sampled models' probabilities calibrated, in memory and after a save/load."""
import json

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import log_loss, roc_auc_score

from remedi_spark.config import ConfigError, ModelSpec, replace
from remedi_spark.io.store import TableStore
from remedi_spark.models.base import BaseModel, FeatureSpec, load_model
from remedi_spark.models.registry import build_model
from remedi_spark.training.oof import ES, _fit, negative_sample, train_model_oof

FAST = {"num_iterations": 60, "learning_rate": 0.1, "min_data_in_leaf": 20}
SPEC = ModelSpec(name="lgbm", family="lgbm", backend="native", objective="logloss", feature_group=None, params=FAST)


@pytest.fixture(scope="module")
def world(spark):
    """60k rows (30k owners x 2 months), ~2% positives from a logistic signal; three folds by owner,
    a tenth of the owners in the early-stopping share, owners 27000+ held out (``split = test``)."""
    rng = np.random.default_rng(5)
    n = 60_000
    x = rng.normal(size=(n, 4))
    logit = 1.2 * x[:, 0] + np.where(x[:, 1] > 0.5, 0.8, 0.0) - 4.4
    users = np.arange(n) // 2
    pdf = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).assign(
        y=(rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), user_id=users,
        month=np.where(np.arange(n) % 2 == 0, "2024-06", "2024-07"))
    df = spark.createDataFrame(pdf)
    features = FeatureSpec.from_frame(df)
    encoded = features.encode(df, extra=("y",)).withColumns({
        "fold": (F.col("user_id") % 3).cast("int"),
        "split": F.when(F.col("user_id") >= 27_000, "test").otherwise("train"),
        ES: (F.col("user_id") % 10) == 0}).cache()
    encoded.count()
    return features, encoded


def _cfg(base_cfg, rate):
    return replace(base_cfg, training={"negative_rate": rate}, base_models={"early_stopping_rounds": 20})


def _keys(df):
    return set(map(tuple, df.select("user_id", "month").toPandas().to_numpy().tolist()))


def test_sample_keeps_every_positive_and_a_deterministic_share_of_the_negatives(spark, world):
    _, rows = world
    with_open = rows.unionByName(rows.limit(50).withColumn("month", F.lit("2024-08")).withColumn("y", F.lit(None)))
    kept = negative_sample(with_open, 0.1, seed=17)
    # every positive and every open-window row (label unknown) is kept
    assert kept.filter("y = 1").count() == rows.filter("y = 1").count() > 500
    assert kept.filter("y IS NULL").count() == 50
    negatives = rows.filter("y = 0").count()
    share = kept.filter("y = 0").count() / negatives
    assert abs(share - 0.1) < 4 * np.sqrt(0.1 * 0.9 / negatives), share
    # the same rows on every call and in any layout; another seed draws other negatives
    again = negative_sample(with_open.repartition(7).sortWithinPartitions(F.desc("user_id")), 0.1, seed=17)
    assert _keys(kept) == _keys(again)
    other = _keys(negative_sample(with_open, 0.1, seed=18))
    assert len(other) == pytest.approx(len(_keys(kept)), rel=0.1) and other != _keys(kept)
    # shares are nested: a larger rate keeps a superset of the negatives
    assert _keys(kept) <= _keys(negative_sample(with_open, 0.25, seed=17))
    assert negative_sample(with_open, 1.0, seed=17) is with_open


def _scored(model, rows):
    return model.predict(rows).join(rows.select("user_id", "month", "y"), ["user_id", "month"]).toPandas()


def test_the_correction_restores_calibration_and_survives_save_and_load(spark, world, base_cfg, tmp_path):
    features, rows = world
    fit_pool, test = rows.filter("split = 'train'"), rows.filter("split = 'test'")
    # the owners are split at random: a calibrated model's mean on the held-out rows is the fit rows' base
    # rate (the held-out rows' own rate differs from it by chance: 3000 owners)
    base_rate = fit_pool.agg(F.mean("y")).first()[0]
    full = _scored(_fit(SPEC, _cfg(base_cfg, 1.0), features, fit_pool), test)
    model = _fit(SPEC, _cfg(base_cfg, 0.1), features, fit_pool)
    assert model.info["train_positives"] == fit_pool.filter(f"y = 1 AND NOT {ES}").count()
    assert model.info["train_rows"] < 0.2 * fit_pool.filter(f"NOT {ES}").count()
    sampled = _scored(model, test)
    # the same trees without the correction: the sampled rows' prior, several times the population's
    uncorrected = _scored(model.set_negative_rate(1.0), test)
    model.set_negative_rate(0.1)
    assert uncorrected["p"].mean() > 4 * base_rate
    # corrected: calibrated on the full population, as the model fitted on every row is
    assert sampled["p"].mean() == pytest.approx(base_rate, rel=0.1)
    assert sampled["p"].mean() == pytest.approx(full["p"].mean(), rel=0.1)
    assert log_loss(sampled["y"], sampled["p"]) < log_loss(uncorrected["y"], uncorrected["p"]) - 0.05
    assert log_loss(sampled["y"], sampled["p"]) < log_loss(full["y"], full["p"]) * 1.05
    # the ranking is the model's own: the correction is monotone
    assert roc_auc_score(sampled["y"], sampled["p"]) == pytest.approx(roc_auc_score(uncorrected["y"],
                                                                                    uncorrected["p"]), abs=1e-9)
    assert roc_auc_score(sampled["y"], sampled["p"]) > roc_auc_score(full["y"], full["p"]) - 0.03
    # saved and loaded (as fusion's teacher and scoring load it): the rate travels in the sidecar
    model.save(spark, str(tmp_path / "m"))
    assert json.loads((tmp_path / "m" / "model.json").read_text())["info"]["negative_rate"] == 0.1
    reloaded = load_model(spark, str(tmp_path / "m"), base_cfg.base_models, [str(tmp_path)])
    merged = sampled.merge(_scored(reloaded, test), on=["user_id", "month"], suffixes=("", "_reloaded"))
    assert len(merged) == len(sampled)
    np.testing.assert_allclose(merged["p_reloaded"], merged["p"], rtol=0, atol=1e-12)


def test_rate_one_fits_the_model_it_fitted_before(world, base_cfg):
    """negative_rate 1.0 is the fit on every row: the same trees and predictions as a model fitted
    the way _fit did before the knob (every non-early-stopping row; early stopping on the share)."""
    features, rows = world
    pool = rows.filter("split = 'train' AND fold != 0")
    cfg = _cfg(base_cfg, 1.0)
    before = build_model(SPEC, cfg.base_models, features).fit(pool.filter(~F.col(ES)), pool.filter(F.col(ES)))
    now = _fit(SPEC, cfg, features, pool)
    assert now.negative_rate == 1.0
    trees = [m.artifact().split(b"\nparameters:")[0] for m in (before, now)]
    assert trees[0] == trees[1]
    scored = rows.filter("fold = 0")
    a, b = (m.predict(scored).toPandas().sort_values(["user_id", "month"], ignore_index=True) for m in (before, now))
    np.testing.assert_array_equal(a["p"].to_numpy(), b["p"].to_numpy())


def test_oof_predicts_every_row_with_a_sampled_fit_and_saves_its_rate(spark, world, base_cfg, tmp_path):
    features, rows = world
    cfg = replace(_cfg(base_cfg, 0.25), folds={"n_folds": 3})
    store = TableStore(spark, str(tmp_path / "t"))
    predictions, metrics = train_model_oof(spark, cfg, store, SPEC, rows)
    got = predictions.toPandas()
    # out of fold for every training row, the refit for every held-out row: none left out by the sampling
    assert len(got) == rows.count() and not got.duplicated(["user_id", "month"]).any()
    assert (got.loc[got["split"] == "train", "fold"] >= 0).all() and (got.loc[got["split"] == "test", "fold"] == -1).all()
    oof = {r["split"]: r for r in metrics}["oof"]
    assert oof["rows"] == rows.filter("split = 'train'").count() and oof["positives"] == rows.filter(
        "split = 'train' AND y = 1").count()
    labels = rows.select("user_id", "month", "y").toPandas()
    merged = got.drop(columns="y").merge(labels, on=["user_id", "month"])  # the labels of the rows themselves
    assert merged["p"].mean() == pytest.approx(merged["y"].mean(), rel=0.2)
    saved = load_model(spark, f"{store.root}/models/{SPEC.name}", cfg.base_models, [store.root])
    assert saved.negative_rate == 0.25


class _Constant(BaseModel):
    """p = 0.5 for every row: the correction alone decides what predict returns."""

    def fit(self, train, valid):
        return self

    def predict(self, df):
        return df.select("user_id", "month", F.lit(0.5).alias("p"))

    def predict_outputs(self, df, outputs=()):
        return self.predict(df)

    def artifact(self):
        return b""

    def _restore(self, spark, data):
        pass


class _Refined(_Constant):
    def predict(self, df):
        return super().predict(df)


@pytest.mark.parametrize("cls", [_Constant, _Refined])
def test_every_prediction_path_is_corrected_once(spark, cls):
    """A family whose predict calls predict_outputs (NeuralModel) or its parent's predict is corrected
    once: a model fitted on a quarter of the negatives that says 0.5 means odds 1:4, p = 0.2."""
    model = cls(SPEC, None, FeatureSpec(numeric=["f0"], categorical={})).set_negative_rate(0.25)
    df = spark.createDataFrame([(1, "2024-06", 0.0)], "user_id long, month string, f0 double")
    assert model.predict(df).first()["p"] == pytest.approx(0.2)
    assert model.predict_outputs(df).first()["p"] == pytest.approx(0.2)
    assert model.set_negative_rate(1.0).predict(df).first()["p"] == 0.5


def test_the_rate_is_a_share(base_cfg):
    assert base_cfg.training.negative_rate == 1.0
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="training.negative_rate"):
            replace(base_cfg, training={"negative_rate": bad})
    assert replace(base_cfg, training={"negative_rate": 1}).training.negative_rate == 1.0
