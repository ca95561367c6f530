"""The report's neural-vs-LightGBM section: which LightGBM each neural expert is compared with, and
the paired OOF AUC difference with its interval over owners."""
import numpy as np
import pandas as pd

from remedi_spark.config import BootstrapSettings, ModelSpec
from remedi_spark.report.matching import matching_numbers, matching_pairs, matching_section

BOOT = BootstrapSettings(replicates=300, seed=5, level=0.9)


def _spec(name, family, backend="native", objective="logloss", group=None):
    return ModelSpec(name=name, family=family, backend=backend, objective=objective, feature_group=group, params={})


SPECS = [_spec("lgbm_focal", "lgbm", objective="focal"), _spec("lgbm_dealer", "lgbm", group="dealer"),
         _spec("lgbm_logloss", "lgbm", backend="synapseml"), _spec("lgbm_core", "lgbm", group="core"),
         _spec("mlp", "mlp", "torch"), _spec("kdef", "kdef", "torch", group="core"),
         _spec("hm3", "hm3", "torch", group="calls")]


def _matrix(n_owners=3000, months=2, seed=0):
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_owners), months)
    signal = rng.normal(size=len(user))
    y = (rng.random(len(user)) < 1 / (1 + np.exp(-(2.5 * signal - 4)))).astype(float)
    tree = signal + rng.normal(scale=0.5, size=len(user))
    return pd.DataFrame({"user_id": user, "month": np.tile([f"2024-0{m + 1}" for m in range(months)], n_owners),
                         "y": y, "p_lgbm_focal": tree, "p_lgbm_dealer": rng.normal(size=len(user)),
                         "p_lgbm_logloss": tree, "p_lgbm_core": tree,
                         "p_mlp": tree,  # ranks exactly as its LightGBM
                         "p_kdef": rng.normal(size=len(user)),  # ranks at random
                         "p_hm3": tree})


def test_each_neural_model_meets_the_logloss_lightgbm_on_its_own_columns():
    pairs = matching_pairs(SPECS, [s.name for s in SPECS])
    # not the focal LightGBM (other objective) nor the dealer-subset one (other columns)
    assert pairs == [("mlp", "lgbm_logloss", None), ("kdef", "lgbm_core", "core"), ("hm3", None, "calls")]
    # a LightGBM whose predictions are not in the OOF rows is no match
    assert matching_pairs(SPECS, ["lgbm_logloss", "mlp", "kdef"]) == [("mlp", "lgbm_logloss", None),
                                                                      ("kdef", None, "core")]


def test_difference_and_its_reading():
    numbers = matching_numbers(_matrix(), SPECS, 0.05, BOOT, tolerance=0.015)
    rows = {r["neural"]: r for r in numbers["pairs"]}
    same, random = rows["mlp"], rows["kdef"]
    assert same["auc_diff"] == 0 and same["auc_diff_ci_low"] == same["auc_diff_ci_high"] == 0
    assert same["reading"] == "no difference" and same["within_tolerance"]
    assert 0.45 < random["auc_neural"] < 0.55 and random["auc_lightgbm"] > 0.8
    assert random["auc_diff_ci_high"] < 0 and random["reading"] == "worse" and not random["within_tolerance"]
    assert "auc_diff" not in rows["hm3"] and "no logloss LightGBM" in rows["hm3"]["reading"]
    assert numbers["owners"] == 3000 and numbers["positives"] > 50
    html = matching_section(numbers)[0][1]
    assert "kdef − lgbm_core" in html and f"{numbers['positives']:,} positive rows" in html
    # the shown difference cell carries the reading; a model without a LightGBM shows why instead
    assert random["auc_diff_text"].endswith(" worse") and "no logloss LightGBM on these columns</td>" in html


def test_rows_missing_a_compared_prediction_are_left_out_and_nothing_to_compare_is_said():
    matrix = _matrix()
    matrix.loc[:99, "p_mlp"] = np.nan
    assert matching_numbers(matrix, SPECS, 0.05, BOOT, 0.015)["rows"] == len(matrix) - 100
    assert "no neural base model" in matching_numbers(matrix.drop(columns=["p_mlp", "p_kdef", "p_hm3"]), SPECS,
                                                      0.05, BOOT, 0.015)["skipped"]
    assert matching_section(matching_numbers(None, SPECS, 0.05, BOOT, 0.015))[0][1].startswith("<p class='meta'>Skipped")
