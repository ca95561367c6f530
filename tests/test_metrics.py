"""Lead metrics on hand-computed cases, including K beyond the population and ties at the cut-off."""
import numpy as np
import pytest

from remedi_spark.metrics import (business_recall_at_k, curve_ks, k_for, lead_metrics, precision_at_k, ranked_curves,
                                   top_k_hits)


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
