"""Lead metrics on hand-computed cases, including K beyond the population and ties at the cut-off;
the owner-level paired bootstrap against the expanded sample, simulated coverage and paired differences."""
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from remedi_spark.metrics import (BOOTSTRAP_METRICS, Interval, bootstrap, business_recall_at_k, curve_ks,
                                   difference_verdict, k_for, lead_metrics, owner_resample_weights, precision_at_k,
                                   ranked_curves, top_k_hits, weighted_lead_metrics)


def test_hand_computed_case():
    y = np.array([1, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    m = lead_metrics(y, p, k=3)
    assert m["hits_at_k"] == 2
    assert m["precision_at_k"] == pytest.approx(2 / 3)
    assert m["business_recall_at_k"] == pytest.approx(2 / (3 / 3))  # monthly buyers = 3 positives / 3 months
    assert m["lift_at_k"] == pytest.approx((2 / 3) / 0.3)
    assert m["auc"] == pytest.approx(16 / 21)  # 16 of the 3 × 7 positive–negative pairs ranked right


def test_k_larger_than_population_takes_everyone():
    assert top_k_hits(np.array([1, 0, 1]), np.array([0.1, 0.2, 0.3]), k=10) == 2


def test_ties_at_the_cut_off_are_broken_by_order():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.5, 0.5, 0.5, 0.1])
    assert top_k_hits(y, p, k=1) == 0  # the first listed of the tied rows wins: stable, deterministic
    assert top_k_hits(y, p, k=2) == 1


def test_k_scales_with_population():
    assert k_for(800_000, 0.075) == 60_000
    assert k_for(10, 0.075) == 1


def test_k_larger_than_population_takes_precision_over_the_list():
    y, p = np.array([1, 0, 1]), np.array([0.1, 0.2, 0.3])
    m = lead_metrics(y, p, k=10)
    assert m["hits_at_k"] == 2
    assert m["precision_at_k"] == pytest.approx(2 / 3)  # the list holds 3 owners, not 10
    assert m["business_recall_at_k"] == pytest.approx(2 / (2 / 3))
    assert m["lift_at_k"] == pytest.approx(1.0)  # contacting everyone lifts nothing


def test_ranked_curves_match_the_point_metrics_at_every_k():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.1).astype(int)
    p = np.round(rng.random(500), 2)  # coarse scores: many ties
    ks = curve_ks(len(y), points=25, extra=(37, 10_000))
    assert ks[0] == 1 and ks[-1] == 500 and 37 in ks
    c = ranked_curves(y, p, ks)
    for i, k in enumerate(ks):
        assert c["hits"][i] == top_k_hits(y, p, k)
        assert c["precision"][i] == pytest.approx(precision_at_k(y, p, k))
        assert c["business_recall"][i] == pytest.approx(business_recall_at_k(y, p, k))
    assert c["gain"][-1] == pytest.approx(1.0) and c["lift"][-1] == pytest.approx(1.0)


def test_ranked_curves_hand_computed():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.5, 0.5, 0.5, 0.1])  # ties: input order kept → ranking is rows 0, 1, 2, 3
    c = ranked_curves(y, p, np.array([1, 2, 3, 4]))
    assert c["hits"].tolist() == [0, 1, 2, 2]
    assert c["precision"].tolist() == pytest.approx([0, 1 / 2, 2 / 3, 1 / 2])
    assert c["gain"].tolist() == pytest.approx([0, 0.5, 1, 1])
    assert c["lift"].tolist() == pytest.approx([0, 1, 4 / 3, 1])
    with pytest.raises(ValueError, match="1..4"):
        ranked_curves(y, p, np.array([0, 2]))


# --- Paired owner-level bootstrap ---------------------------------------------------------------

def _expanded_metrics(y, p, weights, k_fraction):
    """lead_metrics of the sample in which row i appears weights[i] times (copies adjacent)."""
    reps = np.asarray(weights).astype(int)
    ye, pe = np.repeat(y, reps), np.repeat(p, reps)
    return lead_metrics(ye, pe, k_for(len(ye), k_fraction))


def _assert_same_metrics(got, want):
    for m in BOOTSTRAP_METRICS:
        if np.isnan(want[m]):
            assert np.isnan(got[m]), m
        else:
            assert got[m] == pytest.approx(want[m], rel=1e-9, abs=1e-12), m


def test_weighted_metrics_equal_lead_metrics_on_the_expanded_sample():
    rng = np.random.default_rng(11)
    n = 400
    y = (rng.random(n) < 0.15).astype(int)
    p = np.round(rng.random(n), 1)  # coarse scores: long runs of tied rows
    p[:20] = [0.0, 1e-9] * 10       # tied only once clipped, as lead_metrics clips
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    w = rng.integers(0, 4, size=(5, n)).astype(float)
    for k_fraction in (0.01, 0.075, 0.4):
        got = weighted_lead_metrics(y, p, w, k_fraction)
        assert set(got) == set(BOOTSTRAP_METRICS) and all(v.shape == (5,) for v in got.values())
        for j in range(len(w)):
            _assert_same_metrics({m: got[m][j] for m in got}, _expanded_metrics(y, p, w[j], k_fraction))
            assert got["auc"][j] == pytest.approx(roc_auc_score(y, clipped, sample_weight=w[j]), rel=1e-12)


def test_weighted_top_k_takes_part_of_the_boundary_rows_copies():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.8, 0.1])  # rows 1 and 2 tie: row 1's copies come first
    w = np.array([[3.0, 4.0, 1.0, 2.0]])
    for k_fraction in (0.2, 0.5, 0.8):  # K = 2, 5, 8 of 10: inside row 0's run, row 1's run, row 3's run
        got = weighted_lead_metrics(y, p, w, k_fraction)
        _assert_same_metrics({m: got[m][0] for m in got}, _expanded_metrics(y, p, w[0], k_fraction))


def test_weighted_metrics_are_nan_where_a_replicate_lacks_a_class():
    y = np.array([1, 0, 0, 1, 0])
    p = np.array([0.9, 0.5, 0.4, 0.3, 0.2])
    w = np.array([[0, 2, 1, 0, 1], [1, 0, 0, 2, 0], [1, 1, 1, 1, 1]], dtype=float)
    got = weighted_lead_metrics(y, p, w, 0.4)
    assert np.isnan(got["auc"][:2]).all() and not np.isnan(got["auc"][2])
    assert np.isnan(got["business_recall_at_k"][0]) and np.isnan(got["lift_at_k"][0])
    assert got["precision_at_k"][0] == 0 and got["precision_at_k"][1] == 1  # the list exists either way
    assert np.isfinite(got["logloss"]).all()
    for j in range(3):
        _assert_same_metrics({m: got[m][j] for m in got}, _expanded_metrics(y, p, w[j], 0.4))


def test_owner_weights_move_an_owners_rows_together_and_are_seeded():
    rng = np.random.default_rng(0)
    groups = np.array([f"owner{i}" for i in rng.integers(0, 150, 1000)])  # ~150 owners, rows interleaved
    owners, first_row = np.unique(groups, return_index=True)
    chunks = list(owner_resample_weights(groups, 600, seed=3, chunk=64))
    assert [len(c) for c in chunks] == [64] * 9 + [24]
    w = np.concatenate(chunks)
    assert w.shape == (600, 1000) and w.dtype == np.float64
    for owner in owners[:30]:
        rows = w[:, groups == owner]
        assert (rows == rows[:, :1]).all()
    assert (w[:, first_row].sum(axis=1) == len(owners)).all()  # each replicate draws as many owners as there are
    assert w.mean() == pytest.approx(1.0, abs=0.02)
    assert np.abs(w.mean(axis=0) - 1).max() < 0.25
    assert np.array_equal(w, np.concatenate(list(owner_resample_weights(groups, 600, seed=3))))  # chunking: no effect
    assert not np.array_equal(w, np.concatenate(list(owner_resample_weights(groups, 600, seed=4))))


def _owner_sample(rng, owners, rows_per_owner):
    """Owners with a shared propensity: their rows' labels and scores are correlated."""
    groups = np.repeat(np.arange(owners), rows_per_owner)
    latent = rng.normal(size=owners)[groups]
    y = (rng.random(len(groups)) < 1 / (1 + np.exp(-(latent - 1.5)))).astype(int)
    score = 1 / (1 + np.exp(-(latent + rng.normal(size=len(groups)))))
    return y, score, groups


def test_owner_bootstrap_auc_interval_covers_the_population_auc():
    rng = np.random.default_rng(21)
    y_pop, p_pop, _ = _owner_sample(rng, 50_000, 4)  # 200,000 rows: the reference
    population_auc = roc_auc_score(y_pop, p_pop)
    covered = 0
    for _ in range(100):
        y, p, groups = _owner_sample(rng, 500, 4)  # 2,000 rows
        out = bootstrap(y, {"m": p}, groups, 0.075, replicates=200, seed=int(rng.integers(1 << 30)))
        covered += out["intervals"]["m"]["auc"].low <= population_auc <= out["intervals"]["m"]["auc"].high
    assert 80 <= covered <= 97


def test_paired_differences():
    rng = np.random.default_rng(5)
    y, strong, groups = _owner_sample(rng, 800, 3)
    weak = np.clip(strong + rng.normal(0, 0.3, len(y)), 0.001, 0.999)
    scores = {"strong": strong, "weak": weak, "same": strong.copy(), "squared": strong ** 2}
    out = bootstrap(y, scores, groups, 0.1, replicates=300, pairs=[("strong", "same"), ("strong", "weak"),
                                                                     ("weak", "strong"), ("squared", "strong")])
    diff = out["differences"]
    for metric, iv in diff[("strong", "same")].items():
        assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0), metric
    assert diff[("strong", "weak")]["auc"].excludes_zero()
    assert difference_verdict(diff[("strong", "weak")]["auc"]) == "better"
    assert difference_verdict(diff[("weak", "strong")]["auc"]) == "worse"
    assert difference_verdict(diff[("weak", "strong")]["logloss"], lower_is_better=True) == "worse"
    for metric in ("auc", "precision_at_k"):  # same ranking, other probabilities: no difference
        assert difference_verdict(diff[("squared", "strong")][metric]) == "no difference"
    iv = diff[("strong", "weak")]["auc"]
    est = out["intervals"]["strong"]["auc"].estimate - out["intervals"]["weak"]["auc"].estimate
    assert iv.estimate == pytest.approx(est) and iv.level == 0.9


def test_pairing_narrows_the_difference_of_correlated_scorers():
    rng = np.random.default_rng(8)
    y, base, groups = _owner_sample(rng, 1000, 2)
    a = np.clip(base + rng.normal(0, 0.02, len(y)), 0.001, 0.999)
    b = np.clip(base + rng.normal(0, 0.02, len(y)), 0.001, 0.999)
    out = bootstrap(y, {"a": a, "b": b}, groups, 0.1, replicates=300, pairs=[("a", "b")])
    width = {name: out["intervals"][name]["auc"].high - out["intervals"][name]["auc"].low for name in "ab"}
    unpaired = np.hypot(width["a"], width["b"])  # the difference's width were the two independent
    paired = out["differences"][("a", "b")]["auc"]
    assert paired.high - paired.low < unpaired / 5


def test_owners_with_many_identical_rows_widen_the_interval():
    rng = np.random.default_rng(13)
    y_owner, p_owner, _ = _owner_sample(rng, 150, 1)
    groups = np.repeat(np.arange(150), 20)  # every owner: 20 identical rows
    y, p = y_owner[groups], p_owner[groups]

    def auc_width(g):
        iv = bootstrap(y, {"m": p}, g, 0.1, replicates=300)["intervals"]["m"]["auc"]
        return iv.high - iv.low

    assert auc_width(groups) > 3 * auc_width(np.arange(len(y)))  # rows are not independent evidence


def test_bootstrap_results_do_not_depend_on_the_order_of_scorers_or_pairs():
    rng = np.random.default_rng(2)
    y, p, groups = _owner_sample(rng, 300, 2)
    scores = {"a": p, "b": np.round(p, 1), "c": rng.random(len(y))}
    pairs = [("a", "b"), ("c", "a")]
    one = bootstrap(y, scores, groups, 0.1, replicates=100, seed=1, pairs=pairs)
    two = bootstrap(y, dict(reversed(scores.items())), groups, 0.1, replicates=100, seed=1, pairs=pairs[::-1])
    assert one == two
    assert one != bootstrap(y, scores, groups, 0.1, replicates=100, seed=2, pairs=pairs)
    assert one["intervals"]["a"]["precision_at_k"].estimate == lead_metrics(y, p, k_for(len(y), 0.1))["precision_at_k"]


def test_difference_verdict_reads_the_interval():
    assert Interval(0.1, 0.05, 0.2, 0.9).excludes_zero()
    assert difference_verdict(Interval(0.1, 0.05, 0.2, 0.9)) == "better"
    assert difference_verdict(Interval(0.1, 0.05, 0.2, 0.9), lower_is_better=True) == "worse"
    assert difference_verdict(Interval(-0.1, -0.2, -0.05, 0.9)) == "worse"
    assert difference_verdict(Interval(0.0, -0.01, 0.02, 0.9)) == "no difference"
    assert difference_verdict(Interval(np.nan, np.nan, np.nan, 0.9)) == "no difference"
