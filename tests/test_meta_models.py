"""Meta-models on synthetic OOF-like data: weights, learning, save/load of the teacher head."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from remedi_spark.fusion.meta_features import relative_meta_features
from remedi_spark.fusion.meta_models import (STRATEGIES, ExpertConfig, HybridExpert, NoHybrid, WeightedAverage,
                                             holdout_mask)

FAST = ExpertConfig(raw_hidden=[8], relative_hidden=[16], output_hidden=[8], epochs=8, batch_size=512, patience=3)


@pytest.fixture(scope="module")
def oof():
    """Three base models of unequal quality over a rare label, as Algorithm 1 meta-features."""
    rng = np.random.default_rng(0)
    n = 40_000
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2.0 * signal - 4.5)))).astype(float)
    noise = [0.3, 1.0, 3.0]
    p = np.column_stack([1 / (1 + np.exp(-(2.0 * signal + rng.normal(scale=s, size=n) - 4.5))) for s in noise])
    groups = rng.integers(0, n // 4, size=n)
    return relative_meta_features(p), y, groups


def test_weighted_average_weights_are_a_convex_combination(oof):
    x, y, groups = oof
    model = WeightedAverage(3).fit(x, y, groups)
    assert (model.weights >= 0).all() and model.weights.sum() == pytest.approx(1.0)
    assert model.weights[0] > model.weights[2]  # the least noisy model gets the most weight
    assert np.allclose(model.predict(x), x[:, :3] @ model.weights)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_beats_a_constant_and_stays_a_probability(oof, name):
    x, y, groups = oof
    cls = STRATEGIES[name]
    model = (cls(3, FAST) if issubclass(cls, HybridExpert) else cls(3)).fit(x[:30_000], y[:30_000], groups[:30_000])
    p = model.predict(x[30_000:])
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert roc_auc_score(y[30_000:], p) > 0.75  # a constant scores 0.5


def test_teacher_head_round_trips_through_bytes(oof):
    x, y, groups = oof
    for cls in (HybridExpert, NoHybrid):
        model = cls(3, FAST).fit(x, y, groups)
        state, meta = model.to_bytes({"models": ["a", "b", "c"]})
        again = HybridExpert.from_bytes(state, meta)
        assert type(again) is cls
        np.testing.assert_allclose(again.predict(x[:500]), model.predict(x[:500]), rtol=0, atol=1e-7)


def test_holdout_keeps_an_owner_on_one_side():
    groups = np.repeat(np.arange(1000), 3)
    hold = holdout_mask(groups, 0.2, seed=1)
    assert 0.1 < hold.mean() < 0.3
    assert all(len(set(hold[groups == g])) == 1 for g in range(1000))
