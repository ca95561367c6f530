"""Command line: ``python -m remedi_spark <stage> --conf conf/local.yaml [--set key=value ...]``.

The same ``main`` backs ``jobs/<stage>.py`` for spark-submit and Databricks jobs. The config
is loaded and checked before Spark starts, so a typo fails in a second, not after the session:
bad input is one line on stderr and exit status 2, never a traceback.

The console shows what a person reads: the log file's path, a progress line per stage, model and
fold (:mod:`.progress`) and the results. Everything else (Spark's log4j output, native LightGBM and
SynapseML lines, library warnings, Python logging) goes to the full log,
``<tables.root>/logs/<stage>-<timestamp>.log``, which also gets every console line. ``--verbose``
leaves that chatter on the console (the output of the JVM then goes to the console only).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .log_streams import Tee
from .io.schemas import DataValidationError
from .months import parse_month, parse_month_spec

DESCRIPTIONS = {
    "generate": "simulate owners, monthly activity, purchases and the oracle (synthetic data)",
    "features": "build per user-month features and T+1..T+3 labels from the raw tables",
    "folds": "assign user-grouped, stratified CV folds and the evaluation splits",
    "train-base": "train the base models out-of-fold, refit them, write OOF predictions and held-out metrics",
    "tune": "hyperparameter search (Optuna TPE) for LightGBM base models and students on training owners only; "
            "tuning_results table and a config overlay conf/tuned/<profile>.yaml",
    "kdef-study": "KDEF K-table: K = 1..4 sub-networks with distillation vs the same nets trained independently",
    "kaml-study": "KAML ablations: with/without open-window months, with/without ranking loss, shared vs "
                  "independent horizon heads, vs an MLP",
    "hm3-study": "HM3 ablations: the behaviour-funnel model vs without auxiliary tasks and with flat heads",
    "meta-features": "pivot the OOF predictions and compute REMEDI's relative meta-features (Algorithm 1)",
    "fusion": "train the hybrid-expert teacher and the fusion baselines on OOF rows; results table and ablations",
    "distill": "distill the teacher into one LightGBM student (and the Table 4 ablations); save the student",
    "promote": "challenger vs champion on the evaluation month: alias champion moves to the newly registered "
               "student when the lower end of its P@K difference interval is >= -tracking.promotion_margin",
    "score": "score every owner of a month with the student (scores table, replaced per month)",
    "lead-list": "top-K lead list of a scored month after the business filters, with reasons; CRM export",
    "report": "HTML report, PNG figures and JSON of every number for a pipeline run (Tables 1-4, curves, data versions)",
    "monitor": "realized precision/recall of closed months, feature and score drift (PSI), retraining decision "
               "(exit status monitoring.retrain_exit_code when retraining is due)",
    "monitor-demo": "simulated months with a behaviour shift: pipeline, then score, lead list and monitor every "
                    "later month (`make monitor-demo` on conf/monitor_demo.yaml)",
    "backtest": "walk-forward backtest of the lead list: per month T of the last backtest.months, the chain trained "
                "on months t with t + 3 <= T only, T's lead list vs T's buyers, with intervals (backtest_results)",
    "foundation": "generate → features → folds and print per-month rows and positive rate",
    "pipeline": "the whole pipeline: foundation → base models → fusion → distillation → scoring → lead list",
    "reproduce": "re-run a recorded stage run from its manifest at the Delta versions it read, into another "
                 "root, and compare the tables it wrote (exit 1 if any differs)",
    "demo": "the whole pipeline (same as pipeline; `make demo` runs it on conf/demo.yaml): foundation → base models → fusion → distillation → scoring → lead list",
}


def _months_arg(spec: str) -> list[str] | None:
    if not spec.strip():
        return None  # an empty scheduler parameter: all months
    try:
        return parse_month_spec(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _month_arg(month: str) -> str | None:
    if not month.strip():
        return None  # an empty scheduler parameter: the default month
    try:
        parse_month(month)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return month


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remedi_spark", description="REMEDI lead-scoring pipeline on Spark")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for stage, text in DESCRIPTIONS.items():
        p = sub.add_parser(stage, help=text, description=text)
        p.add_argument("--conf", default="conf/local.yaml", help="YAML profile (default: %(default)s)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key, e.g. --set synthetic.n_users=10000 (repeatable)")
        p.add_argument("--verbose", action="store_true",
                       help="show Spark's log, LightGBM/SynapseML output and library warnings on the console "
                            "(default: only in the log file under <tables.root>/logs; with --verbose the JVM's "
                            "output is on the console only, the Python side in both)")
        if stage in ("train-base", "meta-features", "tune"):
            p.add_argument("--models", type=lambda v: [m.strip() for m in v.split(",") if m.strip()], default=None,
                           metavar="NAMES", help="comma-separated model names from conf (default: all)")
        if stage == "tune":
            p.add_argument("--overlay", default=None, metavar="PATH",
                           help="overlay to write the best params to (default: conf/tuned/<profile>.yaml next to --conf)")
        if stage in ("score", "lead-list", "monitor"):
            p.add_argument("--month", type=_month_arg, default=None,
                           help="YYYY-MM (default: scoring.month / monitoring.month, else the newest month)")
        if stage == "promote":
            p.add_argument("--month", type=_month_arg, default=None,
                           help="YYYY-MM to compare on (default: the evaluation month of the folds table)")
            p.add_argument("--version", default=None,
                           help="registered version to promote (default: the one under alias challenger)")
        if stage == "reproduce":
            p.add_argument("--run", required=True, help="run id of a stage run (see the runs table)")
            p.add_argument("--out", required=True, help="scratch table root for the reproduction")
        if stage == "report":
            p.add_argument("--run", default=None, help="pipeline run id, or `latest` for the newest run of each stage (default: the newest pipeline run, else latest)")
        if stage == "features":
            p.add_argument("--months", type=_months_arg, default=None, metavar="SPEC",
                           help="months to (re)build: 2024-09, 2024-06..2025-01 or a comma list (default: all)")
    return parser


def format_demo(summaries: dict[str, dict[str, Any]]) -> str:
    """Human-readable demo output: rows and positive rate per month, fold sizes, run ids."""
    feats = summaries["features"]
    seen = f" (observed through {feats['observed_through']})" if feats.get("observed_through") else ""
    lines = [f"features{seen}:",
             f"  {'month':8} {'rows':>9} {'labelled':>9} {'positives':>9} {'pos. rate':>9}"]
    for month, r in feats["per_month"].items():
        rate = f"{100 * r['positive_rate']:.3f}%" if r["positive_rate"] is not None else "open"
        lines.append(f"  {month:8} {r['rows']:>9,} {r['labelled']:>9,} {r['positives']:>9,} {rate:>9}")
    folds = summaries["folds"]
    evaluation = (f"evaluation month {folds['oot_test_month']} (no model trains on it)" if folds["oot_test_month"]
                  else "no evaluation month (a single labelled month)")
    lines.append(f"folds: {len(folds['folds'])} user-grouped folds over {folds['months'][0]}..{folds['months'][-1]}, "
                 + evaluation)
    for fold, r in folds["folds"].items():
        lines.append(f"  fold {fold}: {r['users']:,} users, {r['rows']:,} rows, {r['positives']:,} positives")
    lines.append("runs: " + ", ".join(s["run_id"] for s in summaries.values()))
    return "\n".join(lines)


def format_evaluation(e: dict[str, Any]) -> str:
    """The lead list of the evaluation month against its buyers (and the oracle's list), with intervals."""
    level = f"{100 * e['ci_level']:.0f}%"

    def pct(name: str) -> str:
        return f"{100 * e[name]:.2f}% [{100 * e[f'{name}_ci_low']:.2f}, {100 * e[f'{name}_ci_high']:.2f}]"

    text = (f"evaluation month {e['month']} (no model trained on it; {e['owners']:,} owners, {e['positives']:,} "
            f"three-month buyers): lead list precision {pct('precision')} ({e['hits']} buyers in {e['leads']:,} "
            f"leads); recall {pct('recall')}; business recall {pct('business_recall')}")
    if e.get("oracle_precision") is not None:
        text += (f"; oracle list {pct('oracle_precision')} ({e['oracle_hits']}); list − oracle "
                 f"{100 * e['difference']:+.2f} points [{100 * e['difference_ci_low']:+.2f}, "
                 f"{100 * e['difference_ci_high']:+.2f}]")
    return text + f" ({level} intervals, paired bootstrap over owners)"


def format_pipeline(out: dict[str, Any]) -> str:
    """The demo's closing summary: data, base models, fusion, student, lead lists, evaluation."""
    from .distill.students import format_distill
    from .fusion.train import format_results, format_seeds, format_teacher

    lines = [format_demo({k: out[k] for k in ("generate", "features", "folds") if k in out}), "",
             "base models (AUC [interval]; oof = training owners, test = held-out owners, out_of_time = every owner "
             "of the evaluation month):"]
    for name, by_split in out["train-base"]["models"].items():
        cells = [f"{split} {r['auc']:.3f} [{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}] ({r['positives']} pos.)"
                 for split, r in by_split.items()]
        seconds = next(iter(by_split.values()))["train_seconds"]
        lines.append(f"  {name:14} " + "  ".join(cells) + f"  ({seconds:.0f} s)")
    lines += [f"  note: {n}" for n in out["train-base"].get("notes", [])]
    lines += ["", format_teacher(out["fusion"]["teacher"])]
    for evaluation in ("meta_oof", "user_split", "out_of_time"):
        lines += ["", format_results(out["fusion"]["results"], evaluation)]
    if format_seeds(out["fusion"]["results"]):
        lines += ["", format_seeds(out["fusion"]["results"])]
    lines += ["", format_distill(out["distill"]["results"], "user_split"), "",
              format_distill(out["distill"]["results"], "out_of_time"), ""]
    for key in [k for k in out if k.startswith("lead-list[")]:
        r = out[key]
        lines.append(f"{key}: {r['leads']:,} leads of {r['scored']:,} scored owners in {r['month']} "
                     f"(eligible {r['eligible']:,}; excluded {r['excluded']}); export {r['export']}")
        if r.get("skipped_filters"):
            lines.append(f"  filters skipped: {', '.join(r['skipped_filters'])}")
    if out.get("evaluation"):
        lines.append(format_evaluation(out["evaluation"]))
    if "report" in out:
        lines.append(f"report: {out['report']['report']}")
    return "\n".join(lines)


def log_path(root: str, stage: str, now: float | None = None) -> Path:
    """Where a run of ``stage`` writes its full log: ``<root>/logs/<stage>-<UTC timestamp>.log``. A
    ``dbfs:`` root goes through the ``/dbfs`` mount; a root on another file system (``s3a://``,
    ``abfss://``, ``hdfs://``) cannot take a local file: the log goes to the temp folder then."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    name = f"{stage}-{stamp}.log"
    if root.startswith("dbfs:"):
        return Path("/dbfs") / root[len("dbfs:"):].lstrip("/") / "logs" / name
    if "://" in root:
        return Path(tempfile.gettempdir()) / "remedi-logs" / name
    return Path(root).resolve() / "logs" / name


WARNINGS_ENV = "PYTHONWARNINGS"  # the warning filters a new Python process starts with
CHILD_WARNINGS = "ignore::FutureWarning"


@contextmanager
def console(path: Path, verbose: bool) -> Iterator[None]:
    """Inside the block: stdout and stderr also go to the log file ``path``, Python logging goes to it
    at INFO (to the console only from ERROR on, INFO with ``verbose``), warnings go to the log
    (also to the console with ``verbose``), MLflow's INFO lines stay off the console unless
    ``verbose``. A failure's traceback is written to the log before it leaves the block. Everything
    is put back afterwards (``main`` may run inside another program, e.g. pytest)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", buffering=1, encoding="utf-8")
    root = logging.getLogger()
    saved = (sys.stdout, sys.stderr, root.level, os.environ.get("MLFLOW_LOGGING_LEVEL"), os.environ.get(WARNINGS_ENV))
    file_handler = logging.StreamHandler(log)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console_handler = logging.StreamHandler(saved[1])
    console_handler.setLevel(logging.INFO if verbose else logging.ERROR)
    root.addHandler(file_handler)
    root.addHandler(console_handler)
    root.setLevel(logging.INFO)
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        # Child processes (TorchDistributor's workers, Petastorm's readers) write straight to the console,
        # not through this block's warning capture: petastorm 0.13.1 on pyarrow 14 warns about deprecated
        # pyarrow APIs there on every launch. Their FutureWarnings are off unless verbose.
        os.environ.setdefault(WARNINGS_ENV, CHILD_WARNINGS)
    sys.stdout, sys.stderr = Tee(saved[0], log), Tee(saved[1], log, quiet=not verbose)
    try:
        with warnings.catch_warnings():
            logging.captureWarnings(True)  # py.warnings: to the file, to the console with --verbose only
            yield
    except BaseException as exc:
        if not isinstance(exc, (SystemExit, KeyboardInterrupt)):
            log.write(traceback.format_exc())
        raise
    finally:
        logging.captureWarnings(False)
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved[0], saved[1]
        root.removeHandler(file_handler)
        root.removeHandler(console_handler)
        root.setLevel(saved[2])
        for name, value in (("MLFLOW_LOGGING_LEVEL", saved[3]), (WARNINGS_ENV, saved[4])):
            if value is None:
                os.environ.pop(name, None)
        log.close()


def main(argv: list[str] | None = None) -> int:
    """Run one stage; exit 0 on success, 2 on bad command-line input, a config or input error (one
    line on stderr naming what is wrong, before Spark starts when the config or an argument is at fault)."""
    args = build_parser().parse_args(argv)  # bad arguments: argparse's usage line and exit 2
    try:
        return _run(args)
    except (ConfigError, DataValidationError, FileNotFoundError) as exc:
        print(f"remedi_spark {args.stage}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    cfg = load_config(args.conf, args.set)
    if args.stage == "tune":  # the models to search, before the session starts
        from .tuning.stage import choose

        choose(cfg, args.models)
    path = log_path(cfg.tables.root, args.stage)
    print(f"[remedi] {args.stage}: full log in {path}" + ("" if args.verbose else " (--verbose: on the console too)"),
          file=sys.stderr, flush=True)
    try:
        with console(path, args.verbose):
            return _run_stage(args, cfg, path)
    except (ConfigError, DataValidationError, FileNotFoundError):
        raise  # main prints the one line
    except Exception:
        print(f"[remedi] {args.stage}: failed; the full log is {path}", file=sys.stderr, flush=True)
        raise


def _run_stage(args: argparse.Namespace, cfg: Config, path: Path) -> int:
    from .pipeline import run_foundation, run_stage  # imports pyspark: after the cheap checks
    from .spark import get_spark

    spark = get_spark(cfg.spark, app_name=f"remedi-{args.stage}", log_file=None if args.verbose else str(path))
    if args.stage == "foundation":
        print(format_demo(run_foundation(spark, cfg)))
        return 0
    if args.stage == "monitor-demo":
        from .monitoring.demo import format_monitor_demo, run_monitor_demo

        print(format_monitor_demo(run_monitor_demo(spark, cfg)))
        return 0
    if args.stage == "reproduce":
        from .reproduce import reproduce_run

        result = reproduce_run(spark, cfg.tables.root, args.run, args.out)
        print(json.dumps(result, indent=2, default=str))
        return 0 if result["identical"] else 1
    if args.stage in ("pipeline", "demo"):
        from .pipeline import run_pipeline

        print(format_pipeline(run_pipeline(spark, cfg)))
        return 0
    options = {"months": args.months} if args.stage == "features" else {}
    if args.stage in ("train-base", "meta-features"):
        options = {"models": args.models}
    if args.stage == "tune":
        from .tuning.output import default_overlay_path

        options = {"models": args.models, "profile": args.conf,
                   "overlay": args.overlay or str(default_overlay_path(args.conf))}
    if args.stage in ("score", "lead-list", "monitor"):
        options = {"month": args.month}
    if args.stage == "report":
        options = {"run": args.run}
    if args.stage == "promote":
        options = {"month": args.month, "version": args.version}
    summary = run_stage(spark, cfg, args.stage, **options)
    print(json.dumps(summary, indent=2, default=str))
    if args.stage == "report":
        print(f"report: {summary['report']}")
    if args.stage == "monitor":
        from .monitoring.monitor import format_monitor, publish_decision

        print(format_monitor(summary))
        publish_decision(spark, summary)
        return cfg.monitoring.retrain_exit_code if summary["retrain"] else 0
    if args.stage == "kdef-study":
        from .training.kdef_study import format_k_table, format_training

        print(format_k_table(summary["table"]) + "\n\n" + format_training(summary["table"]))
    if args.stage == "kaml-study":
        from .training.kaml_study import format_kaml_table

        print(format_kaml_table(summary["table"]))
    if args.stage == "hm3-study":
        from .training.hm3_study import format_hm3_table

        print(format_hm3_table(summary["table"]))
    if args.stage == "fusion":
        from .fusion.train import format_results, format_seeds, format_teacher

        print(format_teacher(summary["teacher"]))
        for evaluation in ("meta_oof", "user_split", "out_of_time"):
            print(format_results(summary["results"], evaluation))
        print(format_seeds(summary["results"]))
    if args.stage == "distill":
        from .distill.students import format_distill

        print(format_distill(summary["results"], "user_split"))
        print(format_distill(summary["results"], "out_of_time"))
    if args.stage == "tune":
        from .tuning.stage import format_tuning

        print(format_tuning(summary))
    if args.stage == "backtest":
        from .backtest.stage import format_backtest

        print(format_backtest(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
