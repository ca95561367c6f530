"""Lead metrics on hand-computed cases, including K beyond the population and ties at the cut-off."""
import numpy as np
import pytest

from remedi_spark.metrics import k_for, lead_metrics, top_k_hits


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
