"""The report's "Diversity of the base models" section: rank correlations and top-K overlaps of the
base models' OOF predictions, on hand-made frames whose answers are known by construction."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from remedi_spark.report.diversity import (FIGURE, diversity_numbers, diversity_section, spearman_matrix,
                                           top_k_overlap)


def _matrix(n: int = 400, seed: int = 0, **models: np.ndarray) -> pd.DataFrame:
    """An OOF matrix of ``n`` rows: 100 owners over several months, a label, and the given predictions."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user_id": np.arange(n) % 100, "month": [f"2024-{1 + i // 100:02d}" for i in range(n)],
                          "y": (rng.random(n) < 0.1).astype(int)})
    for name, p in models.items():
        frame[f"p_{name}"] = p
    return frame


def _pair(numbers: dict, a: str, b: str) -> dict:
    return next(r for r in numbers["pairs"] if {r["a"], r["b"]} == {a, b})


def test_identical_rankings_correlate_1_and_share_the_whole_top_k():
    p = np.random.default_rng(1).random(400)
    numbers = diversity_numbers(_matrix(a=p, b=p ** 3, c=np.log(p)), 0.1)  # monotone transforms: the same ranking
    for a, b in (("a", "b"), ("a", "c"), ("b", "c")):
        pair = _pair(numbers, a, b)
        assert pair["spearman"] == pytest.approx(1.0)
        assert pair["top_k_overlap"] == 1.0 and pair["top_k_shared"] == numbers["k"] == 40
    assert numbers["spearman_min"] == pytest.approx(1.0) and numbers["pairs_in_paper_range"] == 0


def test_reversed_rankings_correlate_minus_1_and_share_nothing_below_half():
    p = np.random.default_rng(2).random(400)
    numbers = diversity_numbers(_matrix(up=p, down=1 - p), 0.3)  # K = 120 < 200 rows: the two lists are disjoint
    pair = _pair(numbers, "up", "down")
    assert pair["spearman"] == pytest.approx(-1.0)
    assert pair["top_k_overlap"] == 0.0 and pair["top_k_shared"] == 0


def test_independent_rankings_are_uncorrelated_and_overlap_by_chance():
    rng = np.random.default_rng(3)
    n = 20_000
    numbers = diversity_numbers(_matrix(n, a=rng.random(n), b=rng.random(n)), 0.2)
    pair = _pair(numbers, "a", "b")
    assert abs(pair["spearman"]) < 4 / np.sqrt(n)  # sd of Spearman's rho under independence: 1/sqrt(n - 1)
    # two independent top-20% lists share about 20% of their rows (hypergeometric sd ~ 0.006 here)
    assert pair["top_k_overlap"] == pytest.approx(0.2, abs=0.025)


def test_a_hand_counted_overlap():
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    b = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.4])  # top 2: rows {0, 2}; a's: {0, 1}
    c = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])  # top 2: rows {4, 5}
    overlap = top_k_overlap(np.column_stack([a, b, c]), 2)
    np.testing.assert_array_equal(overlap, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]])
    # ties at the cut keep the row order: a's top 60 are its first 60 tied rows, the same as a ranking
    # that breaks its ties by row order
    tied = np.where(np.random.default_rng(0).random(200) < 0.6, 0.5, 0.1)
    by_order = tied - 1e-9 * np.arange(200)
    assert top_k_overlap(np.column_stack([tied, by_order]), 60)[0, 1] == 1.0


def test_spearman_matrix_agrees_with_scipy_also_with_ties():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 1))
    preds = np.round(z + rng.normal(size=(500, 4)) * [0.3, 1.0, 2.0, 5.0], 1)  # rounded: many ties
    np.testing.assert_allclose(spearman_matrix(preds), spearmanr(preds).statistic, atol=1e-12)
    constant = spearman_matrix(np.column_stack([preds[:, 0], np.full(500, 0.3)]))
    assert np.isnan(constant[0, 1]) and np.isnan(constant[1, 1]) and constant[0, 0] == 1.0


def test_rows_owners_and_positives_are_those_every_model_predicted():
    rng = np.random.default_rng(5)
    frame = _matrix(a=rng.random(400), b=rng.random(400))
    frame.loc[[3, 7], "p_b"] = np.nan  # rows b did not predict
    frame.loc[11, "y"] = np.nan        # a row without a label
    numbers = diversity_numbers(frame, 0.1)
    kept = frame.drop(index=[3, 7, 11])
    assert numbers["rows"] == 397 and numbers["incomplete_rows"] == 3 and numbers["k"] == 40
    assert numbers["positives"] == int(kept["y"].sum()) and numbers["owners"] == 100
    assert numbers["models"] == ["a", "b"] and len(numbers["pairs"]) == 1


def test_fewer_than_two_models_skip_the_section_with_a_note():
    one = diversity_numbers(_matrix(a=np.random.default_rng(6).random(400)), 0.1)
    assert one["models"] == ["a"] and "at least 2" in one["skipped"]
    [(title, inner)] = diversity_section(one, {})
    assert title == "Diversity of the base models" and "Skipped" in inner and "<table" not in inner
    assert "no meta_features table" in diversity_numbers(None, 0.1)["skipped"]
    assert diversity_section(None, {}) == []


def test_section_shows_the_pairs_figure_and_the_rows_behind_them():
    from remedi_spark.report import figures

    rng = np.random.default_rng(7)
    z = rng.random(400)
    numbers = diversity_numbers(_matrix(a=z, b=z + 0.3 * rng.random(400), c=rng.random(400)), 0.1)
    png = figures.diversity_heatmaps(numbers["models"], numbers["spearman"], numbers["top_k_overlap"], numbers["k"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    [(_, inner)] = diversity_section(numbers, {FIGURE: png})
    assert "<img" in inner and inner.count("<tr") == 1 + 3  # header + one row per pair
    assert f"{numbers['rows']:,} rows of 100 owners, {numbers['positives']:,} positive rows" in inner
    assert inner.index("<td>a vs b</td>") < inner.index("<td>a vs c</td>")  # most correlated pair first
    json.dumps(numbers, allow_nan=False)  # plain JSON as the report writes it


def _page_numbers(diversity: dict) -> dict:
    """The least a report page needs besides the section under test: no rows in any other section."""
    from remedi_spark.report.build import EVALUATIONS, TABLES

    tables = {key: {e: [] for e in EVALUATIONS} for key in TABLES}
    return {"warnings": [], "teacher": {"teacher": "hybrid_expert", "weak": False, "comparisons": []},
            "evaluation": {"month": "2024-10", "rows": 1, "positives": 0, "k": 1, "scorers": []},
            "k_fraction": 0.075, "ci_level": 0.9, "tables": {**tables, "distillation": {}}, "seeds": [],
            "studies": {}, "monthly": [], "monitoring": None, "lead_list": None,
            "data_versions": {"tables": {}, "by_stage": []}, "pipeline_run_id": "r", "pipeline_started_at": "t",
            "generated_at": "t", "diversity": diversity}


def test_the_report_page_carries_the_section_or_its_note():
    from remedi_spark.report.build import FIGURES, finite, render_html

    rng = np.random.default_rng(8)
    p = rng.random(400)
    numbers = diversity_numbers(_matrix(a=p, b=p, c=rng.random(400)), 0.1)
    pngs = {name: b"png" for name in FIGURES if name != "importance"}
    page = render_html(_page_numbers(numbers), pngs)
    assert "<h2>Diversity of the base models</h2>" in page and FIGURES[FIGURE] in page
    assert "<td>a vs b</td><td>1.0000</td><td>100.00%</td>" in page
    skipped = render_html(_page_numbers(diversity_numbers(_matrix(a=p), 0.1)), pngs)
    assert "<h2>Diversity of the base models</h2><p class='meta'>Skipped:" in skipped
    json.dumps(finite(_page_numbers(numbers)), allow_nan=False)


def test_oof_matrix_reads_the_training_owners_oof_rows_with_their_labels(spark, tmp_path):
    from remedi_spark.io.store import TableStore
    from remedi_spark.report.collect import oof_matrix

    store = TableStore(spark, str(tmp_path / "tables"))
    # meta_features: the pivoted OOF predictions with the label (and Algorithm 1's columns, e.g. mean)
    rows = [(u, "2024-05", 0 if u < 3 else -1, "train" if u < 3 else "test", int(u == 2), 0.1 * (u + 1),
             0.4 - 0.1 * u, 0.5, 0.3) for u in range(4)]
    spark.createDataFrame(rows, "user_id long, month string, fold int, split string, y int, p_lgbm double, "
                                "p_mlp double, p_stale double, mean double") \
        .write.format("delta").save(store.path("meta_features"))
    frame = oof_matrix(store, {}, ["lgbm", "mlp", "absent"]).sort_values("user_id")
    assert sorted(frame.columns) == ["month", "p_lgbm", "p_mlp", "user_id", "y"]  # no stale, no absent model
    assert frame["user_id"].tolist() == [0, 1, 2]  # the held-out owner (fold -1) is not an OOF row
    assert frame["y"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(frame["p_mlp"], [0.4, 0.3, 0.2])
    numbers = diversity_numbers(frame, 0.34)
    assert numbers["rows"] == 3 and numbers["positives"] == 1 and _pair(numbers, "lgbm", "mlp")["spearman"] == pytest.approx(-1.0)
    assert oof_matrix(TableStore(spark, str(tmp_path / "empty")), {}, ["lgbm"]) is None
