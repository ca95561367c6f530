"""Meta-models on simulated stacks of base models: they learn at any data size, the hybrid expert
uses what a linear stack cannot, every strategy saves and loads, and the stage's helpers (cross-
fitting, the weak-teacher guard) do what they promise."""
from dataclasses import asdict, fields

import numpy as np
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score

from remedi_spark.fusion import meta_models
from remedi_spark.fusion.meta_features import relative_meta_features
from remedi_spark.fusion.meta_models import (STRATEGIES, ExpertConfig, HybridExpert, WeightedAverage, fit_strategy,
                                             from_bytes, stratified_holdout, to_bytes)
from remedi_spark.fusion.train import cross_fitted, weak_teacher_reasons
from remedi_spark.metrics import bootstrap
from tests.conftest import REPO

FAST = ExpertConfig(raw_hidden=[8], relative_hidden=[16], output_hidden=[8], epochs=8, batch_size=512, patience=3)
M = 7


def simulated_stack(n: int, seed: int, kind: str = "linear", base: float = -3.6):
    """Meta-features of ``M`` base models over a rare label, owners of two rows each.

    ``linear``: every model sees one latent signal through its own noise (a stacked logistic
    regression is close to optimal). ``confident``: each row has one informed model that outputs the
    true logit; the others output noise around the base rate — the label follows the most confident
    model, which a linear stack of logits cannot pick out but max/range/norm features can."""
    rng = np.random.default_rng(seed)
    if kind == "linear":
        s = rng.normal(size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-(1.6 * s + base)))).astype(float)
        z = np.column_stack([1.45 * s + rng.normal(scale=sd, size=n) + base for sd in np.linspace(0.5, 2.0, M)])
    else:
        truth = rng.normal(base, 1.8, size=n)
        y = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(float)
        z = rng.normal(base, 0.6, size=(n, M))
        z[np.arange(n), rng.integers(0, M, size=n)] = truth
    groups = np.arange(n) // 2 + seed * 10_000_000
    return relative_meta_features(1 / (1 + np.exp(-z))), y, groups


@pytest.fixture(scope="module")
def large():
    """An independent sample per kind to measure on."""
    return {kind: simulated_stack(200_000, 99, kind) for kind in ("linear", "confident")}


def _auc(model, sample):
    x, y, _ = sample
    return roc_auc_score(y, model.predict(x))


def test_expert_config_defaults_are_the_conf_defaults():
    conf = yaml.safe_load((REPO / "conf" / "base.yaml").read_text())["fusion"]["meta_model"]
    assert conf == asdict(ExpertConfig())
    assert set(conf) == {f.name for f in fields(ExpertConfig)}


def test_on_3000_rows_the_hybrid_expert_matches_stacking_and_beats_the_base_rate(large):
    x, y, groups = simulated_stack(3000, 1)
    assert 0.05 <= y.mean() <= 0.07
    hybrid = fit_strategy("hybrid_expert", M, x, y, groups, ExpertConfig())
    stack = fit_strategy("stacking_lr", M, x, y, groups, ExpertConfig())
    assert _auc(hybrid, large["linear"]) >= _auc(stack, large["linear"]) - 0.01
    xe, ye, _ = large["linear"]
    rate = ye.mean()
    entropy = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    assert log_loss(ye, hybrid.predict(xe)) < entropy - 0.03


def test_on_1000_rows_with_30_positives_the_networks_train(large):
    x, y, groups = simulated_stack(1000, 2)
    assert y.sum() >= 30
    stack = _auc(fit_strategy("stacking_lr", M, x, y, groups, ExpertConfig()), large["linear"])
    hybrid = fit_strategy("hybrid_expert", M, x, y, groups, ExpertConfig())
    assert _auc(hybrid, large["linear"]) >= stack - 0.03
    # the paper's head (no skip path) starts at the base rate: its hold-out loss must fall from there
    paper = fit_strategy("hybrid_expert", M, x, y, groups, ExpertConfig(linear_skip=False, bags=1))
    (history,) = paper.history
    assert min(history) < history[0] - 0.005
    assert _auc(paper, large["linear"]) > 0.75


def test_the_hybrid_expert_uses_what_a_linear_stack_cannot(large):
    x, y, groups = simulated_stack(8000, 3, "confident")
    hybrid = fit_strategy("hybrid_expert", M, x, y, groups, ExpertConfig())
    stack = fit_strategy("stacking_lr", M, x, y, groups, ExpertConfig())
    xe, ye, ge = large["confident"]
    boot = bootstrap(ye, {"hybrid": hybrid.predict(xe), "stack": stack.predict(xe)}, ge, 0.075, replicates=200,
                     pairs=[("hybrid", "stack")])
    gain = boot["differences"][("hybrid", "stack")]["auc"]
    assert gain.estimate >= 0.02 and gain.low > 0


def test_a_hold_out_with_too_few_positives_is_an_error_not_an_untrained_network():
    x, y, groups = simulated_stack(1000, 4)
    y = np.zeros_like(y)
    y[:12] = 1  # 12 positives: even half of them held out is fewer than 10
    with pytest.raises(ValueError, match=r"hybrid_expert: the early-stopping hold-out has \d+ positives in [\d,]+ rows"):
        fit_strategy("hybrid_expert", M, x, y, groups, ExpertConfig())
    with pytest.raises(ValueError, match="no_hybrid: the early-stopping hold-out"):
        fit_strategy("no_hybrid", M, x, y, groups, ExpertConfig())


def test_the_hold_out_grows_until_it_expects_enough_positives():
    x, y, groups = simulated_stack(1000, 2)
    hold = HybridExpert(M, ExpertConfig(valid_fraction=0.1))._holdout(y, groups, seed=7)
    assert y[hold].sum() >= 10 and hold.mean() <= 0.55


def test_stratified_holdout_keeps_an_owner_on_one_side_and_splits_both_labels():
    groups = np.repeat(np.arange(1000), 3)
    y = np.zeros(3000)
    y[groups < 100] = 1
    hold = stratified_holdout(groups, y, 0.2, seed=1)
    assert all(len(set(hold[groups == g])) == 1 for g in range(1000))
    assert hold[y == 1].mean() == pytest.approx(0.2) and hold[y == 0].mean() == pytest.approx(0.2)


def test_weighted_average_weights_are_a_convex_combination():
    x, y, groups = simulated_stack(20_000, 5)
    model = WeightedAverage(M).fit(x, y, groups)
    assert (model.weights >= 0).all() and model.weights.sum() == pytest.approx(1.0)
    assert model.weights[0] > model.weights[-1]  # the least noisy model gets the most weight


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_learns_stays_a_probability_and_round_trips(name, large):
    x, y, groups = simulated_stack(6000, 6)
    model = fit_strategy(name, M, x, y, groups, FAST)
    xe = large["linear"][0][:20_000]
    p = model.predict(xe)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    assert _auc(model, large["linear"]) > 0.75  # a constant scores 0.5
    again = from_bytes(*to_bytes(model, {"models": list("abcdefg")}))
    assert type(again) is type(model)
    np.testing.assert_allclose(again.predict(xe), p, rtol=0, atol=1e-7)


def test_the_hybrid_experts_numbers_do_not_depend_on_how_the_rows_are_chunked(large):
    """Inputs are standardised and scored in chunks of rows (and the statistics in blocks of columns)
    to bound the driver's memory at 800k owners: a row's prediction is what it is alone (up to the
    float32 rounding of a different matrix-multiply kernel for a tiny batch), and the statistics are
    the fit rows' column means and standard deviations, to the bit."""
    x, y, groups = simulated_stack(6000, 8)
    model = fit_strategy("hybrid_expert", M, x, y, groups, FAST)
    unscaled = np.concatenate([np.log(x[:, :M] / (1 - x[:, :M])), x[:, M:]], axis=1)
    assert np.array_equal(model.mean, unscaled.mean(axis=0)) and np.array_equal(model.std, unscaled.std(axis=0))
    xe = large["confident"][0]
    assert len(xe) > 2 * meta_models._INPUT_ROWS
    whole = model.predict(xe)
    edge = slice(meta_models._INPUT_ROWS - 5, meta_models._INPUT_ROWS + 5)  # rows on both sides of a chunk edge
    np.testing.assert_allclose(model.predict(xe[edge]), whole[edge], rtol=1e-6, atol=0)
    np.testing.assert_allclose(np.concatenate([model.predict(xe[i:i + 1]) for i in range(3)]), whole[:3],
                               rtol=1e-6, atol=0)
    assert np.array_equal(model.predict(xe[: meta_models._INPUT_ROWS]), whole[: meta_models._INPUT_ROWS])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_fitting_on_rows_of_a_matrix_is_fitting_on_their_copy(name, large):
    """Cross-fitting hands each strategy the row numbers of its fit rows instead of a copy of them
    (GiBs at 800k owners): the fitted model must be the same, to the bit, as one fitted on ``x[rows]``."""
    x, y, groups = simulated_stack(6000, 9)
    rows = np.flatnonzero(np.random.default_rng(3).random(len(y)) < 0.7)
    on_copy = fit_strategy(name, M, x[rows], y[rows], groups[rows], FAST)
    in_place = fit_strategy(name, M, x, y[rows], groups[rows], FAST, rows=rows)
    assert to_bytes(in_place) == to_bytes(on_copy)
    xe = large["confident"][0][:20_000]
    assert np.array_equal(in_place.predict(xe), on_copy.predict(xe))


def test_cross_fitting_never_predicts_a_row_with_a_model_fitted_on_it():
    rng = np.random.default_rng(0)
    n = 600
    ids, y, folds = np.arange(n), (rng.random(n) < 0.3).astype(float), rng.integers(0, 5, size=n)

    def memorizer(train_rows):  # predicts the label of rows it was fitted on, 0.5 elsewhere
        seen = dict(zip(ids[train_rows], y[train_rows]))
        return lambda rows: np.array([seen.get(i, 0.5) for i in ids[rows]])

    p = cross_fitted(memorizer, folds)
    assert np.isfinite(p).all() and (p == 0.5).all()
    # positive control: the same check catches a "cross-fit" that fits on every row
    leaky = np.empty(n)
    for k in range(5):
        rows = np.flatnonzero(folds == k)
        leaky[rows] = memorizer(np.arange(n))(rows)
    assert not (leaky == 0.5).all() and roc_auc_score(y, leaky) == 1.0


def test_the_guard_names_the_rivals_a_teacher_is_worse_than():
    rng = np.random.default_rng(1)
    x, y, groups = simulated_stack(30_000, 8)
    good = fit_strategy("stacking_lr", M, x, y, groups, FAST).predict(x)
    constant = np.full(len(y), y.mean())  # a teacher that learnt nothing
    scores = {"teacher": constant, "good_base": good, "simple_average": x[:, :M].mean(axis=1),
              "twin": good + rng.normal(scale=1e-9, size=len(y))}
    boot = bootstrap(y, scores, groups, 0.075, replicates=200,
                     pairs=[("teacher", "good_base"), ("teacher", "simple_average"), ("twin", "good_base")])
    reasons = weak_teacher_reasons(boot["differences"], "teacher", ["good_base", "simple_average"])
    assert len(reasons) == 2 and "good_base" in reasons[0] and "simple_average" in reasons[1]
    assert weak_teacher_reasons(boot["differences"], "twin", ["good_base"]) == []
