"""HM3: the conditional-probability rule on hand-made heads, masked auxiliary losses, funnel labels from
raw activity on a hand-built world, labels never among the inputs, and on Spark: OOF training with and
without auxiliary tasks, the funnel scores and the ablation study on synthetic data."""
import math

import numpy as np
import pytest
import torch
from pyspark.sql import functions as F

from remedi_spark.config import BootstrapSettings, ConfigError, ModelSpec
from remedi_spark.features.build import FUNNEL_LABELS, build_features
from remedi_spark.io.store import TableStore
from remedi_spark.models.base import NOT_FEATURES, FeatureSpec
from remedi_spark.models.neural.base import Batch
from remedi_spark.models.neural.loop import make_module, train_in_process
from remedi_spark.models.neural.zoo.hm3 import HM3, HM3Config, funnel_logits, masked_bce, mixture_log_probs
from remedi_spark.models.registry import aux_labels
from remedi_spark.months import month_range
from remedi_spark.training.hm3_study import format_hm3_table, hm3_ablation_table
from tests.tiny import activity, frame, owner, purchase

NAN = float("nan")
TINY = {"emb_dim": 4, "hidden": [16], "tower_hidden": [8], "dropout": 0.0}
PARAMS = {"epochs": 2, "batch_size": 256, "lr": 3e-3, "patience": 2, "grad_clip": 10.0, "embedding_l2": 1e-5,
          "num_processes": 1, "seed": 7}


def _sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _bce(z: float, y: float) -> float:
    return math.log1p(math.exp(z)) - y * z


# --------------------------------------------------------------------------------------------- the rule


def test_combined_probability_is_the_conditional_probability_rule_on_hand_made_heads():
    rows = [(0.3, 1.2, -2.0, 0.5, -4.0), (-1.0, -0.5, 0.7, -3.0, 2.0), (2.5, 0.0, 0.0, 0.0, 0.0)]
    heads = {n: torch.tensor([r[i] for r in rows], dtype=torch.float64) for i, n in enumerate(
        ("engage", "visit_given_engage", "visit_given_no_engage", "buy_given_visit", "buy_given_no_visit"))}
    z = funnel_logits(heads)
    for i, (e, ve, vn, bv, bn) in enumerate(rows):
        pe = _sig(e)
        pv = pe * _sig(ve) + (1 - pe) * _sig(vn)
        pb = pv * _sig(bv) + (1 - pv) * _sig(bn)
        assert torch.sigmoid(z["engage"][i]).item() == pytest.approx(pe, rel=1e-12)
        assert torch.sigmoid(z["visit"][i]).item() == pytest.approx(pv, rel=1e-12)
        assert torch.sigmoid(z["buy"][i]).item() == pytest.approx(pb, rel=1e-12)


def test_combined_probability_stays_in_0_1_with_finite_logits_and_gradients_at_extremes():
    torch.manual_seed(0)
    z = torch.cat([torch.randn(400, 5) * 8, torch.tensor([[-90.0] * 5, [90.0] * 5, [90.0, -90.0, 90.0, -90.0, 90.0],
                                                         [0.0] * 5])]).double().requires_grad_(True)
    names = ("engage", "visit_given_engage", "visit_given_no_engage", "buy_given_visit", "buy_given_no_visit")
    out = funnel_logits({n: z[:, i] for i, n in enumerate(names)})
    for key in ("visit", "buy"):
        assert torch.isfinite(out[key]).all()
        p = torch.sigmoid(out[key])
        assert ((p >= 0) & (p <= 1)).all()
    out["buy"].sum().backward()
    assert torch.isfinite(z.grad).all()
    # P(b) lies between its two branches: a mixture, never outside them
    pb = torch.sigmoid(out["buy"].detach())
    lo = torch.minimum(torch.sigmoid(z[:, 3]), torch.sigmoid(z[:, 4])).detach()
    hi = torch.maximum(torch.sigmoid(z[:, 3]), torch.sigmoid(z[:, 4])).detach()
    assert ((pb >= lo - 1e-12) & (pb <= hi + 1e-12)).all()


def test_mixture_log_probs_are_complementary():
    w = torch.tensor([0.2, 0.9], dtype=torch.float64)
    log_p, log_not_p = mixture_log_probs(w.log(), (1 - w).log(), torch.tensor([1.0, -2.0], dtype=torch.float64),
                                         torch.tensor([-1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(log_p.exp() + log_not_p.exp(), torch.ones(2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------- losses


def test_auxiliary_losses_are_masked_where_the_label_is_unknown():
    z = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64)
    y = torch.tensor([1.0, NAN, 0.0, NAN], dtype=torch.float64)
    assert masked_bce(z, y).item() == pytest.approx((_bce(0.5, 1) + _bce(2.0, 0)) / 2, rel=1e-12)
    assert masked_bce(z, torch.full((4,), NAN, dtype=torch.float64)).item() == 0.0


def _batch(n: int, aux: torch.Tensor | None) -> Batch:
    torch.manual_seed(3)
    return Batch(torch.randn(n, 3), torch.zeros(n, 1, dtype=torch.long), torch.tensor([1.0, 0.0, 0.0, 1.0][:n]),
                 aux=aux)


def test_total_loss_is_buy_bce_plus_weighted_auxiliary_terms():
    aux = torch.tensor([[1.0, 1.0], [0.0, NAN], [NAN, 0.0], [1.0, 0.0]])
    model = HM3([3], 3, HM3Config(**TINY, aux_weight=0.3))
    terms = model.compute_loss(model(_batch(4, aux)), _batch(4, aux))
    assert terms["loss"].item() == pytest.approx(
        (terms["buy_bce"] + 0.3 * (terms["engage_bce"] + terms["visit_bce"])).item(), rel=1e-6)
    # changing an unknown auxiliary label changes nothing
    other = aux.clone()
    other[1, 1] = 1.0
    other[2, 0] = 1.0
    moved = model.compute_loss(model(_batch(4, aux)), _batch(4, torch.where(torch.isnan(aux), aux, other)))
    assert moved["loss"].item() == pytest.approx(terms["loss"].item(), rel=1e-7)


def test_without_auxiliary_tasks_the_loss_is_the_purchase_bce_and_needs_no_aux_labels():
    model = HM3([3], 3, HM3Config(**TINY, aux_weight=0.0))
    b = _batch(4, None)
    terms = model.compute_loss(model(b), b)
    assert terms["loss"].item() == terms["buy_bce"].item() and terms["engage_bce"].item() == 0.0
    with pytest.raises(ValueError, match="Batch.aux"):
        full = HM3([3], 3, HM3Config(**TINY))
        full.compute_loss(full(b), b)


def test_forward_outputs_and_the_flat_ablation():
    b = _batch(4, None)
    hier = HM3([3], 3, HM3Config(**TINY)).eval()
    flat = HM3([3], 3, HM3Config(**TINY, hierarchical=False)).eval()
    out = hier(b)
    assert set(hier.heads) == {"engage", "visit_given_engage", "visit_given_no_engage", "buy_given_visit",
                               "buy_given_no_visit"}
    assert set(flat.heads) == {"engage", "visit", "buy"}
    assert out["p_visit"].shape == (4,) and "p_buy_given_visit" in out
    pe, pv = out["p_engage"], out["p_visit"]
    torch.testing.assert_close(pv, pe * out["p_visit_given_engage"] + (1 - pe) * out["p_visit_given_no_engage"])
    torch.testing.assert_close(torch.sigmoid(out["logit"]),
                               pv * out["p_buy_given_visit"] + (1 - pv) * out["p_buy_given_no_visit"])
    fo = flat(b)
    torch.testing.assert_close(fo["logit"], flat.heads["buy"](flat.trunk(flat.embedding(b.dense, b.cat_ids)
                                                                             .flatten(1))).squeeze(-1))
    assert torch.sigmoid(out["logit"]).mean().item() < 0.05  # heads start near plausible funnel rates
    with pytest.raises(ValueError, match="aux_weight"):
        HM3([3], 3, HM3Config(**TINY, aux_weight=-1.0))


def test_registry_and_in_process_training_need_the_auxiliary_labels():
    spec = ModelSpec(name="hm3", family="hm3", backend="torch", objective="logloss", feature_group=None, params={})
    assert aux_labels(spec) == ("y_engage", "y_visit")
    assert aux_labels(ModelSpec(name="k", family="kaml", backend="torch", objective="logloss",
                                feature_group=None, params={})) == ()
    rng = np.random.default_rng(0)
    dense, ids = rng.normal(size=(600, 3)).astype(np.float32), np.zeros((600, 1), dtype=np.int64)
    y = (rng.random(600) < 0.1).astype(np.float32)
    with pytest.raises(ValueError, match="auxiliary labels"):
        train_in_process(make_module("hm3", TINY, [3], 3), (dense, ids, y), PARAMS, (dense, ids, y))


def _funnel_world(n: int, seed: int):
    """engage → visit → buy: x0 drives engagement, engagement drives visits, visits drive buying."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    ids = rng.integers(0, 3, size=(n, 1)).astype(np.int64)
    e = rng.random(n) < 1 / (1 + np.exp(-(1.5 * dense[:, 0] - 1)))
    v = rng.random(n) < np.where(e, 0.4, 0.05)
    b = rng.random(n) < np.where(v, 0.25 + 0.1 * (ids[:, 0] == 2), 0.01)
    aux = np.stack([e, v], axis=1).astype(np.float32)
    aux[rng.random(n) < 0.1, 0] = np.nan  # some unknown auxiliary labels
    return dense, ids, b.astype(np.float32), aux


def test_ablation_table_has_every_variant_and_the_heads_learn_their_labels():
    table = hm3_ablation_table(_funnel_world(6000, 1), _funnel_world(1500, 2), _funnel_world(3000, 3), [4], 3,
                               TINY, PARAMS, k_fraction=0.1,
                               bootstrap_settings=BootstrapSettings(replicates=200, seed=3, level=0.9))
    t = table.set_index("variant")
    assert list(table["variant"]) == ["full", "without_aux", "flat_heads"]
    assert bool(t.loc["full", "hierarchical"]) and not bool(t.loc["flat_heads", "hierarchical"])
    assert t.loc["without_aux", "aux_weight"] == 0.0
    assert table["auc"].between(0.6, 1.0).all()
    assert t.loc["full", "auc_visit"] > 0.6 and t.loc["full", "auc_engage"] > 0.6
    assert t["reference"].tolist() == [None, "full", "full"]
    assert (t["auc_ci_low"] <= t["auc"]).all() and (t["auc"] <= t["auc_ci_high"]).all()
    assert "| flat_heads | flat |" in format_hm3_table(table.to_dict("records"))


# -------------------------------------------------------------------------------- labels from raw activity

MONTHS = month_range("2024-03", "2024-10")


@pytest.fixture
def funnel_world(spark, cfg_at):
    cfg = cfg_at()
    store = TableStore(spark, cfg.tables.root)
    store.write_table(frame(spark, "owners", [owner(1), owner(2), owner(3)]), "owners")
    rows = []
    for m in MONTHS:
        # user 1: one media-site visit a month, ten in 2024-08 (a surge over its usual level)
        rows.append(activity(1, m, web_query_cnt_s1=10 if m == "2024-08" else 1))
        # user 2: heavy but steady online (never a surge); a service-only visit in 07, a shopping visit in 09
        visits = {"2024-07": (1, 1), "2024-09": (2, 1)}.get(m, (0, 0))
        rows.append(activity(2, m, web_query_cnt_s1=8, analysis_cnt=2,
                             visit_days=visits[0], service_visit_cnt=visits[1]))
    # user 3: comparison views and a second manufacturer app in 2024-06, a missing feed (null) in 2024-05
    rows += [activity(3, m, company_app_cnt=1) for m in MONTHS if m not in ("2024-05", "2024-06")]
    rows += [activity(3, "2024-05", company_app_cnt=None), activity(3, "2024-06", company_app_cnt=2, analysis_cnt=3)]
    store.write_months(frame(spark, "monthly_activity", rows), "monthly_activity", MONTHS)
    store.write_months(frame(spark, "purchases", [purchase(1, "2024-09")]), "purchases", ["2024-09"])
    return spark, cfg, store


def _funnel_rows(store):
    return {(r["user_id"], r["month"]): (r["y_engage"], r["y_visit"])
            for r in store.read("features").select("user_id", "month", *FUNNEL_LABELS).collect()}


def test_funnel_labels_match_raw_activity_on_a_hand_built_world(funnel_world, cfg_at):
    spark, cfg, store = funnel_world
    build_features(spark, cfg, store)
    r = _funnel_rows(store)
    # user 1: the surge in 2024-08 is in the windows of 2024-05, -06, -07; 2024-04's window (05-07) has none
    assert [r[(1, m)][0] for m in ("2024-04", "2024-05", "2024-06", "2024-07")] == [0, 1, 1, 1]
    # open windows: 2024-08 (09, 10 observed, no surge) is unknown, not 0
    assert [r[(1, m)][0] for m in ("2024-08", "2024-09", "2024-10")] == [None, None, None]
    # user 2: always online, but never above its usual level → no engagement label
    assert {r[(2, m)][0] for m in month_range("2024-03", "2024-07")} == {0}
    # the service visit in 07 is not a shopping visit; the one in 09 is (also in 2024-08's open window)
    assert [r[(2, m)][1] for m in ("2024-03", "2024-04", "2024-05", "2024-06", "2024-07", "2024-08", "2024-09")] \
        == [0, 0, 0, 1, 1, 1, None]
    # user 3: 2 apps + 3 comparison views = 5 > 2 × 1 + 2 in 2024-06 (the null month counts 0 in the baseline)
    assert [r[(3, m)][0] for m in ("2024-03", "2024-04", "2024-05", "2024-06")] == [1, 1, 1, 0]
    # months after observed_through are never read: with 2024-08 the visit in 09 is unknown
    early = cfg_at(tables={"root": cfg.tables.root}, features={"observed_through": "2024-08"})
    build_features(spark, early, store)
    r = _funnel_rows(store)
    assert r[(2, "2024-06")] == (None, None) and r[(2, "2024-05")] == (0, 0)
    assert r[(1, "2024-05")] == (1, 0) and r[(1, "2024-07")] == (1, None)


def test_no_label_column_is_ever_a_model_input(funnel_world):
    spark, cfg, store = funnel_world
    build_features(spark, cfg, store)
    features = store.read("features")
    labels = {"y", "y_h1", "y_h2", "y_h3", "label_complete", *FUNNEL_LABELS}
    assert labels <= set(features.columns) and labels <= NOT_FEATURES
    spec = FeatureSpec.from_frame(features)
    assert not labels & set(spec.columns) and "visit_days" in spec.columns
    # a group whose prefixes match label names ("y_…") still selects no label
    grouped = FeatureSpec.from_frame(features, ["y", "label", "visit_days"]).columns
    assert grouped and all(c.startswith("visit_days") for c in grouped)
    # a group's spec taken from the whole table's (train-base encodes once for every model) is the one
    # a pass over the group's columns gives: same columns, same order, same vocabularies
    for group in (["y", "label", "visit_days"], ["brand", "visit_days", "voice_cnt"]):
        assert spec.subset(group) == FeatureSpec.from_frame(features, group)
    assert spec.subset(["brand"]).categorical["brand"] and spec.subset(None) is spec
    with pytest.raises(ValueError, match="no feature columns match"):
        spec.subset(["y_h1"])


# ---------------------------------------------------------------------------------------------- Spark


@pytest.mark.slow
def test_oof_with_and_without_aux_tasks_and_the_study_on_synthetic_data(spark, cfg_at):
    from remedi_spark.pipeline import run_foundation
    from remedi_spark.training.hm3_study import funnel_scores, run_hm3_study
    from remedi_spark.training.oof import train_base_models

    params = {"epochs": 1, "batch_size": 512, "num_processes": 1, "model": TINY}
    models = [{"name": "hm3", "family": "hm3", "backend": "torch", "objective": "logloss", "feature_group": "core",
               "params": params},
              {"name": "hm3_no_aux", "family": "hm3", "backend": "torch", "objective": "logloss",
               "feature_group": "core", "params": {**params, "model": {**TINY, "aux_weight": 0.0}}}]
    cfg = cfg_at(synthetic={"n_users": 1500, "chunk_users": 1500}, folds={"n_folds": 2},
                 base_models={"models": models})
    run_foundation(spark, cfg)
    store = TableStore(spark, cfg.tables.root)
    features = store.read("features").filter("label_complete")
    rates = features.agg(*[F.avg(c).alias(c) for c in FUNNEL_LABELS]).first()
    assert 0.0 < rates["y_engage"] < 0.9 and 0.0 < rates["y_visit"] < 0.9  # informative labels, not all 1
    assert features.filter(F.col("y_engage").isNull() | F.col("y_visit").isNull()).count() == 0
    summary = train_base_models(spark, cfg, store)
    assert set(summary["models"]) == {"hm3", "hm3_no_aux"}
    assert all(0.0 <= summary["models"][m]["test"]["auc"] <= 1.0 for m in summary["models"])
    oof = store.read("oof_predictions")
    labelled = store.read("folds").select("user_id", "month")
    assert oof.filter(F.col("model") == "hm3").count() == labelled.count()
    scored = funnel_scores(spark, cfg, store, store.read("features").limit(200)).toPandas()
    assert list(scored.columns) == ["user_id", "month", "p", "p_engage", "p_visit"]
    assert scored[["p", "p_engage", "p_visit"]].stack().between(0, 1).all() and len(scored) == 200
    study = run_hm3_study(spark, cfg, store)
    written = store.read("hm3_study").toPandas()
    assert sorted(written["variant"]) == ["flat_heads", "full", "without_aux"] == sorted(
        r["variant"] for r in study["table"])
    with pytest.raises(ConfigError, match="hm3_study.model"):
        run_hm3_study(spark, cfg_at(tables={"root": cfg.tables.root}, hm3_study={"model": "hm3_nope"}), store)
