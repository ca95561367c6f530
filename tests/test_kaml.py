"""KAML: masked horizon loss by hand, unlabeled rows only in the ranking loss, the union of the heads,
in-process training with open windows, the ablation table, and on Spark: open-window folds,
2-process training on rows with unknown horizons, OOF and the study stage on synthetic data."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from remedi_spark.config import BootstrapSettings, ConfigError, ModelSpec
from remedi_spark.models.base import FeatureSpec
from remedi_spark.models.neural.base import Batch
from remedi_spark.models.neural.loop import make_module, predict_logits, train_in_process
from remedi_spark.models.neural.zoo.kaml import (KAML, KAMLConfig, complete_union_bce, masked_horizon_bce,
                                                 union_logit, unlabeled_rank_loss)
from remedi_spark.models.registry import build_model, needs_horizons
from remedi_spark.training.kaml_study import format_kaml_table, kaml_ablation_table

NAN = float("nan")
TINY = {"emb_dim": 4, "hidden": [16], "tower_hidden": [8], "dropout": 0.0}
PARAMS = {"epochs": 3, "batch_size": 256, "lr": 3e-3, "patience": 2, "grad_clip": 10.0, "embedding_l2": 1e-5,
          "num_processes": 1, "seed": 7}


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _bce(z: float, y: float) -> float:
    return _softplus(z) - y * z


# --------------------------------------------------------------------------------------------- losses


def test_masked_horizon_loss_equals_the_hand_computation():
    z = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.7, 0.1], [1.5, -2.0, 0.4]], dtype=torch.float64)
    h = torch.tensor([[1.0, 0.0, 0.0], [0.0, NAN, NAN], [NAN, NAN, NAN]], dtype=torch.float64)
    observed = [(0.5, 1), (-1.0, 0), (2.0, 0), (-0.3, 0)]  # row 2 has nothing observed
    expected = sum(_bce(zi, yi) for zi, yi in observed) / len(observed)
    assert masked_horizon_bce(z, h).item() == pytest.approx(expected, rel=1e-12)
    # the union BCE uses row 0 only (the one fully observed row): y = 1
    s = -sum(_softplus(v) for v in (0.5, -1.0, 2.0))
    union0 = math.log(1 - math.exp(s)) - s
    assert complete_union_bce(union_logit(z), h).item() == pytest.approx(_bce(union0, 1.0), rel=1e-9)
    # ranking: head 1 has one positive (row 0) and one unknown (row 2); heads 2, 3 have no positive
    assert unlabeled_rank_loss(z, h).item() == pytest.approx(_softplus(1.5 - 0.5), rel=1e-12)


def test_total_loss_is_the_weighted_sum_of_its_terms():
    model = KAML([3], 2, KAMLConfig(**TINY, rank_weight=0.3, union_weight=0.5))
    z = torch.tensor([[0.5, -1.0, 2.0], [-0.3, 0.7, 0.1], [1.5, -2.0, 0.4]])
    h = torch.tensor([[1.0, 0.0, 0.0], [0.0, NAN, NAN], [NAN, NAN, NAN]])
    batch = Batch(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long), horizons=h)
    terms = model.compute_loss({"logit": union_logit(z), "horizon_logits": z}, batch)
    assert terms["loss"].item() == pytest.approx(
        (terms["horizon_bce"] + 0.5 * terms["union_bce"] + 0.3 * terms["rank"]).item(), rel=1e-6)


def test_rows_without_an_observed_horizon_only_reach_the_ranking_loss():
    h = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, NAN], [NAN, NAN, NAN]])
    base = torch.tensor([[0.2, -0.4, 0.3], [-1.0, -0.5, 0.0], [0.1, 0.6, -0.2], [0.3, 0.3, 0.3]])
    for weight, row_gets_gradient in ((0.0, False), (0.2, True)):
        model = KAML([3], 2, KAMLConfig(**TINY, rank_weight=weight))
        z = base.clone().requires_grad_(True)
        batch = Batch(torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), horizons=h)
        terms = model.compute_loss({"logit": union_logit(z), "horizon_logits": z}, batch)
        terms["loss"].backward()
        assert bool(z.grad[3].abs().sum() > 0) is row_gets_gradient
        assert z.grad[:3].abs().sum() > 0
    # changing the unlabeled row's logits changes the ranking term and nothing else
    moved = base.clone()
    moved[3] = torch.tensor([5.0, -3.0, 2.0])
    before = model.compute_loss({"logit": union_logit(base), "horizon_logits": base}, batch)
    after = model.compute_loss({"logit": union_logit(moved), "horizon_logits": moved}, batch)
    assert after["horizon_bce"].item() == before["horizon_bce"].item()
    assert after["union_bce"].item() == before["union_bce"].item()
    assert after["rank"].item() != before["rank"].item()


def test_a_batch_without_any_label_gives_a_zero_loss_not_nan():
    z = torch.randn(4, 3, requires_grad=True)
    h = torch.full((4, 3), NAN)
    model = KAML([3], 2, KAMLConfig(**TINY))
    terms = model.compute_loss({"logit": union_logit(z), "horizon_logits": z},
                               Batch(torch.zeros(4, 2), torch.zeros(4, 1, dtype=torch.long), horizons=h))
    assert terms["loss"].item() == 0.0


# ---------------------------------------------------------------------------------------------- union


def test_union_is_a_probability_and_matches_the_product_rule():
    torch.manual_seed(0)
    z = torch.cat([torch.randn(500, 3) * 6, torch.tensor([[-80.0, -80.0, -80.0], [40.0, 40.0, 40.0],
                                                          [-80.0, 0.0, 80.0], [0.0, 0.0, 0.0]])]).double()
    p = torch.sigmoid(union_logit(z))
    assert torch.isfinite(union_logit(z)).all()
    assert ((p >= 0) & (p <= 1)).all()
    expected = 1 - torch.prod(1 - torch.sigmoid(z), dim=1)
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-12)


def test_union_is_monotone_in_each_head():
    torch.manual_seed(1)
    z = (torch.randn(300, 3) * 4).double().requires_grad_(True)
    union_logit(z).sum().backward()
    assert (z.grad > 0).all() and torch.isfinite(z.grad).all()
    for h in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[h] = 0.5
        assert (union_logit(z.detach() + step) > union_logit(z.detach())).all()


def test_union_gradients_stay_finite_at_extreme_logits():
    z = torch.tensor([[-200.0, -200.0, -200.0], [200.0, -200.0, 0.0], [1e-4, 1e-4, 1e-4]], requires_grad=True)
    union_logit(z).sum().backward()
    assert torch.isfinite(z.grad).all() and (z.grad >= 0).all()


# ---------------------------------------------------------------------------------------------- model


def _batch(n: int, h: torch.Tensor | None = None) -> Batch:
    return Batch(torch.randn(n, 3), torch.zeros(n, 1, dtype=torch.long), horizons=h)


def test_forward_shapes_and_hierarchy_switch():
    shared = KAML([4], 3, KAMLConfig(**TINY))
    independent = KAML([4], 3, KAMLConfig(**TINY, shared=False))
    out = shared(_batch(5))
    assert out["logit"].shape == (5,) and out["horizon_logits"].shape == (5, 3)
    # the longer heads read the previous head's hidden state only when shared
    assert shared.heads[1].tower.net[0].in_features == 16 + 8
    assert independent.heads[1].tower.net[0].in_features == 16
    assert shared.carry is not None and independent.carry is None
    # heads start near a 1% monthly rate
    shared.eval()
    p = torch.sigmoid(shared(_batch(64))["horizon_logits"])
    assert p.mean().item() < 0.05


def test_config_is_checked_when_the_model_is_built():
    with pytest.raises(ValueError, match="tower_hidden"):
        KAML([4], 3, KAMLConfig(**{**TINY, "tower_hidden": []}))
    with pytest.raises(ValueError, match="rank_weight"):
        KAML([4], 3, KAMLConfig(**TINY, rank_weight=-1.0))
    with pytest.raises(ValueError, match="unknown config keys"):
        make_module("kaml", {**TINY, "heads": 4}, [4], 3)
    model = KAML([4], 3, KAMLConfig(**TINY))
    b = _batch(4)
    with pytest.raises(ValueError, match="horizons"):
        model.compute_loss(model(b), b)


def _spec(family: str, backend: str = "torch") -> ModelSpec:
    return ModelSpec(name=family, family=family, backend=backend, objective="logloss", feature_group=None, params={})


def test_registry_knows_which_models_need_horizons():
    spec = _spec
    assert needs_horizons(spec("kaml"))
    assert not any(needs_horizons(spec(f)) for f in ("mlp", "deepfm", "xdeepfm", "kdef"))
    assert not needs_horizons(spec("lgbm", "native"))


def _world(n: int, seed: int, open_share: float = 0.0):
    """Rows whose horizons come from one hazard; ``open_share`` of them have 1-3 unknown horizons."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    ids = rng.integers(0, 3, size=(n, 1)).astype(np.int64)
    logit = 1.5 * dense[:, 0] + (ids[:, 0] == 2) - 2.5
    h = (rng.random((n, 3)) < 1 / (1 + np.exp(-logit[:, None]))).astype(np.float32)
    unknown = np.where(rng.random(n) < open_share, rng.integers(1, 4, n), 0)  # number of unknown horizons
    h[np.arange(3)[None, :] >= 3 - unknown[:, None]] = np.nan
    y = np.where(np.nan_to_num(h, nan=0).max(axis=1) == 1, 1.0, np.where(unknown > 0, np.nan, 0.0))
    return dense, ids, y.astype(np.float32), h


def test_trains_in_process_on_rows_with_open_windows():
    train = _world(6000, 1, open_share=0.4)
    assert np.isnan(train[3]).all(axis=1).any() and np.isnan(train[2]).any()
    valid, test = _world(1500, 2)[:3], _world(3000, 3)
    model = make_module("kaml", TINY, [4], 3, seed=7)
    result = train_in_process(model, train, PARAMS, valid)
    model.load_state_dict(result["state"])
    p = 1 / (1 + np.exp(-predict_logits(model, test[0], test[1])))
    assert roc_auc_score(test[2], p) > 0.75
    with pytest.raises(ValueError, match="horizon labels"):
        train_in_process(make_module("kaml", TINY, [4], 3), train[:3], PARAMS, valid)


def test_ablation_table_has_every_variant():
    complete = _world(4000, 4)
    opened = _world(3000, 5, open_share=1.0)
    test = _world(2000, 7)
    table = kaml_ablation_table(complete, opened, _world(1000, 6), test, [4], 3, TINY,
                                {**PARAMS, "epochs": 1}, k_fraction=0.1,
                                bootstrap_settings=BootstrapSettings(replicates=200, seed=3, level=0.9))
    assert list(table["variant"]) == ["full", "without_open_windows", "without_rank_loss", "independent_heads",
                                      "mlp_baseline"]
    assert table.set_index("variant").loc["full", "open_rows"] == 3000
    assert table.set_index("variant").loc["without_open_windows", "train_rows"] == 4000
    assert table["auc"].between(0.6, 1.0).all()
    assert table["auc_h1"].isna().tolist() == [False, False, False, False, True]
    # every variant is compared with the full model on the same rows, with a paired interval
    assert table["reference"].tolist() == [None, "full", "full", "full", "full"]
    assert (table["auc_ci_low"] <= table["auc"]).all() and (table["auc"] <= table["auc_ci_high"]).all()
    compared = table.iloc[1:]
    assert ((compared["auc_diff_ci_low"] <= compared["auc_diff"]) & (compared["auc_diff"] <= compared["auc_diff_ci_high"])).all()
    text = format_kaml_table(table.to_dict("records"))
    assert "| independent_heads |" in text and f"{int(test[2].sum()):,} positive held-out rows" in text
    with pytest.raises(ValueError, match="fully labelled"):
        kaml_ablation_table(opened, opened, _world(100, 6), _world(100, 7), [4], 3, TINY, PARAMS, 0.1,
                            bootstrap_settings=BootstrapSettings(replicates=10, seed=3, level=0.9))


# ---------------------------------------------------------------------------------------------- Spark


@pytest.fixture(scope="module")
def open_toy(spark):
    """Four months of 3,000 rows each: the newest has no observed horizon, the two before it one or two."""
    rng = np.random.default_rng(11)
    frames = []
    for m, month in enumerate(["2024-06", "2024-07", "2024-08", "2024-09"]):
        n = 3000
        x = rng.normal(size=(n, 3))
        cat = rng.choice(["a", "b", "c"], n)
        logit = 1.5 * x[:, 0] + (cat == "c") - 2.5
        h = (rng.random((n, 3)) < 1 / (1 + np.exp(-logit[:, None]))).astype(float)
        known = 3 - m  # horizons observed: 2024-06 all three, -07 two, -08 one, -09 none
        h[:, known:] = np.nan
        y = np.where(np.nan_to_num(h).max(axis=1) == 1, 1.0, np.where(known < 3, np.nan, 0.0))
        frames.append(pd.DataFrame(x, columns=["f0", "f1", "f2"]).assign(
            cat=cat, user_id=np.arange(n) + 10_000 * m, month=month, y=y,
            y_h1=h[:, 0], y_h2=h[:, 1], y_h3=h[:, 2]))
    pdf = pd.concat(frames, ignore_index=True)
    df = spark.createDataFrame(pdf).select(
        "user_id", "month", "f0", "f1", "f2", "cat", F.col("y").cast("int"),
        *[F.col(c).cast("int").alias(c) for c in ("y_h1", "y_h2", "y_h3")])
    features = FeatureSpec.from_frame(df.filter(F.col("month") == "2024-06"))
    encoded = features.encode(df, extra=("y", "y_h1", "y_h2", "y_h3")).cache()
    labelled = encoded.filter(F.col("month") == "2024-06")
    train = encoded.filter((F.col("month") != "2024-06") | (F.col("user_id") % 10 < 6)).repartition(2)
    valid = labelled.filter(F.col("user_id") % 10 == 6)
    test = labelled.filter(F.col("user_id") % 10 > 6)
    return features, train, valid, test


@pytest.mark.slow
def test_two_process_training_on_open_windows_end_to_end(spark, open_toy, base_cfg):
    features, train, valid, test = open_toy
    assert train.filter(F.col("y").isNull()).count() > 0  # rows with unknown labels reach training
    spec = ModelSpec(name="kaml", family="kaml", backend="torch", objective="logloss", feature_group=None,
                     params={"epochs": 2, "batch_size": 256, "lr": 3e-3, "model": TINY})
    model = build_model(spec, base_cfg.base_models, features).fit(train, valid)
    scored = model.predict(test).join(test.select("user_id", "y"), "user_id").toPandas()
    assert scored["p"].between(0, 1).all()
    assert roc_auc_score(scored["y"], scored["p"]) > 0.7
    with pytest.raises(ValueError, match="null 'y'"):
        build_model(spec, base_cfg.base_models, features).fit(train, train)


def test_open_window_folds_leave_every_evaluation_on_labelled_rows(spark, cfg_at):
    from remedi_spark.folds.assign import assign_folds
    from remedi_spark.io.store import TableStore

    cfg = cfg_at(folds={"include_open_windows": True})
    store = TableStore(spark, cfg.tables.root)
    rows = []
    for u in range(1, 301):
        for i, m in enumerate(["2024-06", "2024-07", "2024-08", "2024-09"]):
            complete = i < 2
            y = (1 if u % 11 == 0 and i == 0 else 0) if complete else (1 if u % 17 == 0 and i == 2 else None)
            h1 = 0 if complete else (1 if u % 17 == 0 and i == 2 else (0 if i == 2 else None))
            rows.append((u, m, y, h1, 0 if complete else None, 0 if complete else None, complete, None, None,
                         float(u % 7)))
    df = spark.createDataFrame(rows, "user_id long, month string, y int, y_h1 int, y_h2 int, y_h3 int, "
                                     "label_complete boolean, y_engage int, y_visit int, f double")
    store.write_months(df, "features", ["2024-06", "2024-07", "2024-08", "2024-09"])
    summary = assign_folds(spark, cfg, store)
    folds = store.read("folds").toPandas()
    labelled, opened = folds[folds.split != "open"], folds[folds.split == "open"]
    assert set(labelled.month) == {"2024-06", "2024-07"} and set(opened.month) == {"2024-08", "2024-09"}
    train_users = set(labelled.loc[labelled.split == "train", "user_id"])
    assert set(opened.user_id) == train_users  # held-out users' open rows are never written
    assert summary["open_rows"] == len(opened) == 2 * len(train_users)
    assert (opened.oot_split == "train").all() and opened.y.isna().any() and (opened.y == 1).any()
    fold_of = labelled.groupby("user_id")["fold"].first()
    assert (opened.set_index("user_id")["fold"] == fold_of.reindex(opened.user_id).to_numpy()).all()
    # the labelled part is exactly what the default writes
    assign_folds(spark, cfg_at(tables={"root": cfg.tables.root}), store)
    default = store.read("folds").toPandas()
    key = ["user_id", "month"]
    pd.testing.assert_frame_equal(default.sort_values(key).reset_index(drop=True),
                                  labelled.sort_values(key).reset_index(drop=True), check_dtype=False)


@pytest.mark.slow  # train-base and the five-variant KAML study on a copy of the world
def test_oof_and_study_on_synthetic_data_with_open_windows(spark, world, tmp_path):
    """The shared world's features (tests/world.py), copied to this test's root, folded with open windows."""
    from remedi_spark.config import replace
    from remedi_spark.io.store import TableStore
    from remedi_spark.pipeline import run_stage
    from remedi_spark.training.kaml_study import run_kaml_study
    from remedi_spark.training.oof import train_base_models
    from tests.world import copy_tables

    models = [{"name": "kaml", "family": "kaml", "backend": "torch", "objective": "logloss", "feature_group": "core",
               "params": {"epochs": 1, "batch_size": 512, "launcher": "driver", "model": TINY}}]
    cfg = copy_tables(spark, world, tmp_path / "t", tables=("features",),
                      folds={"n_folds": 2, "include_open_windows": True}, base_models={"models": models})
    run_stage(spark, cfg, "folds")
    store = TableStore(spark, cfg.tables.root)
    folds = store.read("folds")
    assert folds.filter(F.col("split") == "open").count() > 0
    summary = train_base_models(spark, cfg, store)
    assert 0.0 <= summary["models"]["kaml"]["test"]["auc"] <= 1.0  # ~10 held-out positives: no quality bar here
    # the open-window rows postdate the evaluation month: train-base leaves them out and says so
    assert summary["evaluation_month"] and "open-window" in summary["notes"][0]
    oof = store.read("oof_predictions")
    labelled = folds.filter(F.col("split") != "open").select("user_id", "month")
    assert oof.count() == labelled.count() == oof.join(labelled, ["user_id", "month"]).count()
    study = run_kaml_study(spark, cfg, store)
    written = store.read("kaml_study").toPandas()
    assert len(written) == len(study["table"]) == 5 and study["rows"]["open"] > 0
    assert written["positives"].nunique() == 1 and written["auc_ci_low"].notna().all()
    with pytest.raises(ConfigError, match="kaml_study.model"):
        run_kaml_study(spark, replace(cfg, kaml_study={"model": "nope"}), store)
