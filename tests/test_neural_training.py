"""Neural models end to end on Spark: 2-process TorchDistributor on Petastorm with unequal partitions,
identical predictions after reload, unseen categories score."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from remedi_spark.config import ModelSpec
from remedi_spark.models.base import FeatureSpec, load_model
from remedi_spark.models.registry import build_model

SMALL = {"mlp": {"emb_dim": 4, "hidden": [16]}, "deepfm": {"emb_dim": 4, "hidden": [16]},
         "xdeepfm": {"emb_dim": 4, "hidden": [16], "cin_layers": [4]},
         "kdef": {"emb_dim": 4, "subnets": ["mlp", "cross", "cin"], "hidden": [16], "cin_layers": [4]}}


@pytest.fixture(scope="module")
def toy(spark):
    rng = np.random.default_rng(3)
    n = 12_000
    x = rng.normal(size=(n, 3))
    cat = rng.choice(["a", "b", "c"], n)
    logit = 2.0 * x[:, 0] + (cat == "c") * 1.0 - 2.5
    pdf = pd.DataFrame(x, columns=["f0", "f1", "f2"]).assign(
        cat=cat, y=(rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int), user_id=np.arange(n), month="2024-06")
    df = spark.createDataFrame(pdf)
    features = FeatureSpec.from_frame(df)
    encoded = features.encode(df, extra=("y",))
    part = F.col("user_id") % 10
    # very unequal partitions: one holds 100 rows, the other the rest
    train = encoded.filter(part < 7)
    train = train.filter("user_id < 100").coalesce(1).unionByName(train.filter("user_id >= 100").coalesce(1))
    return features, train, encoded.filter(part == 7).cache(), encoded.filter(part > 7).cache()


def _spec(family, epochs=2):
    return ModelSpec(name=family, family=family, backend="torch", objective="logloss", feature_group=None,
                     params={"epochs": epochs, "batch_size": 256, "lr": 3e-3, "model": SMALL[family]})


def _scores(model, df):
    return model.predict(df).join(df.select("user_id", "y"), "user_id").toPandas().sort_values("user_id")


def test_two_process_training_on_unequal_partitions_then_reload(spark, toy, base_cfg, tmp_path):
    features, train, valid, test = toy
    model = build_model(_spec("kdef"), base_cfg.base_models, features).fit(train, valid)
    assert model.info["steps_per_epoch"] == 8400 // (256 * 2)  # same number of batches on each rank
    before = _scores(model, test)
    assert roc_auc_score(before["y"], before["p"]) > 0.7
    model.save(spark, str(tmp_path / "kdef"))
    after = _scores(load_model(spark, str(tmp_path / "kdef"), base_cfg.base_models, [str(tmp_path)]), test)
    np.testing.assert_allclose(before["p"].to_numpy(), after["p"].to_numpy(), rtol=0, atol=1e-7)


@pytest.mark.parametrize("family", ["mlp", "deepfm", "xdeepfm"])
def test_every_family_trains_and_scores_unseen_categories(spark, toy, base_cfg, family):
    features, train, valid, test = toy
    model = build_model(_spec(family, epochs=1), base_cfg.base_models, features).fit(train, valid)
    unseen = test.limit(50).withColumn("cat", F.lit(None).cast("double"))  # a category the map never saw
    scored = model.predict(unseen).toPandas()
    assert len(scored) == 50 and np.isfinite(scored["p"]).all() and scored["p"].between(0, 1).all()


def test_the_default_petastorm_cache_dir_is_removed_when_the_process_exits():
    code = """
from remedi_spark.models.neural.distributed import CACHE_CONF, ensure_cache_dir
class Conf(dict):
    def set(self, key, value): self[key] = value
class Spark: conf = Conf()
ensure_cache_dir(Spark)
path = Spark.conf[CACHE_CONF][len("file://"):]
open(path + "/leftover", "w").close()
print(path)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert path.startswith("/") and "remedi-petastorm-" in path
    assert not os.path.exists(path)
