"""The wheel (used with spark-submit --py-files and on Databricks) must hold every subpackage and schema,
and install on a Databricks runtime without replacing its Spark, Delta or torch."""
import email
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "remedi_spark").rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert "remedi_spark.schemas" in listed  # mapped from schemas/


def test_every_table_written_has_a_schema():
    from remedi_spark.io.schemas import load_schema

    for table in ("owners", "monthly_activity", "purchases", "oracle", "features", "folds", "oof_predictions",
                  "base_model_metrics", "kdef_study", "meta_features", "fusion_results", "teacher_predictions",
                  "distill_results", "scores", "lead_list", "hm3_study", "backtest_results", "tuning_results"):
        assert load_schema(table).table == table


def test_schemas_come_from_the_checkout_the_package_was_imported_from():
    # a worktree on PYTHONPATH next to another checkout's editable install reads its own schemas
    from remedi_spark.io.schemas import schemas_dir

    assert schemas_dir() == REPO / "schemas"


@pytest.fixture(scope="module")
def wheel_metadata(tmp_path_factory):
    """METADATA of the wheel built, offline, from a copy of the checkout (no build/ or egg-info
    left in the repo)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("remedi_spark", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(tmp / "dist"), str(src)], check=True)
    (wheel,) = (tmp / "dist").glob("remedi_spark-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(meta)), names


def _requirements(metadata):
    """(base requirements, {extra: requirements}) from the Requires-Dist lines."""
    base, extras = [], {}
    for line in metadata.get_all("Requires-Dist"):
        req = Requirement(line)
        extra = None
        if req.marker is not None:
            extra = re.fullmatch(r'extra == "([\w-]+)"', str(req.marker)).group(1)
        (base if extra is None else extras.setdefault(extra, [])).append(req)
    return base, extras


def _exact(req):
    return [s.version for s in req.specifier if s.operator in ("==", "===")]


def test_the_wheel_leaves_spark_delta_and_torch_to_the_runtime(wheel_metadata):
    metadata, names = wheel_metadata
    base, extras = _requirements(metadata)
    names_required = [r.name.lower() for r in base]
    assert "pyspark" not in names_required and "delta-spark" not in names_required
    # nothing in the base list pulls pyspark in: synapseml's own wheel requires nothing
    assert "torch" in names_required
    assert not [str(r) for r in base if r.name.lower() == "torch" and _exact(r)]
    # the base list is ranges only (synapseml matches its Maven jar); exact pins live in `local`
    assert not [str(r) for r in base if _exact(r) and r.name.lower() != "synapseml"]
    assert "remedi_spark/schemas/features.json" in names


def test_the_local_extra_carries_the_pinned_stack_make_setup_installs(wheel_metadata):
    metadata, _ = wheel_metadata
    base, extras = _requirements(metadata)
    assert '-e ".[local,dev]"' in (REPO / "Makefile").read_text()  # what `make setup` installs
    local = {r.name.lower(): r for r in extras["local"]}
    pins = {name: _exact(local[name]) for name in ("pyspark", "delta-spark", "torch", "pyarrow", "mlflow-skinny")}
    assert pins == {"pyspark": ["3.5.8"], "delta-spark": ["3.3.2"], "torch": ["2.13.0"], "pyarrow": ["14.0.2"],
                    "mlflow-skinny": ["3.17.2"]}
    assert "2" not in local["numpy"].specifier and "1.26.4" in local["numpy"].specifier
    assert "3" not in local["pandas"].specifier and "2.2.3" in local["pandas"].specifier
    # every local pin lies inside the base range of the same package, so `make setup` is consistent
    for req in extras["local"]:
        for version in _exact(req):
            assert all(version in r.specifier for r in base if r.name.lower() == req.name.lower()), req
