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
from remedi_spark.models.neural.distributed import run_with_retries, train_distributed
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


def _spec(family, epochs=2, **params):
    return ModelSpec(name=family, family=family, backend="torch", objective="logloss", feature_group=None,
                     params={"epochs": epochs, "batch_size": 256, "lr": 3e-3, "model": SMALL[family], **params})


def _scores(model, df):
    return model.predict(df).join(df.select("user_id", "y"), "user_id").toPandas().sort_values("user_id")


@pytest.mark.slow
def test_two_process_training_on_unequal_partitions_then_reload(spark, toy, base_cfg, tmp_path):
    features, train, valid, test = toy
    model = build_model(_spec("kdef"), base_cfg.base_models, features).fit(train, valid)
    assert model.info["steps_per_epoch"] == 8400 // (256 * 2)  # same number of batches on each rank
    before = _scores(model, test)
    assert roc_auc_score(before["y"], before["p"]) > 0.7
    model.save(spark, str(tmp_path / "kdef"))
    after = _scores(load_model(spark, str(tmp_path / "kdef"), base_cfg.base_models, [str(tmp_path)]), test)
    np.testing.assert_allclose(before["p"].to_numpy(), after["p"].to_numpy(), rtol=0, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mlp", "deepfm", "xdeepfm"])
def test_every_family_trains_and_scores_unseen_categories(spark, toy, base_cfg, family):
    features, train, valid, test = toy
    model = build_model(_spec(family, epochs=1), base_cfg.base_models, features).fit(train, valid)
    unseen = test.limit(50).withColumn("cat", F.lit(None).cast("double"))  # a category the map never saw
    scored = model.predict(unseen).toPandas()
    assert len(scored) == 50 and np.isfinite(scored["p"]).all() and scored["p"].between(0, 1).all()


@pytest.mark.parametrize("family", ["mlp", "deepfm", "xdeepfm", "kdef"])
def test_the_driver_launcher_learns_repeats_itself_and_reloads(spark, toy, base_cfg, tmp_path, family):
    features, train, valid, test = toy
    spec = _spec(family, epochs=2, launcher="driver")
    first = build_model(spec, base_cfg.base_models, features).fit(train, valid)
    assert first.info["steps_per_epoch"] == 8400 // 256  # one process: every row in each epoch
    before = _scores(first, test)
    assert roc_auc_score(before["y"], before["p"]) > 0.7
    again = _scores(build_model(spec, base_cfg.base_models, features).fit(train, valid), test)
    np.testing.assert_array_equal(before["p"].to_numpy(), again["p"].to_numpy())
    first.save(spark, str(tmp_path / family))
    after = _scores(load_model(spark, str(tmp_path / family), base_cfg.base_models, [str(tmp_path)]), test)
    np.testing.assert_allclose(before["p"].to_numpy(), after["p"].to_numpy(), rtol=0, atol=1e-7)
    unseen = test.limit(50).withColumn("cat", F.lit(None).cast("double"))  # a category the map never saw
    assert np.isfinite(first.predict(unseen).toPandas()["p"]).all()


def test_an_unknown_launcher_is_refused_before_training(spark, toy, base_cfg):
    features, train, valid, _ = toy
    with pytest.raises(ValueError, match="launcher must be 'distributor' or 'driver', got 'gpu'"):
        build_model(_spec("mlp", launcher="gpu"), base_cfg.base_models, features).fit(train, valid)


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


def test_a_failing_run_is_warned_about_and_run_again_then_its_cause_is_raised():
    outcomes = iter([{"error": "Traceback ...\nConnectionError: peer closed", "rank": "1"}, {"state": b"ok"}])
    with pytest.warns(RuntimeWarning, match=r"(?s)attempt 1 of 2, failed.*rank 1 raised.*peer closed"):
        assert run_with_retries(lambda: next(outcomes), retries=1, what="training of 'm'") == {"state": b"ok"}

    calls = []

    def launcher_fails():
        calls.append(1)
        raise RuntimeError("An error occurred\nRuntimeError: TorchDistributor failed during training.")

    with pytest.warns(RuntimeWarning), pytest.raises(
            RuntimeError, match=r"training of 'm' failed 3 time\(s\); the last time the launcher failed "
                                r"\(RuntimeError: TorchDistributor failed during training.\)"):
        run_with_retries(launcher_fails, retries=2, what="training of 'm'")
    assert len(calls) == 3


@pytest.mark.slow
def test_an_error_inside_the_training_worker_reaches_the_driver_with_its_traceback(spark, toy):
    features, train, valid, test = toy
    rows = train.select(F.array(*[F.col(c).cast("float") for c in ("f0", "f1", "f2")]).alias("dense"),
                        F.array(F.coalesce(F.col("cat").cast("long"), F.lit(0))).alias("cat"),
                        F.col("y").cast("float").alias("y"))
    valid_arrays = (np.zeros((4, 3), np.float32), np.zeros((4, 1), np.int64), np.array([0, 1, 0, 1], np.float32))
    params = {"num_processes": 2, "batch_size": 256, "seed": 1, "launch_retries": 0}
    with pytest.raises(RuntimeError, match=r"(?s)distributed training of 'mlp' failed 1 time\(s\); the last time "
                                           r"rank \d raised:\nTraceback.*ValueError: MLPConfig: unknown config "
                                           r"keys \['no_such_knob'\]"):
        train_distributed(spark, rows, "mlp", {"no_such_knob": 1}, [4], 3, params, valid_arrays)


def test_fewer_rows_than_a_batch_train_on_one_short_batch_instead_of_hanging():
    from remedi_spark.models.neural.loop import array_batches

    rng = np.random.default_rng(0)
    batches = array_batches(rng.normal(size=(5, 2)).astype(np.float32), np.zeros((5, 1), np.int64),
                            np.ones(5, np.float32), batch_size=64, seed=0)
    first, second = next(batches), next(batches)
    assert len(first.label) == len(second.label) == 5
    with pytest.raises(ValueError, match="no rows"):
        next(array_batches(np.zeros((0, 2), np.float32), np.zeros((0, 1), np.int64), np.zeros(0, np.float32), 8, 0))


@pytest.mark.parametrize("rows,world", [(3000, 1), (3000, 2), (150_000, 2), (30, 1)])
def test_min_steps_per_epoch_shrinks_the_batch_until_an_epoch_has_that_many_steps_per_rank(rows, world):
    from remedi_spark.models.neural.loop import epoch_batch_size

    params = {"batch_size": 1024, "min_steps_per_epoch": 40}
    size = epoch_batch_size(rows, params, world)
    assert 1 <= size <= 1024
    assert rows // (size * world) >= 40 or size == 1  # enough steps, unless one row a step is all there is
    assert epoch_batch_size(rows, {**params, "min_steps_per_epoch": 0}, world) == 1024  # off: as configured
