"""Relative meta-features (Algorithm 1): numpy reference vs the shared cases, Spark UDF vs numpy,
column order, the OOF pivot's errors and the stage end to end."""
import json
from pathlib import Path

import numpy as np
import pytest

from remedi_spark.fusion.meta_features import (
    add_meta_features,
    build_meta_features,
    meta_feature_names,
    pivot_oof,
    relative_meta_features,
)
from remedi_spark.io.schemas import DataValidationError
from remedi_spark.io.store import TableStore

CASES = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "algorithm1_cases.json"
OOF_SCHEMA = "user_id long, month string, model string, fold int, split string, p double"


def _cases():
    if not CASES.exists():
        pytest.skip(f"reference cases not found at {CASES}")
    return json.loads(CASES.read_text())


def test_numpy_reference_matches_every_shared_case():
    data = _cases()
    assert data["epsilon"] == 1e-6
    assert data["cases"]
    for case in data["cases"]:
        p = np.array(case["predictions"], dtype=np.float64)
        expected = np.array(case["expected"], dtype=np.float64)
        got = relative_meta_features(p)
        assert got.shape == (p.shape[0], 4 * p.shape[1] + 6), case["name"]
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, err_msg=case["name"])


def test_column_order_follows_the_notes():
    assert meta_feature_names(["gbdt", "mlp", "kdef"]) == [
        "p_gbdt", "p_mlp", "p_kdef", "mean", "std", "median", "max", "min",
        "norm_gbdt", "norm_mlp", "norm_kdef", "diff_gbdt", "diff_mlp", "diff_kdef",
        "rank_gbdt", "rank_mlp", "rank_kdef", "range"]
    assert meta_feature_names(["a"]) == ["p_a", "mean", "std", "median", "max", "min", "norm_a", "diff_a",
                                         "rank_a", "range"]
    with pytest.raises(ValueError):
        meta_feature_names([])
    with pytest.raises(ValueError):
        meta_feature_names(["a", "a"])


def test_ties_rank_by_model_order_and_equal_predictions_have_zero_norm():
    out = relative_meta_features(np.array([[0.5, 0.2, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3]]))
    m = 4
    np.testing.assert_array_equal(out[0, 3 * m + 5:4 * m + 5], [1, 4, 2, 3])
    np.testing.assert_array_equal(out[1, 3 * m + 5:4 * m + 5], [1, 2, 3, 4])
    assert out[1, m + 1] == 0.0  # std
    np.testing.assert_array_equal(out[1, m + 5:3 * m + 5], 0.0)  # norm and diff
    assert out[1, -1] == 0.0  # range
    assert relative_meta_features(np.empty((0, 3))).shape == (0, 18)


def _random_predictions(rng, n, m):
    p = rng.random((n, m))
    ties = rng.choice([0.1, 0.25, 0.5], size=(n, m))  # many ties within a row
    p[: n // 3] = ties[: n // 3]
    p[n // 3: n // 3 + 5] = 0.42  # all models equal: std = 0
    return p


@pytest.mark.parametrize("m", [1, 2, 5])
def test_spark_udf_equals_numpy_reference(spark, m):
    rng = np.random.default_rng(m)
    n = 300
    p = _random_predictions(rng, n, m)
    models = [f"m{j}" for j in range(m)]
    rows = [(i, f"k{i % 7}", *map(float, p[i])) for i in range(n)]
    schema = "id long, tag string, " + ", ".join(f"p_{x} double" for x in models)
    df = spark.createDataFrame(rows, schema).repartition(3)  # several batches, rows out of order
    out = add_meta_features(df, models)
    names = meta_feature_names(models)
    assert out.columns == ["id", "tag", *names]
    assert all(f.dataType.typeName() == "double" for f in out.schema.fields[2:])
    got = out.toPandas().sort_values("id")
    assert got["tag"].tolist() == [f"k{i % 7}" for i in range(n)]
    np.testing.assert_array_equal(got[names].to_numpy(), relative_meta_features(p))


def _oof_rows(users, models, months=("2024-06", "2024-07"), skip=()):
    rows = []
    for u in users:
        split, fold = ("test", -1) if u % 5 == 0 else ("train", u % 3)
        for month in months:
            for j, model in enumerate(models):
                if (u, month, model) not in skip:
                    rows.append((u, month, model, fold, split, ((u * 7 + j * 3) % 10) / 10))
    return rows


def test_pivot_one_row_per_key_models_in_given_order(spark):
    oof = spark.createDataFrame(_oof_rows(range(1, 11), ["b", "a", "c"]), OOF_SCHEMA)
    wide = pivot_oof(oof, ["c", "a"])
    assert wide.columns == ["user_id", "month", "fold", "split", "p_c", "p_a"]
    got = wide.toPandas().set_index(["user_id", "month"]).sort_index()
    assert len(got) == 20
    assert got.loc[(5, "2024-06"), "split"] == "test" and got.loc[(5, "2024-06"), "fold"] == -1
    assert got.loc[(4, "2024-07"), "p_a"] == ((4 * 7 + 3) % 10) / 10
    assert pivot_oof(oof).columns[4:] == ["p_a", "p_b", "p_c"]  # default: sorted names


def test_pivot_names_missing_predictions(spark):
    skip = {(3, "2024-07", "b"), (8, "2024-06", "b")}
    oof = spark.createDataFrame(_oof_rows(range(1, 11), ["a", "b"], skip=skip), OOF_SCHEMA)
    with pytest.raises(DataValidationError) as err:
        pivot_oof(oof, ["a", "b"])
    assert err.value.table == "oof_predictions"
    assert [col for col, _ in err.value.problems] == ["p_b"]
    message = str(err.value)
    assert "'b'" in message and "2 of 20" in message
    assert "(user_id=3, month='2024-07')" in message and "(user_id=8, month='2024-06')" in message
    with pytest.raises(DataValidationError, match=r"no predictions at all for models \['zzz'\]"):
        pivot_oof(oof, ["a", "zzz"])
    with pytest.raises(DataValidationError, match=r"\['zzz'\]; present: \['a', 'b'\]"):
        pivot_oof(oof, ["zzz"])


def test_stage_writes_meta_features_with_labels(spark, cfg_at):
    specs = [{"name": n, "family": f, "backend": b, "objective": "logloss", "feature_group": None, "params": {}}
             for n, f, b in (("mlp", "mlp", "torch"), ("gbdt", "lgbm", "native"))]
    cfg = cfg_at(base_models={"models": specs})  # the configured models, in any order: sorted by name
    store = TableStore(spark, cfg.tables.root)
    users = range(1, 11)
    months = ["2024-06", "2024-07"]
    folds = [(u, m, u % 3, "test" if u % 5 == 0 else "train", "train", u % 2) for u in users for m in months]
    store.write_table(spark.createDataFrame(
        folds, "user_id long, month string, fold int, split string, oot_split string, y int"), "folds")
    oof = spark.createDataFrame(_oof_rows(users, ["gbdt", "mlp"]), OOF_SCHEMA)
    store.write_partitions(oof, "oof_predictions", ["gbdt", "mlp"])
    summary = build_meta_features(spark, cfg, store)
    assert summary["models"] == ["gbdt", "mlp"]
    assert summary["rows"] == {"test": 4, "train": 16}
    assert summary["columns"] == 5 + 14 and summary["meta_features"] == 14
    table = store.read("meta_features").toPandas().sort_values(["user_id", "month"])
    names = meta_feature_names(["gbdt", "mlp"])
    assert list(table.columns) == ["user_id", "month", "fold", "split", "y", *names]
    assert (table["y"] == table["user_id"] % 2).all()
    np.testing.assert_array_equal(table[names].to_numpy(),
                                  relative_meta_features(table[["p_gbdt", "p_mlp"]].to_numpy()))
