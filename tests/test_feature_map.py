"""Neural feature map: log1p + standardisation, OOV bucket for unseen categories, JSON round trip."""
import numpy as np
import pandas as pd
import pytest

from remedi_spark.models.neural.feature_map import FeatureMap, signed_log1p


@pytest.fixture(scope="module")
def fmap(spark):
    df = spark.createDataFrame(
        [(1, "2024-06", 0, 3.0, "a"), (2, "2024-06", 1, 0.0, "b"), (3, "2024-06", 0, None, "a"), (4, "2024-06", 0, -2.0, None)],
        "user_id long, month string, y int, visits double, brand string")
    return FeatureMap.fit(df)


def test_fit_uses_training_statistics(fmap):
    assert fmap.numeric == ["visits"] and fmap.categorical == ["brand"]
    values = signed_log1p(np.array([3.0, 0.0, -2.0]))
    assert fmap.mean[0] == pytest.approx(values.mean())
    assert fmap.std[0] == pytest.approx(values.std())
    assert fmap.vocab == {"brand": ["a", "b"]} and fmap.vocab_sizes == [3]


def test_unseen_and_missing_values_never_fail(fmap):
    dense, ids = fmap.transform(pd.DataFrame({"visits": [np.nan, 3.0], "brand": ["zeta", "b"]}))
    assert ids.tolist() == [[0], [2]]  # unseen → OOV bucket 0
    assert dense[0, 0] == 0.0  # missing → the mean
    assert dense.dtype == np.float32 and ids.dtype == np.int64


def test_json_round_trip(fmap):
    assert FeatureMap.from_json(fmap.to_json()) == fmap


def test_quantile_buckets_embed_numeric_columns(spark):
    values = [float(v) for v in range(100)] + [None]
    df = spark.createDataFrame([(i, "2024-06", 0, v, "a") for i, v in enumerate(values)],
                               "user_id long, month string, y int, visits double, brand string")
    fmap = FeatureMap.fit(df, numeric_encoding="buckets", n_buckets=4)
    assert fmap.numeric == [] and fmap.bucketed == ["visits"] and fmap.columns == ["brand", "visits"]
    edges = fmap.buckets["visits"]
    assert len(edges) == 3 and edges == sorted(edges)
    assert fmap.vocab_sizes == [2, 5]  # brand: a + OOV; visits: 4 buckets + missing
    dense, ids = fmap.transform(pd.DataFrame({"visits": [np.nan, -5.0, 10.0, 60.0, 1e9], "brand": ["a"] * 5}))
    assert dense.shape == (5, 0)
    assert ids[:, 1].tolist() == [0, 1, 1, 3, 4]  # missing → 0; then buckets 1..4 in value order
    assert FeatureMap.from_json(fmap.to_json()) == fmap


def test_bad_encoding_is_rejected(spark):
    df = spark.createDataFrame([(1, "2024-06", 0, 1.0)], "user_id long, month string, y int, visits double")
    with pytest.raises(ValueError, match="numeric_encoding"):
        FeatureMap.fit(df, numeric_encoding="zscore")
