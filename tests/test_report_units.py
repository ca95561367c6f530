"""Report and tracking helpers without Spark: cell formatting, tables, strict JSON, MLflow keys."""
import math

import numpy as np
import pandas as pd

from remedi_spark.io.schemas import load_schema
from remedi_spark.report.build import STUDIES, finite
from remedi_spark.report.collect import STUDY_TABLES, in_key_order
from remedi_spark.report.html import fmt, table
from remedi_spark.tracking import flatten_metrics, flatten_params, metric_key


def test_cells_format_by_column_kind():
    assert fmt("precision_at_k", 0.0387) == "3.87%"
    assert fmt("auc", 0.84123) == "0.8412"
    assert fmt("rows", 49995) == "49,995"
    assert fmt("auc", float("nan")) == "" and fmt("name", None) == ""
    assert fmt("name", "<b>") == "&lt;b&gt;"  # escaped


def test_table_greys_the_oracle_row_and_labels_columns():
    html = table([{"name": "m", "auc": 0.8}, {"name": "oracle", "auc": 0.9}], ["name", "auc"])
    assert "<th>AUC</th>" in html and '<tr class="oracle"><td>oracle</td>' in html


def test_json_numbers_are_strict():
    out = finite({"a": [float("nan"), np.float64(1.5), np.int64(2)], "b": math.inf})
    assert out == {"a": [None, 1.5, 2], "b": None}


def test_summary_numbers_flatten_to_safe_metric_keys():
    summary = {"results": [{"section": "fusion", "name": "hybrid_expert[trees_only]", "evaluation": "user_split",
                            "auc": 0.8, "rows": 10, "models": "a,b"}],
               "inference": {"speedup": 17.5, "ok": True, "none": None, "nan": float("nan")}, "month": "2024-10"}
    assert flatten_metrics(summary, "fusion") == {
        "fusion.results.fusion.hybrid_expert_trees_only_.user_split.auc": 0.8,
        "fusion.results.fusion.hybrid_expert_trees_only_.user_split.rows": 10.0,
        "fusion.inference.speedup": 17.5}
    assert metric_key("score[evaluation]", "x") == "score_evaluation_.x"


def test_config_flattens_to_section_key_params():
    params = flatten_params({"lead_list": {"k": 60000, "export_formats": ["csv"]}, "spark": {"conf": {"a": 1}}})
    assert params == {"lead_list.k": "60000", "lead_list.export_formats": '["csv"]', "spark.conf": '{"a": 1}'}


def test_every_study_table_has_a_report_section_of_its_own_columns():
    assert set(STUDIES) == set(STUDY_TABLES)
    for name, (_, columns, _) in STUDIES.items():
        schema = load_schema(name).names
        stored = [c for c in columns if not c.endswith(("_ci", "_diff_text"))]
        shown = {c: c.removesuffix("_ci") + "_ci_low" if c.endswith("_ci") else c.removesuffix("_text")
                 for c in columns if c not in stored}  # display column -> the stored column it is made from
        assert "variant" in schema and set(stored) <= set(schema) and set(shown.values()) <= set(schema), name


def test_study_differences_read_no_difference_when_the_interval_holds_0():
    from remedi_spark.report.build import study_display

    rows = pd.DataFrame({"variant": ["full", "a", "b"], "auc": [0.8, 0.78, 0.75],
                         "auc_ci_low": [0.77, 0.75, 0.72], "auc_ci_high": [0.83, 0.81, 0.78],
                         "auc_diff": [np.nan, -0.02, -0.05], "auc_diff_ci_low": [np.nan, -0.05, -0.08],
                         "auc_diff_ci_high": [np.nan, 0.01, -0.02],
                         "logloss": [0.1, 0.1, 0.1], "logloss_ci_low": [0.09] * 3, "logloss_ci_high": [0.11] * 3,
                         "logloss_diff": [np.nan, -0.002, 0.001], "logloss_diff_ci_low": [np.nan, -0.003, 0.0005],
                         "logloss_diff_ci_high": [np.nan, -0.001, 0.002]})
    shown = study_display(rows)
    assert shown["auc_diff_text"].tolist() == ["", "-0.0200 [-0.0500, +0.0100] no difference",
                                               "-0.0500 [-0.0800, -0.0200] worse"]
    assert [t.split()[-1] if t else "" for t in shown["logloss_diff_text"]] == ["", "better", "worse"]  # lower is better
    assert shown["auc_ci"].tolist()[0] == "[0.7700, 0.8300]"


def test_study_rows_come_in_the_order_the_schema_lists_the_variants():
    rows = pd.DataFrame({"run_id": ["r"] * 3, "variant": ["without_aux", "flat_heads", "full"], "auc": [0.1, 0.2, 0.3]})
    ordered = in_key_order(rows, "hm3_study")
    assert list(ordered["variant"]) == ["full", "without_aux", "flat_heads"]
    assert list(ordered["auc"]) == [0.3, 0.1, 0.2]


def _fusion_row(section, name, evaluation, logloss, low, high, teacher=False):
    return {"section": section, "name": name, "evaluation": evaluation, "rows": 100, "positives": 10,
            "precision_at_k": 0.1, "precision_at_k_ci_low": 0.05, "precision_at_k_ci_high": 0.15, "auc": 0.8,
            "auc_ci_low": -0.01 if section == "difference" else 0.75, "auc_ci_high": 0.85,
            "logloss": logloss, "logloss_ci_low": low, "logloss_ci_high": high, "teacher": teacher}


def test_differences_get_verdicts_and_the_teacher_check_reads_the_guarded_rows():
    from remedi_spark.report.build import teacher_check, with_intervals

    fr = pd.DataFrame([
        _fusion_row("fusion", "hybrid_expert", "meta_oof", 0.02, 0.018, 0.022, teacher=True),
        _fusion_row("difference", "hybrid_expert - lgbm", "meta_oof", 0.001, -0.001, 0.003),
        _fusion_row("difference", "hybrid_expert - simple_average", "meta_oof", -0.004, -0.006, -0.002),
        _fusion_row("difference", "hybrid_expert - hybrid_expert[paper]", "meta_oof", 0.003, 0.001, 0.005),
    ])
    shown = with_intervals(fr).set_index("name")
    assert shown.loc["hybrid_expert - lgbm", "logloss_verdict"] == "no difference"
    assert shown.loc["hybrid_expert - simple_average", "logloss_verdict"] == "better"  # lower log loss
    assert shown.loc["hybrid_expert - hybrid_expert[paper]", "logloss_verdict"] == "worse"
    assert shown.loc["hybrid_expert", "logloss_verdict"] == "" and shown.loc["hybrid_expert", "auc_ci"] == "[0.7500, 0.8500]"
    assert shown.loc["hybrid_expert", "precision_at_k_ci"] == "[5.00%, 15.00%]"
    check = teacher_check(fr, "lgbm")
    assert check["teacher"] == "hybrid_expert" and len(check["comparisons"]) == 3
    assert not check["weak"]  # worse than a head variant is not what the guard watches
    worse = fr.assign(logloss_ci_low=lambda d: np.where(d["name"] == "hybrid_expert - lgbm", 0.0005, d["logloss_ci_low"]))
    assert teacher_check(worse, "lgbm")["weak"]


def test_month_by_month_metrics_carry_paired_intervals_over_owners():
    from remedi_spark.config import BootstrapSettings
    from remedi_spark.report.collect import monthly_metrics

    rng = np.random.default_rng(3)
    n = 4000
    y = (rng.random(n) < 0.05).astype(int)
    frame = pd.DataFrame({"user_id": np.arange(n) % 2000, "month": np.where(np.arange(n) < 2000, "2024-06", "2024-07"),
                          "y": y, "student": y * 0.5 + rng.random(n), "teacher": rng.random(n)})
    settings = BootstrapSettings(replicates=200, seed=7, level=0.9)
    rows = monthly_metrics(frame, 0.075, settings)
    assert len(rows) == 4 and set(rows["scorer"]) == {"student", "teacher"}
    for metric in ("auc", "precision_at_k", "logloss"):
        assert (rows[f"{metric}_ci_low"] <= rows[metric]).all() and (rows[metric] <= rows[f"{metric}_ci_high"]).all()
    student, teacher = rows[rows["scorer"] == "student"], rows[rows["scorer"] == "teacher"]
    assert (student["auc_ci_low"].to_numpy() > teacher["auc_ci_high"].to_numpy()).all()  # informative vs noise
    assert "auc_ci_low" not in monthly_metrics(frame, 0.075)  # without settings: point estimates only
