"""Shared fixtures: one local Spark session for the whole test run, tiny configs on tmp roots."""
from __future__ import annotations

from pathlib import Path

import pytest

from remedi_spark.config import Config, load_config, replace

REPO = Path(__file__).resolve().parents[1]


# Spark settings of the tests' sessions: no UI; Delta rebuilds a table's snapshot (every read of a
# version) in 2 partitions instead of 50: the test tables are a few files each, and on local[2] the
# 50 tasks per read were a third of the time of the Delta-heavy tests
SPARK_CONF = {"spark.ui.enabled": "false", "spark.databricks.delta.snapshotPartitions": "2"}

# conf/local.yaml as the tests run it (also in the subprocesses of tests/faults.py)
TEST_SETTINGS = [
    "spark.shuffle_partitions=4", "spark.driver_memory=4g",
    f"spark.jars_dir={REPO / '.jars'}",
    f"spark.conf={SPARK_CONF!r}",
    "tracking.enabled=false",  # MLflow on where a test checks it (it adds seconds per stage)
]


@pytest.fixture(scope="session")
def base_cfg() -> Config:
    return load_config(REPO / "conf" / "local.yaml", TEST_SETTINGS)


@pytest.fixture(scope="session")
def spark(base_cfg, tmp_path_factory):
    from remedi_spark.spark import get_spark

    settings = replace(base_cfg, spark={"conf": {**SPARK_CONF,
                                                 "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("wh"))}})
    session = get_spark(settings.spark, app_name="remedi-tests")
    yield session
    session.stop()


@pytest.fixture
def cfg_at(base_cfg, tmp_path):
    """``cfg_at(**sections)``: the base config on a fresh tmp table root, with overrides."""
    def make(**sections) -> Config:
        tables = {"root": str(tmp_path / "tables"), **sections.pop("tables", {})}
        return replace(base_cfg, tables=tables, **sections)
    return make


@pytest.fixture(scope="session")
def world(spark, base_cfg, tmp_path_factory):
    """The shared tiny world (tests/world.py): every stage run once per session; read it, never write to it."""
    from tests.world import shared_world

    return shared_world(spark, base_cfg, tmp_path_factory)


@pytest.hookimpl(trylast=True)  # after -m has deselected: only the files that will run are ordered
def pytest_collection_modifyitems(config, items):
    """Order the test files so the shared world costs no waiting: one file that reads the world first
    (its worker builds the world), then every file that does not read it (the other pytest-xdist
    worker runs those meanwhile instead of waiting on the world's file lock), then the rest of the
    world's readers. A file's own tests keep their order. ``make test`` hands out files in this order
    (``--dist loadfile --no-loadscope-reorder``)."""
    reads_world: dict[str, bool] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        reads_world[path] = reads_world.get(path, False) or _reads_shared_world(item)
    readers = [path for path, reads in reads_world.items() if reads]
    order = readers[:1] + [path for path, reads in reads_world.items() if not reads] + readers[1:]
    rank = {path: i for i, path in enumerate(order)}
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


def _reads_shared_world(item) -> bool:
    """Whether ``item`` needs this conftest's ``world`` (directly or through another fixture), not a
    module's own fixture of the same name (a hand-built world) or a parameter called ``world``."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.get("world", ()) if info else ()
    return bool(defs) and getattr(defs[-1].func, "__module__", None) == __name__
