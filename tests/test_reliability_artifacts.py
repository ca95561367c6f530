"""Safe artifacts and safe configuration: no pickle anywhere, torch state_dicts read with
weights_only=True, models loaded only from the model roots, output paths kept under the
configured roots, and no credentials in conf."""
import ast

import pytest
import yaml

from remedi_spark.config import ConfigError, load_config, replace
from remedi_spark.models.base import load_model, model_roots
from tests.conftest import REPO

pytestmark = pytest.mark.reliability
SOURCES = sorted(p for folder in ("remedi_spark", "jobs", "bench") for p in (REPO / folder).rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            yield node, owner, name


def test_no_module_deserializes_with_pickle():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in UNSAFE_MODULES]
        for node, owner, name in _calls(tree):
            if owner in ("pd", "pandas") and name == "read_pickle" or name == "from_pickle":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} calls {name}")
    assert not offenders, offenders


def test_every_torch_load_is_weights_only():
    loads = []
    for path in SOURCES:
        for node, owner, name in _calls(ast.parse(path.read_text(), str(path))):
            if owner == "torch" and name == "load":
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                loads.append((f"{path.relative_to(REPO)}:{node.lineno}", flags.get("weights_only")))
    assert loads, "expected the torch models' loaders to be found"
    assert all(flag is True for _, flag in loads), loads


def test_lightgbm_models_are_read_as_text_only():
    for path in SOURCES:
        for node, owner, name in _calls(ast.parse(path.read_text(), str(path))):
            if name == "Booster":
                keywords = {k.arg for k in node.keywords}
                assert keywords <= {"model_str", "params", "train_set"}, f"{path}:{node.lineno} {keywords}"


def test_models_load_only_from_the_model_roots(spark, base_cfg, tmp_path):
    cfg = replace(base_cfg, tables={"root": str(tmp_path / "t")})
    roots = model_roots(cfg, str(tmp_path / "t"))
    assert roots == [f"{tmp_path}/t/models"]
    for outside in (str(tmp_path / "elsewhere" / "student"), f"{tmp_path}/t/models/../../evil/student",
                    f"{tmp_path}/t/models_evil/student"):
        with pytest.raises(ValueError, match="refusing to load a model from .*outside the model roots"):
            load_model(spark, outside, cfg.base_models, roots)


def test_output_paths_must_stay_under_the_configured_roots(base_cfg, tmp_path):
    root = str(tmp_path / "t")
    with pytest.raises(ConfigError, match=r"lead_list.export_dir: '/etc/remedi' is outside tables.root"):
        replace(base_cfg, tables={"root": root}, lead_list={"export_dir": "/etc/remedi"})
    with pytest.raises(ConfigError, match=r"report.dir: .* is outside tables.root"):
        replace(base_cfg, tables={"root": root}, report={"dir": f"{root}/../../escape"})
    with pytest.raises(ConfigError, match=r"scoring.model_dir: 's3a://other/models' is outside"):
        replace(base_cfg, tables={"root": "s3a://bucket/remedi"}, scoring={"model_dir": "s3a://other/models"})
    ok = replace(base_cfg, tables={"root": root, "allowed_roots": [str(tmp_path / "crm")]},
                 lead_list={"export_dir": str(tmp_path / "crm" / "leads")}, report={"dir": f"{root}/reports/x"},
                 scoring={"model_dir": f"{root}/models/student"})
    assert ok.lead_list.export_dir.endswith("crm/leads")
    replace(base_cfg, tables={"root": "s3a://bucket/remedi"}, scoring={"model_dir": "s3a://bucket/remedi/m/s"})


def test_credentials_in_conf_are_refused(tmp_path):
    for key, value in (("spark.hadoop.fs.s3a.secret.key", "abc123"), ("spark.databricks.token", "dapi0123"),
                       ("spark.hadoop.fs.azure.account.key.sa.dfs.core.windows.net.password", "hunter2")):
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump({"extends": str(REPO / "conf" / "local.yaml"), "spark": {"conf": {key: value}}}))
        with pytest.raises(ConfigError, match="looks like a credential written into the config"):
            load_config(path)
    path.write_text(yaml.safe_dump({"extends": str(REPO / "conf" / "local.yaml"),
                                    "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "{{secrets/remedi/s3}}"}}}))
    load_config(path)  # a Databricks secret reference is fine


def test_shipped_conf_and_bundle_hold_no_credentials():
    for path in [*sorted((REPO / "conf").glob("*.yaml")), REPO / "databricks.yml",
                 *sorted((REPO / "resources").glob("*.yml"))]:
        text = path.read_text()
        assert "dapi" not in text, path  # Databricks personal access tokens start with dapi
        for line in text.splitlines():
            key = line.split(":", 1)[0].strip().lower()
            if any(w in key for w in ("token", "password", "secret")) and ":" in line:
                value = line.split(":", 1)[1].split("#", 1)[0].strip()
                assert value in ("", "null") or value.startswith(("${", "{{secrets/")), (path, line)
