"""KDEF K-table: knowledge abundance of known layer matrices and of each sub-network's layers, the table's
shape and sanity, the stage on Spark."""
import json

import numpy as np
import pytest
import torch

from remedi_spark.config import BootstrapSettings
from remedi_spark.io.store import TableStore
from remedi_spark.pipeline import run_stage
from remedi_spark.training.kdef_study import (curve_rows, format_k_table, format_training, kdef_k_table,
                                              knowledge_abundance, layer_rows)
from tests.world import copy_tables

PARAMS = {"epochs": 2, "batch_size": 256, "lr": 3e-3, "patience": 2, "grad_clip": 10.0, "embedding_l2": 1e-5,
          "num_processes": 1, "seed": 7}
TINY = {"emb_dim": 4, "hidden": [16], "cin_layers": [4], "cross_layers": 1}
BOOT = BootstrapSettings(replicates=200, seed=3, level=0.9)


def _arrays(n, seed):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, 3)).astype(np.float32)
    ids = rng.integers(0, 3, size=(n, 1)).astype(np.int64)
    logit = 2.0 * dense[:, 0] + (ids[:, 0] == 2) - 1.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return dense, ids, y


def test_knowledge_abundance_is_the_share_of_significant_directions_of_a_layer():
    w = torch.diag(torch.tensor([2.0, 1.0, 0.1, 0.004]))  # relative singular values 1, 0.5, 0.05, 0.002
    assert [knowledge_abundance(w, tau) for tau in (0.001, 0.01, 0.1, 0.6)] == [1.0, 0.75, 0.5, 0.25]
    rotated = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0] @ w
    assert knowledge_abundance(rotated, 0.01) == pytest.approx(0.75)  # singular values, not entries
    # directions W does not use at all are not counted (eq. 3 divides by #σ > 0, the rank)
    rank_two = torch.zeros(5, 3)
    rank_two[0, 0], rank_two[1, 1] = 1.0, 0.02
    assert knowledge_abundance(rank_two, 0.1) == 0.5 and knowledge_abundance(rank_two, 0.01) == 1.0


def test_layer_abundance_reads_every_layer_matrix_of_a_sub_network():
    from remedi_spark.models.neural.loop import make_module
    from remedi_spark.training.kdef_study import layer_abundance

    model = make_module("kdef", {**TINY, "hidden": [16, 8], "cin_layers": [4, 3], "subnets": ["mlp", "cross", "cin",
                                                                                             "fm"]}, [4], 3, seed=0)
    mlp, cross, cin, fm = (layer_abundance(head, (0.05, 0.2)) for head in model.heads)
    assert [l["shape"] for l in mlp] == [[16, 16], [8, 16]]  # 4 fields x dim 4 in; the logit layer is a vector
    assert [l["shape"] for l in cin] == [[4, 16], [3, 16]]  # CIN's 1x1 convolutions: maps x (F x H_prev)
    assert cross == [] and fm == []  # only vectors (DCN cross weights, logit layers)
    assert all(0 < l["ka"]["0.2"] <= l["ka"]["0.05"] <= 1 for l in mlp + cin)


def test_k_table_compares_kdef_with_independent_nets():
    # 3 epochs: with 23 steps an epoch and half an epoch of lr warm-up, 2 epochs leave the KDEF cross
    # head at AUC ~0.56 for this seed (0.86 for others); every member is past 0.85 after 3
    test = _arrays(3000, 3)
    table = kdef_k_table(_arrays(6000, 1), _arrays(1500, 2), test, vocab_sizes=[4], num_numeric=3,
                         model_cfg=TINY, params={**PARAMS, "epochs": 3}, subnets=["mlp", "cross", "cin"], max_k=2,
                         tau=0.1, bootstrap_settings=BOOT)
    assert len(table) == (2 + 2) + (3 + 3)  # K=1: member + ensemble per variant; K=2: two members + ensemble
    assert set(table["variant"]) == {"kdef", "independent"}
    assert table["auc"].between(0.7, 1.0).all()
    # KA per layer: MLP and CIN members have layer matrices, the cross net only vectors
    ka = table.set_index(["k", "variant", "member"])["knowledge_abundance"]
    assert ka.drop(index=[(2, v, "cross") for v in ("kdef", "independent")]).between(0, 1).all()
    assert ka.loc[(2, "kdef", "cross")] is None or np.isnan(ka.loc[(2, "kdef", "cross")])
    by_member = table.set_index(["k", "variant", "member"])
    layers = json.loads(by_member.loc[(2, "kdef", "mlp"), "knowledge_abundance_layers"])
    assert [l["layer"] for l in layers] == [1] and set(layers[0]["ka"]) == {"0.01", "0.05", "0.1", "0.2"}
    assert ka.loc[(2, "kdef", "ensemble")] == pytest.approx(ka.loc[(2, "kdef", "mlp")])  # mean over the layers
    one = table[table["k"] == 1].set_index(["variant", "member"])["auc"]
    assert one[("kdef", "ensemble")] == one[("independent", "ensemble")]  # K = 1 KDEF is the lone network
    assert (table["auc_ci_low"] <= table["auc"]).all() and (table["auc"] <= table["auc_ci_high"]).all()
    assert (table["positives"] == int(test[2].sum())).all()
    # only the K = 2 KDEF teacher is compared, with the mean fusion of the same two nets
    compared = table[table["reference"].notna()]
    assert compared[["k", "variant", "member"]].values.tolist() == [[2, "kdef", "ensemble"]]
    row = compared.iloc[0]
    assert row["auc_diff_ci_low"] <= row["auc_diff"] <= row["auc_diff_ci_high"]
    text = format_k_table(table.to_dict("records"))
    assert "| 2 |" in text and f"{int(test[2].sum()):,} positive held-out rows" in text
    # every training run keeps its epochs, best epoch and validation curve: KDEF models on their ensemble
    # rows, independent nets on their member rows
    runs = by_member.loc[[(2, "kdef", "ensemble"), (2, "independent", "mlp"), (2, "independent", "cross")]]
    for _, run in runs.iterrows():
        curve = json.loads(run["valid_curve"])
        assert [p["epoch"] for p in curve] == list(range(1, run["epochs"] + 1))
        best = min(curve, key=lambda p: p["valid_logloss"])
        assert run["best_epoch"] == best["epoch"]  # the kept weights: the best validation log loss (early stopping's)
    layers = layer_rows(table.to_dict("records"))
    assert {(r["variant"], r["member"]) for r in layers} == {(v, m) for v in ("kdef", "independent")
                                                             for m in ("mlp", "cross")}
    assert [r["module"] for r in layers if r["member"] == "cross"] == ["(vectors only)"] * 2
    runs_shown = curve_rows(table.to_dict("records"))
    assert [r["run"] for r in runs_shown] == ["KDEF K=2", "mlp alone", "cross alone"]
    assert all(r["valid_auc_by_epoch"].count("→") == r["epochs"] - 1 for r in runs_shown)
    assert "| KDEF K=2 | 3 |" in format_training(table.to_dict("records"))  # epochs as whole numbers
    assert "Knowledge abundance per layer" in format_training(table.to_dict("records"))


def test_owners_drawn_together_widen_the_interval():
    """Rows of one owner are resampled together: the same rows repeated per owner give wider intervals
    than when every row is taken as its own owner (the row bootstrap would be overconfident)."""
    test = _arrays(2000, 5)
    repeated = tuple(np.repeat(a, 4, axis=0) for a in test)
    owners = np.repeat(np.arange(2000), 4)
    args = ([4], 3, TINY, {**PARAMS, "epochs": 1}, ["mlp"], 1, 0.1)
    as_rows = kdef_k_table(_arrays(4000, 1), _arrays(1000, 2), repeated, *args, bootstrap_settings=BOOT)
    by_owner = kdef_k_table(_arrays(4000, 1), _arrays(1000, 2), repeated, *args, bootstrap_settings=BOOT,
                            test_owners=owners)
    width = lambda t: (t["auc_ci_high"] - t["auc_ci_low"]).iloc[0]
    assert as_rows["auc"].iloc[0] == pytest.approx(by_owner["auc"].iloc[0])  # same model, same rows
    assert width(by_owner) > 1.5 * width(as_rows)  # ~2x in theory: 4 copies per owner


def test_max_k_beyond_subnets_is_a_config_error():
    with pytest.raises(ValueError, match="max_k"):
        kdef_k_table(_arrays(100, 1), _arrays(100, 2), _arrays(100, 3), [4], 3, TINY, PARAMS, ["mlp"], 2, 0.1,
                     bootstrap_settings=BOOT)


def test_stage_writes_the_k_table(spark, world, tmp_path):
    """On the shared world's features and folds (tests/world.py), copied to this test's root."""
    models = [{"name": "kdef", "family": "kdef", "backend": "torch", "objective": "logloss", "feature_group": None,
               "params": {"epochs": 1, "batch_size": 512, "launcher": "driver",
                          "model": {**TINY, "subnets": ["mlp", "fm"]}}}]
    cfg = copy_tables(spark, world, tmp_path / "t", base_models={"models": models},
                      kdef_study={"subnets": ["mlp", "fm"], "max_k": 2})
    summary = run_stage(spark, cfg, "kdef-study")
    written = TableStore(spark, cfg.tables.root).read("kdef_study").toPandas()
    assert len(written) == len(summary["table"]) == 10
    assert (written["run_id"] == summary["run_id"]).all()
    assert summary["rows"]["test"] > 0 and summary["rows"]["valid"] > 0
    assert written["auc_ci_low"].notna().all() and (written["ci_level"] == cfg.evaluation.bootstrap.level).all()
