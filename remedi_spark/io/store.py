"""Named Delta tables under one root, month-partitioned writes, and run manifests.

Every table ``name`` lives at ``<tables.root>/<name>``. Monthly tables are written with
``replaceWhere`` on their month partition, so writing a month again replaces exactly that
month (never duplicates it) in one atomic Delta commit. Every read pins the Delta version it
saw and every write records the version it created in the job's :class:`RunManifest`, which
is appended to the ``runs`` Delta table at the end of the job: with those versions any result
can be rebuilt by time travel (``store.read(name, version=v)``).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from delta.tables import DeltaTable
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..months import parse_month
from .schemas import DataValidationError, conform, load_schema, validate

RUNS_TABLE = "runs"
_RUNS_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("job", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("finished_at", T.TimestampType(), False),
    T.StructField("manifest", T.StringType(), False),
])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


@dataclass
class RunManifest:
    """What one job run read and wrote: enough to reproduce it with Delta time travel."""

    job: str
    conf: dict[str, Any]
    run_id: str = ""
    parent: str = ""  # the pipeline run this stage ran in ("" when run on its own)
    started_at: dt.datetime = field(default_factory=_now)
    reads: dict[str, int] = field(default_factory=dict)
    writes: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.run_id:
            self.run_id = f"{self.job}-{self.started_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "job": self.job, "parent": self.parent,
                "started_at": self.started_at.isoformat(),
                "conf": self.conf, "reads": self.reads, "writes": self.writes, "info": self.info}


RUN_COLUMNS = ("run_id",)  # columns that name the writing run: differ between two identical runs


def table_fingerprint(df: DataFrame, exclude: tuple[str, ...] = RUN_COLUMNS) -> dict[str, Any]:
    """``{"rows": n, "hash": h}``: ``h`` sums a 64-bit hash of every row's columns (sorted by name,
    minus ``exclude``) exactly, so row order and partitioning do not matter but any value does."""
    columns = sorted(c for c in df.columns if c not in exclude)
    row = df.agg(F.count(F.lit(1)).alias("rows"),
                 F.sum(F.xxhash64(*[F.col(f"`{c}`") for c in columns]).cast("decimal(38,0)")).alias("hash")).first()
    return {"rows": int(row["rows"]), "hash": str(row["hash"] if row["hash"] is not None else 0)}


def resolve_root(root: str) -> str:
    """Absolute local path for a relative root; URIs (``s3a://``, ``dbfs:/``, ...) are kept as they are."""
    if "://" in root or root.startswith("dbfs:"):
        return root.rstrip("/")
    return os.path.abspath(root)


class TableStore:
    """Reads and writes the project's Delta tables under one root, recording a run manifest."""

    def __init__(self, spark: SparkSession, root: str, run: RunManifest | None = None):
        self.spark = spark
        self.root = resolve_root(root)
        self.run = run

    def path(self, table: str) -> str:
        return f"{self.root}/{table}"

    def exists(self, table: str) -> bool:
        return DeltaTable.isDeltaTable(self.spark, self.path(table))

    def version(self, table: str) -> int:
        """Current Delta version of ``table``."""
        return int(DeltaTable.forPath(self.spark, self.path(table)).history(1).collect()[0]["version"])

    def read(self, table: str, version: int | None = None, months: list[str] | None = None) -> DataFrame:
        """Read ``table`` pinned to one version (the current one unless given) and record it."""
        if not self.exists(table):
            raise FileNotFoundError(f"table {table!r} does not exist at {self.path(table)}: run the stage that "
                                    "writes it first")
        if version is None:
            version = self.version(table)
        if self.run is not None:
            self.run.reads[table] = version
        df = self.spark.read.format("delta").option("versionAsOf", version).load(self.path(table))
        if months is not None:
            df = df.filter(F.col("month").isin(months))
        return df

    def write_months(self, df: DataFrame, table: str, months: list[str]) -> int:
        """Validate ``df`` and replace exactly ``months`` of the month-partitioned ``table``.

        Returns the new Delta version. On a validation error nothing is written.
        """
        for m in months:
            parse_month(m)
        if load_schema(table).partition_by != "month":
            raise ValueError(f"table {table!r} is not month-partitioned")
        return self.write_partitions(df, table, months)

    def write_partitions(self, df: DataFrame, table: str, values: list[str]) -> int:
        """Validate ``df`` and replace exactly the partitions ``values`` of ``table``'s partition column."""
        column = load_schema(table).partition_by
        if column is None:
            raise ValueError(f"table {table!r} is not partitioned; use write_table")
        for v in values:
            if not isinstance(v, str) or "'" in v:
                raise ValueError(f"invalid partition value {v!r} for {table}.{column}")
        predicate = "{} IN ({})".format(column, ", ".join(f"'{v}'" for v in sorted(set(values))))
        return self._write(df, table, sorted(set(values)), {"replaceWhere": predicate}, partition_by=column)

    def write_table(self, df: DataFrame, table: str) -> int:
        """Validate ``df`` and replace the whole (non-monthly) ``table``. Returns the new version."""
        return self._write(df, table, None, {"overwriteSchema": "true"}, partition_by=None)

    def _write(self, df: DataFrame, table: str, partitions: list[str] | None, options: dict[str, str],
               partition_by: str | None) -> int:
        if partitions is not None and self.exists(table):
            self._check_same_layout(conform(df, table), table)
        df = df.persist(StorageLevel.MEMORY_AND_DISK)  # validated and written: compute once
        try:
            validate(df, table, partitions=partitions)  # before the casts, so wrong types are caught
            writer = conform(df, table).write.format("delta").mode("overwrite").options(**options)
            if self.run is not None:
                writer = writer.option("userMetadata", self.run.run_id)
            if partition_by:
                writer = writer.partitionBy(partition_by)
            writer.save(self.path(table))
        finally:
            df.unpersist()
        version = self.version(table)
        if self.run is not None:
            self.run.writes.append({"table": table, "version": version, "partitions": partitions})
        return version

    def _check_same_layout(self, df: DataFrame, table: str) -> None:
        """Replacing some months must keep the table's columns and types; say which differ."""
        current = {f.name: f.dataType for f in self.spark.read.format("delta").load(self.path(table)).schema}
        new = {f.name: f.dataType for f in df.schema}
        problems = [(c, "in the existing table but not in this write") for c in current if c not in new]
        problems += [(c, "not in the existing table") for c in new if c not in current]
        problems += [(c, f"existing type {current[c].simpleString()}, this write {new[c].simpleString()}")
                     for c in new if c in current and current[c] != new[c]]
        if problems:
            problems.append(("*", "the table layout changed (e.g. feature settings): rebuild all months into a "
                                  "new tables.root or remove the table first"))
            raise DataValidationError(table, problems)

    def fingerprint(self, table: str, version: int | None = None, partitions: list[str] | None = None,
                    exclude: tuple[str, ...] = RUN_COLUMNS) -> dict[str, Any]:
        """Row count and an order-independent content hash of ``table`` (at ``version``; only the
        ``partitions`` values of its partition column), leaving out ``exclude`` columns (which name
        the run that wrote a row). Two tables with the same fingerprint hold the same rows."""
        df = self.read(table, version=version)
        column = load_schema(table).partition_by
        if partitions is not None and column:
            df = df.filter(F.col(column).isin(partitions))
        return table_fingerprint(df, exclude)

    def save_manifest(self) -> str:
        """Append this run's manifest to the ``runs`` table; returns the run id."""
        if self.run is None:
            raise ValueError("this store has no run manifest")
        row = (self.run.run_id, self.run.job, self.run.started_at, _now(),
               json.dumps(self.run.to_dict(), default=str, sort_keys=True))
        self.spark.createDataFrame([row], _RUNS_SCHEMA).write.format("delta").mode("append") \
            .save(self.path(RUNS_TABLE))
        return self.run.run_id

    def manifests(self) -> list[dict[str, Any]]:
        """Every run manifest, oldest first (the runs table is small: one row per job run)."""
        if not self.exists(RUNS_TABLE):
            return []
        rows = self.spark.read.format("delta").load(self.path(RUNS_TABLE)).orderBy("started_at") \
            .select("manifest").collect()
        return [json.loads(r["manifest"]) for r in rows]

    def load_manifest(self, run_id: str) -> dict[str, Any]:
        """The manifest of ``run_id`` as a dict."""
        rows = self.spark.read.format("delta").load(self.path(RUNS_TABLE)) \
            .filter(F.col("run_id") == run_id).select("manifest").collect()
        if not rows:
            raise KeyError(f"no run {run_id!r} in {self.path(RUNS_TABLE)}")
        return json.loads(rows[0]["manifest"])
