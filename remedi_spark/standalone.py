"""Cluster mode on this machine: a Spark standalone master and workers on 127.0.0.1, the pipeline
stages submitted one by one with ``spark-submit``, and a comparison with local mode.

``python -m remedi_spark.standalone --conf conf/cluster_demo.yaml`` (``make cluster-demo``):

1. builds the project wheel (``pip wheel --no-deps``) — executors import the shipped wheel
   (``--py-files``), which comes first on their ``PYTHONPATH``;
2. starts a master and ``--workers`` workers (one core each, so every barrier stage — native
   LightGBM, TorchDistributor — runs one task per worker) from the installed pyspark;
3. submits each stage as its own application with the Delta/SynapseML jars from ``make setup``
   (``--jars``): nothing survives in driver memory between stages, models and feature maps are
   read back from the table root;
4. runs the same stages in local mode on another root with the same seed, and prints row counts
   and each model's out-of-fold AUC (gated) and held-out metrics side by side;
5. stops the cluster, also when a step fails.

Pipeline stages themselves never depend on this module; it only orchestrates processes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = [("generate", "generate.py", []), ("features", "build_features.py", []), ("folds", "make_folds.py", []),
          ("train-base", "train_base_models.py", []), ("meta-features", "meta_features.py", []),
          ("fusion", "fusion.py", []), ("distill", "distill.py", []),
          ("score", "score.py", ["--month", "{oot}"]), ("lead-list", "lead_list.py", ["--month", "{oot}"]),
          ("report", "report.py", ["--run", "latest"])]
COMPARED_TABLES = ["owners", "monthly_activity", "purchases", "features", "folds", "oof_predictions",
                   "meta_features", "teacher_predictions", "scores", "lead_list"]


def spark_home() -> Path:
    """The Spark distribution inside the installed pyspark package (bin/spark-class, jars/)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except OSError:
        return -1


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.time() + 20
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


@contextmanager
def standalone_cluster(work_dir: Path, workers: int = 2, cores: int = 1, memory: str = "3g",
                       timeout: float = 90.0) -> Iterator[str]:
    """Start a master and ``workers`` workers on 127.0.0.1; yield the master URL; stop them all on
    exit (SIGTERM to each process group, SIGKILL after 20 s)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spark_class = str(spark_home() / "bin" / "spark-class")
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(work_dir / "logs"), "SPARK_WORKER_DIR": str(work_dir / "work")}
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []

    def launch(name: str, *args: str) -> None:
        log = open(work_dir / f"{name}.log", "w")
        procs.append(subprocess.Popen([spark_class, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        launch("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
               "--webui-port", str(ui))
        for i in range(workers):
            launch(f"worker{i}", "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                   "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
                   "--work-dir", str(work_dir / f"work{i}"))
        deadline = time.time() + timeout
        while _alive_workers(ui) < workers:
            dead = [p.args[1] for p in procs if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"standalone cluster did not come up ({workers} workers expected; exited: {dead}); "
                                   f"logs in {work_dir}")
            time.sleep(1)
        yield url
    finally:
        _stop(procs)


def build_wheel(out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of the project into ``out_dir``; returns the wheel's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("remedi_spark-*.whl"):
        old.unlink()
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out_dir), str(REPO)], check=True)
    return next(out_dir.glob("remedi_spark-*.whl"))


def submit(master: str, script: str, args: list[str], jars: list[str], wheel: Path, log: Path,
           extra_conf: dict[str, str] | None = None) -> None:
    """``spark-submit`` one job in client mode; raises with the log's tail when it fails."""
    conf = {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
            "spark.executor.memory": "2g", "spark.driver.memory": "3g", "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4", **(extra_conf or {})}
    cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", master, "--jars", ",".join(jars),
           "--py-files", str(wheel)]
    for key, value in conf.items():
        cmd += ["--conf", f"{key}={value}"]
    cmd += [str(REPO / "jobs" / script), *args]
    env = {**os.environ, "SPARK_HOME": str(spark_home()), "SPARK_LOCAL_IP": "127.0.0.1"}
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(f"spark-submit {script} failed with exit {proc.returncode}; last lines of {log}:\n"
                           + "\n".join(tail))


def run_stages_on_cluster(conf: str, sets: list[str], work_dir: Path, workers: int = 2) -> dict[str, float]:
    """Every stage as its own spark-submit on a fresh standalone cluster; returns seconds per stage."""
    from .spark import local_jars

    jars = local_jars(str(REPO / ".jars"))
    wheel = build_wheel(work_dir / "dist")
    seconds: dict[str, float] = {}
    with standalone_cluster(work_dir / "cluster", workers=workers) as master:
        print(f"[cluster] {workers} workers up at {master}", file=sys.stderr, flush=True)
        oot = None
        for stage, script, extra in STAGES:
            if "{oot}" in " ".join(extra):
                oot = oot or _oot_month(work_dir / "folds.log")
            args = ["--conf", conf, *[x for s in sets for x in ("--set", s)], *[a.format(oot=oot) for a in extra]]
            start = time.perf_counter()
            submit(master, script, args, jars, wheel, work_dir / f"{stage}.log")
            seconds[stage] = round(time.perf_counter() - start, 1)
            print(f"[cluster] {stage}: {seconds[stage]} s", file=sys.stderr, flush=True)
    return seconds


def _oot_month(folds_log: Path) -> str:
    """The out-of-time month the folds job chose, from the summary it printed (no session here)."""
    found = re.findall(r'"oot_test_month": "(\d{4}-\d{2})"', folds_log.read_text())
    if not found:
        raise RuntimeError(f"the folds job printed no oot_test_month; see {folds_log}")
    return found[-1]


def _oof_frame(spark: Any, root: str) -> Any:
    """Every model's out-of-fold prediction on the labelled training rows (base models and the
    teacher), with the label, as one pandas frame (user_id, month, model, p, y)."""
    from pyspark.sql import functions as F

    labels = (spark.read.format("delta").load(f"{root}/folds").where(F.col("split") == "train")
              .select("user_id", "month", "y"))
    base = spark.read.format("delta").load(f"{root}/oof_predictions").select("user_id", "month", "model", "p")
    teacher = (spark.read.format("delta").load(f"{root}/teacher_predictions")
               .select("user_id", "month", F.lit("teacher").alias("model"), F.col("p_teacher").alias("p")))
    return base.unionByName(teacher).join(labels, ["user_id", "month"]).toPandas()


def oof_agreement(cluster: Any, local: Any) -> list[dict[str, Any]]:
    """Per model, from two ``_oof_frame`` frames: out-of-fold AUC of each run on all labelled
    training rows (many more buyers than the held-out rows, so a real difference shows) and the
    Spearman correlation of the two runs' predictions."""
    from sklearn.metrics import roc_auc_score

    joined = cluster.merge(local, on=["user_id", "month", "model", "y"], suffixes=("_cluster", "_local"))
    records = []
    for model, rows in joined.groupby("model", sort=True):
        records.append({"name": model, "rows": len(rows), "positives": int(rows["y"].sum()),
                        "auc_cluster": float(roc_auc_score(rows["y"], rows["p_cluster"])),
                        "auc_local": float(roc_auc_score(rows["y"], rows["p_local"])),
                        "spearman": float(rows["p_cluster"].corr(rows["p_local"], method="spearman"))})
    return records


def compare_roots(spark: Any, cluster_root: str, local_root: str) -> dict[str, Any]:
    """Row counts of every compared table, out-of-fold AUC of every model on both roots, and the
    held-out metrics (few buyers: shown, not gated)."""
    rows = {}
    for table in COMPARED_TABLES:
        counts = []
        for root in (cluster_root, local_root):
            counts.append(spark.read.format("delta").load(f"{root}/{table}").count())
        rows[table] = {"cluster": counts[0], "local": counts[1]}
    metrics = {}
    for table, key in (("fusion_results", "name"), ("distill_results", "name")):
        frames = [spark.read.format("delta").load(f"{root}/{table}").toPandas() for root in (cluster_root, local_root)]
        for frame in frames:
            if "evaluation" in frame:
                frame.drop(frame[frame["evaluation"] != "user_split"].index, inplace=True)
        joined = frames[0].set_index(key)[["auc", "precision_at_k"]].join(
            frames[1].set_index(key)[["auc", "precision_at_k"]], lsuffix="_cluster", rsuffix="_local")
        metrics[table] = joined.reset_index().to_dict("records")
    oof = oof_agreement(_oof_frame(spark, cluster_root), _oof_frame(spark, local_root))
    return {"rows": rows, "oof": oof, "metrics": metrics}


def run_stages_locally(conf: str, sets: list[str]) -> dict[str, float]:
    """The same stages in this process on ``local[2]`` (the comparison run)."""
    from .config import load_config
    from .pipeline import run_stage
    from .spark import get_spark

    cfg = load_config(conf, sets)
    spark = get_spark(cfg.spark, app_name="remedi-local-comparison")
    seconds: dict[str, float] = {}
    oot = None
    for stage, _, extra in STAGES:
        start = time.perf_counter()
        options: dict[str, Any] = {}
        if "--month" in extra:
            options["month"] = oot
        if "--run" in extra:
            options["run"] = "latest"
        summary = run_stage(spark, cfg, stage, **options)
        oot = summary.get("oot_test_month", oot)
        seconds[stage] = round(time.perf_counter() - start, 1)
    return seconds


def format_comparison(result: dict[str, Any], tolerance: float) -> str:
    """Row counts, out-of-fold AUC (gated) and held-out AUC / P@K (shown), cluster vs local."""
    lines = [f"{'table':22} {'cluster':>10} {'local':>10}"]
    for table, r in result["rows"].items():
        mark = "" if r["cluster"] == r["local"] else "   <-- differs"
        lines.append(f"{table:22} {r['cluster']:>10,} {r['local']:>10,}{mark}")
    lines.append(f"\n{'model (out-of-fold, training rows)':34} {'rows':>7} {'buyers':>7} {'AUC cluster':>11} "
                 f"{'AUC local':>10} {'Spearman':>9}")
    for r in result["oof"]:
        lines.append(f"{r['name']:34} {r['rows']:>7,} {r['positives']:>7,} {r['auc_cluster']:>11.4f} "
                     f"{r['auc_local']:>10.4f} {r['spearman']:>9.3f}")
    lines.append(f"\n{'model (held-out owners)':34} {'AUC cluster':>11} {'AUC local':>10} {'P@K cluster':>11} "
                 f"{'P@K local':>10}")
    for table, records in result["metrics"].items():
        for r in records:
            lines.append(f"{r['name']:34} {r['auc_cluster']:>11.4f} {r['auc_local']:>10.4f} "
                         f"{100 * r['precision_at_k_cluster']:>10.2f}% {100 * r['precision_at_k_local']:>9.2f}%")
    lines.append(f"\nlargest out-of-fold AUC difference {result['max_auc_diff']:.4f} (tolerance {tolerance}); "
                 f"row counts {'identical' if result['rows_equal'] else 'DIFFER'}")
    lines.append("seconds per stage (cluster / local): " + ", ".join(
        f"{s} {result['seconds']['cluster'][s]}/{result['seconds']['local'][s]}" for s in result["seconds"]["cluster"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Cluster run, local run, comparison (see the module docstring). Exit 0 when the row counts
    are identical and every model's out-of-fold AUC is within ``--tolerance``, else 1. Held-out
    metrics are printed but not gated: the tiny demo has only a few dozen held-out buyers."""
    parser = argparse.ArgumentParser(prog="python -m remedi_spark.standalone", description=__doc__.split("\n")[0])
    parser.add_argument("--conf", default="conf/cluster_demo.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work-dir", default="build/cluster-demo")
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest allowed out-of-fold AUC difference between cluster and local mode")
    args = parser.parse_args(argv)
    args.conf = str(Path(args.conf).resolve())
    os.chdir(REPO)  # relative table roots mean the same folder to every driver we start
    from .config import load_config

    cfg = load_config(args.conf, args.set)
    cluster_root = cfg.tables.root
    local_root = f"{cluster_root.rstrip('/')}_local"
    work_dir = (REPO / args.work_dir).resolve()
    cluster_seconds = run_stages_on_cluster(args.conf, args.set, work_dir, args.workers)
    local_sets = [*args.set, f"tables.root={local_root}", "spark.profile=local", f"spark.jars_dir={REPO / '.jars'}"]
    local_seconds = run_stages_locally(args.conf, local_sets)
    from .io.store import resolve_root
    from .spark import get_spark

    spark = get_spark(load_config(args.conf, local_sets).spark)
    result = compare_roots(spark, resolve_root(cluster_root), resolve_root(local_root))
    result["rows_equal"] = all(r["cluster"] == r["local"] for r in result["rows"].values())
    result["max_auc_diff"] = max(abs(r["auc_cluster"] - r["auc_local"]) for r in result["oof"])
    result["seconds"] = {"cluster": cluster_seconds, "local": local_seconds}
    (work_dir / "comparison.json").write_text(json.dumps(result, indent=2, default=str))
    print(format_comparison(result, args.tolerance))
    return 0 if result["rows_equal"] and result["max_auc_diff"] <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
