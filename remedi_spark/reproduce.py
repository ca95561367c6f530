"""Re-run a recorded stage run from its manifest and check it gives the same tables.

``python -m remedi_spark reproduce --run <run id> --out <scratch root>`` loads the run's manifest
from the ``runs`` table, rebuilds its configuration from the manifest, reads every input table at
the Delta version the run read (time travel on the original root), runs the stage with its
recorded options into the scratch root (the original tables are never touched) and compares the
fingerprint (rows and content hash, without the ``run_id`` column) of every table the run wrote,
at the version it wrote, with the reproduction.

Models are files, not Delta tables: the student used by scoring and the lead list is read from
the original root and must be the one the run used (its ``run_id`` in ``model.json`` is checked).
"""
from __future__ import annotations

import json
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from .config import config_from_dict
from .io import files
from .io.store import RunManifest, TableStore, resolve_root
from .models.base import saved_model_dir

# the stage options a run's summary records, by stage
OPTIONS = {"score": ("month",), "lead-list": ("month",), "features": ("months",), "monitor": ("month",)}


class PinnedStore(TableStore):
    """Reads the tables of ``pins`` from ``source_root`` at the pinned versions (until the stage writes
    that table itself); writes, and reads of what it wrote, go to its own root."""

    def __init__(self, spark: SparkSession, source_root: str, pins: dict[str, int], root: str, run: RunManifest):
        super().__init__(spark, root, run)
        self.source = TableStore(spark, source_root)
        self.pins = dict(pins)

    def _pinned(self, table: str) -> bool:
        return table in self.pins and not any(w["table"] == table for w in self.run.writes)

    def exists(self, table: str) -> bool:
        return self._pinned(table) or super().exists(table)

    def read(self, table: str, version: int | None = None, months: list[str] | None = None) -> DataFrame:
        if not self._pinned(table):
            return super().read(table, version, months)
        version = self.pins[table] if version is None else version
        self.run.reads[table] = version
        return self.source.read(table, version=version, months=months)

    def _check_same_layout(self, df: DataFrame, table: str) -> None:
        if TableStore.exists(self, table):  # the scratch copy, not the pinned original
            super()._check_same_layout(df, table)


def reproduce_run(spark: SparkSession, root: str, run_id: str, out_root: str) -> dict[str, Any]:
    """Re-run ``run_id`` (a stage run recorded under ``root``) into ``out_root`` at the recorded
    versions; returns, per table it wrote, both fingerprints and whether they are identical."""
    from .pipeline import STAGES

    source = TableStore(spark, root)
    manifest = source.load_manifest(run_id)
    stage = manifest["job"]
    if stage not in STAGES:
        raise ValueError(f"run {run_id!r} is a {stage!r} run; only single stages can be reproduced "
                         f"({sorted(STAGES)})")
    if resolve_root(out_root) == source.root:
        raise ValueError("reproduce --out must be another root: the original tables are the reference")
    conf = manifest["conf"]
    student_dir = conf["scoring"]["model_dir"] or saved_model_dir(source.root, "student")
    conf = {**conf, "tables": {**conf["tables"], "root": out_root,
                               "allowed_roots": [*conf["tables"].get("allowed_roots", []), source.root]},
            "scoring": {**conf["scoring"], "model_dir": student_dir, "model_uri": None},
            "lead_list": {**conf["lead_list"], "export_dir": f"{resolve_root(out_root)}/exports/lead_list"},
            # runs recorded before the model registry knobs existed lack them; the reproduction registers nothing
            "tracking": {**conf["tracking"], "enabled": False, "registered_model": None, "registry_uri": None,
                         "promotion_margin": conf["tracking"].get("promotion_margin", 0.0)}}
    cfg = config_from_dict(conf)
    if stage in ("score", "lead-list"):
        _check_student(spark, student_dir, manifest)
    options = {key: manifest["info"][key] for key in OPTIONS.get(stage, ()) if key in manifest["info"]}
    store = PinnedStore(spark, source.root, manifest["reads"], out_root,
                        RunManifest(stage, cfg.to_dict(), info={"reproduces": run_id}))
    STAGES[stage](spark, cfg, store, **options)
    tables = {}
    for write in manifest["writes"]:
        table = write["table"]
        original = source.fingerprint(table, version=write["version"], partitions=write["partitions"])
        again = TableStore(spark, out_root).fingerprint(table, partitions=write["partitions"])
        tables[table] = {"original": original, "reproduced": again, "identical": original == again}
    return {"run": run_id, "stage": stage, "options": options, "reads": manifest["reads"], "tables": tables,
            "identical": all(t["identical"] for t in tables.values())}


def _check_student(spark: SparkSession, student_dir: str, manifest: dict[str, Any]) -> None:
    """The student on disk must be the one the run used (the scores' model_version is its run id)."""
    used = manifest["info"].get("model_version")
    on_disk = json.loads(files.read_text(spark, f"{student_dir}/model.json")).get("run_id")
    if used and on_disk != used:
        raise ValueError(f"the student in {student_dir} comes from run {on_disk!r}, but run "
                         f"{manifest['run_id']!r} used {used!r}: models are files, not Delta tables, so "
                         "reproducing needs the student it used (restore it or point scoring.model_dir at it)")
