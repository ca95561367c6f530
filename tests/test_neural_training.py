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
    # min_steps_per_epoch (default 50) shrinks the batch from 256 to 8400 // (2 ranks x 50) = 84; the same
    # number of batches on each rank
    assert model.info["batch_size"] == 84 and model.info["steps_per_epoch"] == 8400 // (84 * 2) == 50
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
    assert first.info["steps_per_epoch"] == 8400 // first.info["batch_size"]  # one process: every row, every epoch
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


def _loop_run(metrics, **params):
    """fit_epochs on a tiny MLP with a scripted validation (one {"auc", "logloss"} per epoch)."""
    from remedi_spark.models.neural.loop import array_batches, fit_epochs, make_module

    rng = np.random.default_rng(0)
    dense, ids = rng.normal(size=(64, 3)).astype(np.float32), np.zeros((64, 1), np.int64)
    y = (dense[:, 0] > 0).astype(np.float32)
    model = make_module("mlp", {"emb_dim": 2, "hidden": [4]}, [2], 3, seed=0, base_rate=0.5)
    scripted = iter(metrics)
    base = {"epochs": len(metrics), "lr": 0.01, "patience": 9, "grad_clip": 10.0, "warmup_steps": 0, **params}
    return fit_epochs(model, model, array_batches(dense, ids, y, 16, 0), 4, base, lambda m: next(scripted))


def test_the_learning_rate_falls_only_after_lr_patience_epochs_without_a_better_validation_logloss():
    flat = [{"auc": 0.60 + 0.01 * e, "logloss": 0.5} for e in range(6)]  # AUC keeps rising: no early stop
    curve = _loop_run(flat, lr_patience=2)["curve"]
    # the lr each epoch trained at: one flat epoch (2) changes nothing, the second flat one (3) cuts it,
    # and the count starts again: epochs 4 and 5 are the next two flat ones
    assert [c["lr"] for c in curve] == pytest.approx([0.01, 0.01, 0.01, 0.001, 0.001, 0.0001])
    better = [{"auc": 0.6, "logloss": 0.5 - 0.01 * e} for e in range(5)]  # log loss improves: never cut,
    assert {c["lr"] for c in _loop_run(better, lr_patience=2)["curve"]} == {0.01}  # though AUC is flat


def test_warm_up_raises_the_learning_rate_linearly_and_plateaus_wait_for_it():
    flat = [{"auc": 0.6, "logloss": 0.5}] * 5
    curve = _loop_run(flat, warmup_steps=10, lr_patience=1)["curve"]  # 4 steps an epoch
    # end of epoch 1: step 4 of 10; epoch 2: 8 of 10 (its flat epoch does not count); epoch 3 reaches the
    # peak and is the plateau's first reference; epoch 4 is flat at the peak rate, so epoch 5 trains at 0.1x
    assert [c["lr"] for c in curve] == pytest.approx([0.004, 0.008, 0.01, 0.01, 0.001])


def test_early_stopping_keeps_the_best_epoch_and_records_the_validation_curve():
    metrics = [{"auc": 0.6, "logloss": 0.6}, {"auc": 0.7, "logloss": 0.5}, {"auc": 0.65, "logloss": 0.45},
               {"auc": 0.66, "logloss": 0.44}, {"auc": 0.9, "logloss": 0.1}]
    result = _loop_run(metrics, patience=2, stop_metric="auc")
    assert result["epochs"] == 4 and result["best_epoch"] == 2  # two epochs without a better AUC
    assert (result["valid_auc"], result["valid_logloss"]) == (0.7, 0.5)
    assert [(c["epoch"], c["valid_auc"], c["valid_logloss"]) for c in result["curve"]] == [
        (1, 0.6, 0.6), (2, 0.7, 0.5), (3, 0.65, 0.45), (4, 0.66, 0.44)]
    assert all(np.isfinite(c["train_loss"]) for c in result["curve"])


def test_early_stopping_watches_the_log_loss_by_default_and_the_auc_when_asked():
    # AUC peaks at epoch 1 and falls while the log loss keeps improving until epoch 3
    metrics = [{"auc": 0.9, "logloss": 0.030}, {"auc": 0.85, "logloss": 0.022}, {"auc": 0.8, "logloss": 0.021},
               {"auc": 0.95, "logloss": 0.025}, {"auc": 0.95, "logloss": 0.026}, {"auc": 0.99, "logloss": 0.001}]
    by_logloss = _loop_run(metrics, patience=2)  # the default
    assert (by_logloss["best_epoch"], by_logloss["epochs"]) == (3, 5)
    assert (by_logloss["valid_auc"], by_logloss["valid_logloss"]) == (0.8, 0.021)
    by_auc = _loop_run(metrics, patience=2, stop_metric="auc")  # epoch 1, stopped after epoch 3
    assert (by_auc["best_epoch"], by_auc["epochs"]) == (1, 3)
    with pytest.raises(ValueError, match="stop_metric"):
        _loop_run(metrics, stop_metric="precision")


@pytest.mark.slow  # a two-process TorchDistributor launch
def test_distributed_training_agrees_on_both_validation_numbers_and_starts_at_the_base_rate(spark, toy):
    """Rank 0's curve holds the AUC and log loss it broadcast; its best epoch's numbers are those of the
    returned weights; the output bias started at the training rows' base rate."""
    import io

    import torch

    from remedi_spark.models.neural.loop import make_module, validation_metrics

    features, train, valid, test = toy
    rows = train.select(F.array(*[F.col(c).cast("float") for c in ("f0", "f1", "f2")]).alias("dense"),
                        F.array(F.coalesce(F.col("cat").cast("long"), F.lit(0))).alias("cat"),
                        F.col("y").cast("float").alias("y"))
    v = valid.toPandas()
    arrays = (v[["f0", "f1", "f2"]].to_numpy(np.float32), v[["cat"]].fillna(0).to_numpy(np.int64),
              v["y"].to_numpy(np.float32))
    params = {"num_processes": 2, "batch_size": 256, "seed": 1, "launch_retries": 1, "epochs": 3, "lr": 3e-3,
              "patience": 2, "grad_clip": 10.0, "min_steps_per_epoch": 10}
    cfg = {"emb_dim": 4, "hidden": [16]}
    result = train_distributed(spark, rows, "mlp", cfg, [4], 3, params, arrays)
    assert result["base_rate"] == pytest.approx(train.agg(F.avg("y")).first()[0], rel=1e-6)
    assert len(result["curve"]) == result["epochs"] and all(
        np.isfinite(c["valid_auc"]) and np.isfinite(c["valid_logloss"]) for c in result["curve"])
    model = make_module("mlp", cfg, [4], 3)
    model.load_state_dict(torch.load(io.BytesIO(result["state"]), weights_only=True))
    again = validation_metrics(model, arrays)
    assert again["auc"] == pytest.approx(result["valid_auc"], abs=1e-9) and again["auc"] > 0.7
    assert again["logloss"] == pytest.approx(result["valid_logloss"], rel=1e-6)
