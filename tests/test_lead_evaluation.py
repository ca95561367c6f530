"""Lead-list evaluation without Spark: the list's numbers, the oracle's list, and intervals that do not
depend on the order in which Spark happens to return the month's rows."""
import numpy as np
import pandas as pd
import pytest

from remedi_spark.config import replace
from remedi_spark.leads.lead_list import lead_list_evaluation, list_first_ranking


def _month(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    p_3m = rng.beta(1, 30, n)
    y = (rng.random(n) < p_3m).astype(int)
    score = np.round(p_3m + rng.normal(0, 0.01, n), 3)  # rounded: many ties, as a GBDT's scores have
    eligible = rng.random(n) > 0.1
    listed = np.zeros(n, dtype=bool)
    listed[np.flatnonzero(eligible)[np.argsort(-score[eligible], kind="stable")[:300]]] = True
    return pd.DataFrame({"user_id": rng.permutation(n) + 1000, "y": y, "score": score, "eligible": eligible,
                         "listed": np.where(listed, True, None), "p_3m": p_3m})


@pytest.fixture
def cfg(base_cfg):
    return replace(base_cfg, evaluation={"bootstrap": {"replicates": 300, "seed": 5, "level": 0.9}})


def test_the_list_and_the_oracle_list_are_counted_as_listed(cfg):
    pdf = _month()
    out = lead_list_evaluation(pdf, "2024-10", cfg)
    listed = pdf["listed"].eq(True)
    assert out["leads"] == 300 and out["hits"] == pdf.loc[listed, "y"].sum()
    assert out["precision"] == pytest.approx(out["hits"] / 300)
    assert out["business_recall"] == pytest.approx(out["hits"] / (pdf["y"].sum() / 3))
    oracle = pdf[pdf["eligible"]].nlargest(300, "p_3m")  # the same filters, the same size, by the true probability
    assert out["oracle_hits"] == oracle["y"].sum()
    for name in ("precision", "oracle_precision", "recall"):
        assert out[f"{name}_ci_low"] <= out[name] <= out[f"{name}_ci_high"]
    assert out["difference_ci_low"] <= out["difference"] <= out["difference_ci_high"]


def test_the_evaluation_does_not_depend_on_the_order_of_the_rows(cfg):
    pdf = _month(seed=1)
    first = lead_list_evaluation(pdf, "2024-10", cfg)
    shuffled = lead_list_evaluation(pdf.sample(frac=1.0, random_state=3), "2024-10", cfg)
    assert shuffled == pytest.approx(first, nan_ok=True)


def test_the_ranking_puts_the_list_first_then_the_other_eligible_owners():
    listed = np.array([False, True, False, True, False])
    eligible = np.array([True, True, False, True, True])
    score = np.array([0.9, 0.1, 0.99, 0.2, 0.5])
    ranking = list_first_ranking(listed, eligible, score, user_id=np.array([5, 4, 3, 2, 1]))
    assert np.argsort(-ranking).tolist() == [3, 1, 0, 4, 2]  # listed by score, eligible by score, then the rest
    tied = list_first_ranking(np.zeros(3, bool), np.ones(3, bool), np.zeros(3), user_id=np.array([9, 7, 8]))
    assert np.argsort(-tied).tolist() == [1, 2, 0]  # equal scores: lower owner id first
    assert len(np.unique(ranking)) == 5 and ranking.min() > 0 and ranking.max() < 1
