"""Spark session factory, one profile per place the pipeline runs.

* ``local``: ``local[2]`` (or ``spark.master``) with Delta's extension and catalog and the
  jars that ``make setup`` resolved into ``spark.jars_dir``; no network at session start.
* ``cluster``: spark-submit supplies master, executors and jars (``--packages``/``--jars``);
  only Delta's SQL settings and the knobs from conf are added.
* ``databricks``: the job's existing session is used as it is.

Library functions never create sessions: jobs call :func:`get_spark` once and pass it on.

Console: with ``log_file`` (the CLI without ``--verbose``) a JVM that :func:`get_spark` starts (the
local profile) writes its stdout and stderr into that file: Spark's log4j console output, native
LightGBM lines from SynapseML ("[LightGBM] ...", "Listening..."), and the stderr of the Python workers
it starts (library warnings of petastorm or pyarrow). A JVM that was there before (spark-submit)
keeps its console; only its log level drops to ERROR.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import SparkSession

from .config import SparkSettings

DELTA_SETTINGS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def local_jars(jars_dir: str) -> list[str]:
    """Absolute paths of the jars resolved by ``make setup``; a clear error if there are none."""
    folder = Path(jars_dir).resolve()
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not any("delta-spark" in Path(j).name for j in jars):
        raise RuntimeError(f"no Delta Lake jar in {folder}: run `make setup` (it resolves the jars once from "
                           "Maven Central) or set spark.jars_dir to a folder that holds them")
    return jars


@contextmanager
def output_to(path: str) -> Iterator[None]:
    """Inside the block, file descriptors 1 and 2 (stdout and stderr of this process, and of every
    process started meanwhile, which keeps them) write to the end of ``path``; put back afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def _starts_jvm() -> bool:
    """Whether creating a session now launches a JVM (none running in this process, and no
    spark-submit that started this process with its own)."""
    from pyspark import SparkContext

    return SparkContext._gateway is None and "PYSPARK_GATEWAY_PORT" not in os.environ


def get_spark(settings: SparkSettings, app_name: str = "remedi-spark", log_file: str | None = None) -> SparkSession:
    """Return the Spark session for ``settings.profile`` (see the module docstring). ``log_file``: the
    output of a JVM started here goes to that file (log level WARN), a running JVM's log level drops
    to ERROR; without it the JVM writes to the console at WARN."""
    if settings.profile == "databricks":
        active = SparkSession.getActiveSession()
        return active if active is not None else SparkSession.builder.getOrCreate()
    builder = SparkSession.builder.appName(app_name)
    common = {
        **DELTA_SETTINGS,
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
    }
    if settings.profile == "local":
        # Python workers must run the driver's interpreter (the venv), not whatever python3 is on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(settings.master)
        common.update({
            "spark.jars": ",".join(local_jars(settings.jars_dir)),
            "spark.driver.memory": settings.driver_memory,
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.adaptive.coalescePartitions.initialPartitionNum": str(settings.shuffle_partitions),
        })
    for key, value in {**common, **{k: str(v) for k, v in settings.conf.items()}}.items():
        builder = builder.config(key, value)
    if log_file is not None and _starts_jvm():
        with output_to(log_file):
            spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
        return spark
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR" if log_file is not None else "WARN")
    return spark


def root_cause(exc: BaseException) -> str:
    """One line saying what went wrong. An error raised in a Python worker reaches the driver wrapped
    in a Java stack trace; the last ``SomethingError: message`` line of it is the real cause."""
    text = str(exc)
    found = re.findall(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception): .+)$", text, flags=re.MULTILINE)
    python = [line for line in found if not line.startswith(("Py4J", "SparkException", "PythonException"))]
    if python:
        return python[-1].strip()[:300]
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first.strip()[:300]}"
