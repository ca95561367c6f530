"""One self-contained HTML page (inline CSS, figures as data URIs) from the report's numbers."""
from __future__ import annotations

import base64
import html
import math
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#666;font-size:.9rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.86rem}
th,td{padding:.25rem .6rem;border-bottom:1px solid #e5e5e5;text-align:right}
th{background:#f5f5f5;position:sticky;top:0}td:first-child,th:first-child{text-align:left}
tr.oracle td{color:#777;font-style:italic}tr.best td{font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs figure{margin:0;flex:1 1 460px}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.82rem;color:#555}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:.5rem .8rem}
.kpi{display:flex;gap:1rem;flex-wrap:wrap}.kpi div{background:#f6f8fa;padding:.6rem 1rem;border-radius:6px}
.kpi b{display:block;font-size:1.3rem}
"""

LABELS = {"precision_at_k": "P@K", "business_recall_at_k": "Business Recall@K", "lift_at_k": "Lift@K",
          "auc": "AUC", "logloss": "LogLoss", "share_of_oracle": "P@K / oracle", "k": "K",
          "corr_vs_teacher": "corr. vs teacher", "rank_corr_vs_teacher": "rank corr. vs teacher",
          "mse_vs_teacher": "MSE vs teacher", "seconds_per_1000": "s / 1,000 owners", "best_iteration": "trees",
          "read_version": "read version", "written_version": "written version", "run_id": "run id",
          "precision_at_k_ci": "P@K interval", "auc_ci": "AUC interval", "logloss_ci": "LogLoss interval",
          "precision_at_k_verdict": "P@K verdict", "auc_verdict": "AUC verdict", "logloss_verdict": "LogLoss verdict",
          "oracle_hits": "oracle hits", "oracle_precision": "oracle precision", "business_recall": "business recall",
          "spearman": "Spearman", "top_k_overlap": "top-K overlap", "top_k_shared": "shared of top K"}
PERCENT = {"lead_list.precision", "lead_list.business_recall", "ranking.precision_at_k", "precision_at_k", "business_recall_at_k", "precision", "oracle_precision", "business_recall",
           "share_of_oracle", "share", "p_at_k_challenger", "p_at_k_champion", "top_k_overlap"}
FOUR = {"spearman", "auc_h1", "auc_h2", "auc_h3", "knowledge_abundance", "ranking.auc", "psi", "max_feature_psi", "score_psi", "auc", "logloss", "mse_vs_teacher", "corr_vs_teacher", "rank_corr_vs_teacher", "ka_mean", "seconds_per_1000",
        "mean_score"}


def fmt(column: str, value: Any) -> str:
    """One cell: percentages, 4-decimal scores, thousands separators, blanks for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if column in PERCENT:
        return f"{100 * value:.2f}%"
    if column in FOUR:
        return f"{value:.4f}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4f}"
    return f"{int(value):,}"


def table(records: list[dict[str, Any]], columns: list[str], highlight: str | None = None) -> str:
    """An HTML table of ``columns`` from ``records``; the oracle row greyed, ``highlight`` bold."""
    head = "".join(f"<th>{html.escape(LABELS.get(c, c))}</th>" for c in columns)
    body = []
    for r in records:
        css = "oracle" if r.get("name") == "oracle" or r.get("scorer") == "oracle" else (
            "best" if highlight is not None and r.get("name") == highlight else "")
        cells = "".join(f"<td>{fmt(c, r.get(c))}</td>" for c in columns)
        body.append(f'<tr class="{css}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def page(title: str, sections: list[tuple[str, str]], meta: str) -> str:
    """The whole document: a title, a meta line and ``(heading, inner html)`` sections."""
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p class='meta'>{meta}</p>"]
    parts += [f"<section><h2>{html.escape(h)}</h2>{inner}</section>" for h, inner in sections]
    parts.append("</body></html>")
    return "\n".join(parts)
