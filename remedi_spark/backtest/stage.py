"""Stage ``backtest``: a walk-forward backtest of the lead list.

For each backtest month T (the newest ``backtest.months`` fully labelled months of ``features``):

1. copy the main root's tables, restricted in time, into T's sub-root (:mod:`.subroot`): features of
   the training months (t + 3 ≤ T) and of T, owners, purchases up to T, the oracle where it exists;
2. run the stages there, each its own run whose manifest names the backtest run as its parent:
   folds (T is the folds table's evaluation month: no model fits or early-stops on it) → train-base
   → meta-features → fusion → distill → score T → lead-list T, with the config of
   :func:`.plan.chain_config` (``backtest.models`` as the base models);
3. check that the folds table holds only months with t + 3 ≤ T besides T, read every ranker's score
   for every owner of T (:mod:`.rankers`).

Then every ranker's lead list of every month is evaluated against T's buyers with paired-bootstrap
intervals, the paired differences and the mean over the months (:mod:`.evaluate`), written to
``backtest_results`` (one partition per backtest run) and to a page of its own,
``<report dir>/<backtest run id>/backtest.html`` (the pipeline's report shows the newest run too).
Nothing is written before the config and the input tables have been checked.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..io.schemas import DataValidationError, frame_from_pandas
from ..io.store import TableStore
from ..metrics import lead_count
from ..months import parse_month
from .evaluate import METRICS, evaluate_months, list_ranking
from .plan import HORIZON, BacktestMonth, backtest_models, chain_config, labelled_months, plan_months, sub_root
from .rankers import MonthRankers, month_rankers
from .subroot import copy_tables

CHAIN = ("folds", "train-base", "meta-features", "fusion", "distill", "score", "lead-list")
TABLE = "backtest_results"


def _check_inputs(store: TableStore, first: str) -> None:
    """The tables every sub-root copies exist, and a purchase history reaches back to ``first``."""
    for table in ("features", "owners", "purchases"):
        if not store.exists(table):
            raise FileNotFoundError(f"table {table!r} does not exist at {store.path(table)}: the backtest copies it "
                                    "into each month's sub-root; run generate and features first")
    if not store.read("purchases").filter(F.col("month") <= F.lit(first)).limit(1).count():
        raise DataValidationError("purchases", [("month", f"no purchase in or before the first backtest month {first}: "
                                                          "the lead list's recent-purchase filter would read nothing")])


def _check_folds(sub: TableStore, month: BacktestMonth) -> dict[str, Any]:
    """The sub-root's folds: T is its evaluation month and every other month closed its window by T."""
    rows = sub.read("folds").groupBy("month", "oot_split", "split").count().collect()
    months = sorted({r["month"] for r in rows})
    evaluation = sorted({r["month"] for r in rows if r["oot_split"] == "test"})
    late = [m for m in months if m != month.month and parse_month(m) + HORIZON > parse_month(month.month)]
    if evaluation != [month.month] or late:
        raise RuntimeError(f"backtest {month.month}: the sub-root's folds table has evaluation months {evaluation} and "
                           f"months {late} whose label window had not closed by then; expected only {month.month} "
                           "and months t with t + 3 <= T")
    fit = sum(r["count"] for r in rows if r["oot_split"] == "train" and r["split"] == "train")
    return {"months": months, "evaluation_month": evaluation[0], "training_owner_rows": int(fit)}


def _student_list(data: MonthRankers, k: int | float, cfg: Config) -> set[int]:
    """The owners of the student's lead list as :func:`.evaluate.list_ranking` builds it."""
    f = data.frame
    k = lead_count(k, len(f))
    cap = cfg.lead_list.cap_per_value if cfg.lead_list.cap_column else None
    rank, k_list = list_ranking(f["student"].to_numpy(float), f["user_id"].to_numpy(), f["eligible"].to_numpy(), k,
                                f["cap_value"].to_numpy() if "cap_value" in f else None, cap)
    top = np.argsort(-rank, kind="stable")[:k_list]
    return {int(u) for u in f["user_id"].to_numpy()[top]}


def run_backtest(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``backtest`` (see the module docstring). Returns per month the training months, the
    chain's run ids and seconds, and every ranker's metrics; the mean over months; the table version."""
    from ..pipeline import run_stage  # the stage runner imports this module: import it when running
    from ..report.backtest import write_backtest_report

    models = backtest_models(cfg)
    plan = plan_months(labelled_months(store), cfg.backtest.months)
    _check_inputs(store, plan[0].month)
    run_id = store.run.run_id if store.run else "adhoc"
    started = time.perf_counter()
    months: dict[str, dict[str, Any]] = {}
    collected: list[MonthRankers] = []
    for i, bm in enumerate(plan):
        t0 = time.perf_counter()
        print(f"[remedi] backtest: month {bm.month} ({i + 1}/{len(plan)}), training months "
              f"{bm.training[0]}..{bm.training[-1]} ({len(bm.training)})", file=sys.stderr, flush=True)
        chain_cfg = chain_config(cfg, bm, sub_root(cfg, store.root, bm.month), models)
        copied = copy_tables(spark, store, chain_cfg, bm, parent=run_id)
        seconds = {"copy": round(time.perf_counter() - t0, 1)}
        runs = {}
        for stage in CHAIN:
            s0 = time.perf_counter()
            options = {"month": bm.month} if stage in ("score", "lead-list") else {}
            runs[stage] = run_stage(spark, chain_cfg, stage, run_id, f"backtest[{bm.month}].{stage}", **options)
            seconds[stage] = round(time.perf_counter() - s0, 1)
        sub = TableStore(spark, chain_cfg.tables.root)
        folds = _check_folds(sub, bm)
        s0 = time.perf_counter()
        data = month_rankers(spark, chain_cfg, sub, bm.month, runs["fusion"]["teacher"])
        seconds["read_rankers"] = round(time.perf_counter() - s0, 1)
        collected.append(data)
        seconds["total"] = round(time.perf_counter() - t0, 1)
        months[bm.month] = {
            "training_months": list(bm.training), "sub_root": sub.root, "copied_rows": copied, "folds": folds,
            "owners": len(data.frame), "positives": int(data.frame["y"].sum()),
            "eligible": int(data.frame["eligible"].sum()), "teacher": runs["fusion"]["teacher"]["chosen"],
            "best_base_model": runs["fusion"]["teacher"]["best_base_model"], "rankers": data.rankers,
            "student_list_is_the_lead_list": _student_list(data, cfg.lead_list.k, cfg) == data.lead_list,
            "runs": {stage: s["run_id"] for stage, s in runs.items()}, "seconds": seconds, "notes": data.notes}
    b = cfg.evaluation.bootstrap
    s0 = time.perf_counter()
    rows = evaluate_months(collected, cfg.lead_list.k, replicates=b.replicates, seed=b.seed, level=b.level,
                           cap=cfg.lead_list.cap_per_value if cfg.lead_list.cap_column else None)
    evaluate_seconds = round(time.perf_counter() - s0, 1)
    spans = "; ".join(f"{m}: {v['training_months'][0]}..{v['training_months'][-1]}" for m, v in months.items())
    for r in rows:
        trained = months[r["month"]]["training_months"] if r["month"] in months else None
        r.update(run_id=run_id, training_months=",".join(trained) if trained else spans,
                 n_training_months=len(trained) if trained else min(len(v["training_months"]) for v in months.values()))
    table = pd.DataFrame(rows)
    version = store.write_partitions(frame_from_pandas(spark, table, TABLE), TABLE, [run_id])
    records = [{"name": f"{r['month']}.{r['ranker']}", **r}  # name: the record's key in MLflow
               for r in table.drop(columns=["run_id"]).round(6).to_dict("records")]
    report = write_backtest_report(spark, cfg, store, table, run_id, months)
    return {"months": months, "models": models, "version": version, "results": records,
            "report": report, "evaluate_seconds": evaluate_seconds,
            "seconds": round(time.perf_counter() - started, 1),
            "owners": int(len(np.unique(np.concatenate([d.frame["user_id"].to_numpy() for d in collected])))),
            "rows": int(sum(len(d.frame) for d in collected))}


def _cell(r: dict[str, Any], metric: str) -> str:
    scale, digits = (100, 2) if metric in ("precision_at_k", "business_recall_at_k", "recall_at_k") else (1, 3)
    unit = "%" if scale == 100 else ""
    value, low, high = r[metric], r[f"{metric}_ci_low"], r[f"{metric}_ci_high"]
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    text = f"{scale * value:.{digits}f}{unit} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"
    if r["kind"] in ("difference", "mean_difference") and low <= 0 <= high:
        text += " no difference"
    return text


def format_backtest(summary: dict[str, Any]) -> str:
    """Console tables: per month, then the mean over months; lead-list precision, Business Recall,
    plain recall, lift and AUC with their intervals; a difference whose interval holds 0 is marked."""
    records = summary["results"]
    if not records:
        return "backtest: no rows"
    level = int(round(100 * records[0]["ci_level"]))
    lines = [f"backtest ({level}% intervals, paired bootstrap over owners, {records[0]['replicates']} replicates; "
             "Business Recall = hits / (three-month buyers / 3), so above 100% when the list catches more than a "
             "third of them; recall = hits / all three-month buyers):"]
    for month in [*summary["months"], "mean"]:
        part = [r for r in records if r["month"] == month]
        if not part:
            continue
        if month == "mean":
            head = f"mean over {len(summary['months'])} months ({part[0]['positives']:,} buyers in all)"
        else:
            m = summary["months"][month]
            head = (f"{month}: trained on {m['training_months'][0]}..{m['training_months'][-1]} "
                    f"({len(m['training_months'])} months), {m['owners']:,} owners, {m['positives']:,} buyers in "
                    f"T+1..T+3, {m['eligible']:,} eligible, K = {part[0]['k']:,}; teacher {m['teacher']}, best base "
                    f"{m['best_base_model']}")
        lines += ["", head, "| ranker | model | hits | P@K | Business Recall | recall | lift | AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in part:
            lines.append(f"| {r['ranker']} | {r['model']} | {r['hits']:.1f} | "
                         + " | ".join(_cell(r, metric) for metric in METRICS) + " |")
    lines.append(f"\nbacktest_results version {summary['version']}; report: {summary['report']}")
    return "\n".join(lines)
