"""``make monitor-demo``: a simulated world whose digital activity shifts after training, the
pipeline trained before the shift, then every later month scored, listed and monitored.

The months before the shift come back stable (keep the model); from the shift on the digital
features and the score drift past the PSI bands, so the monitor asks for retraining. (The realized
lead-list precision of the 20k-owner world rests on about 100 buyers a month: its intervals do not
separate the shifted months from the stable ones.) The report is rebuilt at the end with the
monitoring section.
"""
from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from ..config import Config, ConfigError
from ..months import month_range
from ..pipeline import run_pipeline, run_stage


def run_monitor_demo(spark: SparkSession, cfg: Config) -> dict[str, Any]:
    """Pipeline on ``folds.months``, then score → lead list → monitor for each later closed month."""
    if not cfg.folds.months or not cfg.synthetic.drift_month:
        raise ConfigError("monitor-demo needs folds.months (the training months) and synthetic.drift_month; "
                          "see conf/monitor_demo.yaml")
    out = run_pipeline(spark, cfg)
    pipeline_id = out["pipeline_run_id"]
    observed = out["features"]["observed_through"]
    first = month_range(max(cfg.folds.months), observed)[1]
    closed = [m for m, r in out["features"]["per_month"].items()
              if first <= m and r["labelled"] == r["rows"] and r["rows"] > 0]
    monitored: dict[str, Any] = {}
    for month in sorted(closed):
        if month != out["evaluation"]["month"]:
            run_stage(spark, cfg, "score", pipeline_id, f"score.{month}", month=month)
            run_stage(spark, cfg, "lead-list", pipeline_id, f"lead-list.{month}", month=month)
        monitored[month] = run_stage(spark, cfg, "monitor", pipeline_id, f"monitor.{month}", month=month)
    report = run_stage(spark, cfg, "report", pipeline_id, "report.monitoring", run=pipeline_id)
    return {"pipeline": out, "monitor": monitored, "report": report, "drift_month": cfg.synthetic.drift_month}


def format_monitor_demo(result: dict[str, Any]) -> str:
    """One line per monitored month: realized precision, drift, decision; then the report path."""
    lines = [f"monitoring after training (behaviour shifts from {result['drift_month']}):",
             f"  {'month':8} {'lead list P':>11} {'ranking AUC':>11} {'max PSI':>8} {'PSI≥0.25':>8} "
             f"{'score PSI':>9}  decision"]
    for month, s in result["monitor"].items():
        realized = s["realized"].get(month, {})
        lead = realized.get("lead_list.precision")
        auc = realized.get("ranking.auc")
        lines.append(f"  {month:8} {(f'{100 * lead:.2f}%' if lead is not None else '-'):>11} "
                     f"{(f'{auc:.4f}' if auc is not None else '-'):>11} {s['feature_psi']['max']:>8.3f} "
                     f"{s['feature_psi']['significant']:>8} {s['score_psi']:>9.3f}  "
                     f"{'RETRAIN' if s['retrain'] else 'keep'}")
        lines += [f"{'':12}- {reason}" for reason in s["reasons"][:3]]
    lines.append(f"report: {result['report']['report']}")
    return "\n".join(lines)
