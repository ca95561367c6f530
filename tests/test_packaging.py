"""The wheel (used with spark-submit --py-files and on Databricks) must hold every subpackage and schema."""
import tomllib

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
                  "distill_results", "scores", "lead_list", "hm3_study", "backtest_results"):
        assert load_schema(table).table == table


def test_schemas_come_from_the_checkout_the_package_was_imported_from():
    # a worktree on PYTHONPATH next to another checkout's editable install reads its own schemas
    from remedi_spark.io.schemas import schemas_dir

    assert schemas_dir() == REPO / "schemas"
