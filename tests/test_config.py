import pytest

from remedi_spark.config import ConfigError, load_config, replace
from tests.conftest import REPO


def test_profiles_load_and_inherit():
    demo = load_config(REPO / "conf" / "demo.yaml")
    assert demo.synthetic.n_users == 30000 and demo.folds.n_folds == 3  # demo overrides
    assert demo.spark.profile == "local"  # from local.yaml
    assert {s.family for s in demo.base_models.models} == {"lgbm", "mlp", "kdef", "kaml", "hm3"}
    full = load_config(REPO / "conf" / "demo_full.yaml")
    assert full.folds.n_folds == 5  # from base.yaml
    assert [s.name for s in full.base_models.models] == [s.name for s in load_config(REPO / "conf" / "local.yaml")
                                                         .base_models.models]  # every model of models.yaml
    for name in ("local", "cluster", "databricks"):
        assert load_config(REPO / "conf" / f"{name}.yaml").spark.profile == name


def test_set_overrides_parse_yaml_values():
    cfg = load_config(REPO / "conf" / "local.yaml", ["synthetic.n_users=1234", "features.windows=[2, 4]",
                                                      "synthetic.drift_month=2024-09"])
    assert cfg.synthetic.n_users == 1234
    assert cfg.features.windows == [2, 4]
    assert cfg.synthetic.drift_month == "2024-09"


@pytest.mark.parametrize("override, message", [
    ("synthetic.n_user=5", "unknown key synthetic.n_user"),
    ("nosection.x=1", "unknown key nosection"),
    ("synthetic.n_users=many", "synthetic.n_users: expected int"),
    ("spark.profile=laptop", "spark.profile: 'laptop' is not one of"),
    ("folds.months=2024-06", "folds.months: expected a list"),
    ("justtext", "expected key=value"),
    ("lead_list.k=-5", r"lead_list.k: expected a count of leads"),
    ("folds.n_folds=1", "folds.n_folds: expected an integer of at least 2"),
    ("evaluation.bootstrap.level=1.0", "evaluation.bootstrap.level: expected a level strictly between 0 and 1"),
    ("base_models.metric_k_fraction=0", "base_models.metric_k_fraction: expected a fraction in"),
    ("lead_list.cap_per_value=0", "lead_list.cap_per_value: expected a positive integer"),
    ("tracking.promotion_margin=-0.01", "tracking.promotion_margin: expected zero or a positive P@K difference"),
    ("scoring.model_uri=/data/local/models/student", "scoring.model_uri: expected an MLflow model URI"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "conf" / "local.yaml", [override])


def test_range_edges_that_mean_something_are_accepted():
    cfg = load_config(REPO / "conf" / "local.yaml", ["base_models.metric_k_fraction=1.0", "lead_list.cap_per_value=null",
                                                      "lead_list.exclude_purchase_months=0", "folds.n_folds=2"])
    assert cfg.base_models.metric_k_fraction == 1.0 and cfg.lead_list.cap_per_value is None


def test_a_registered_student_or_a_folder_not_both():
    local = REPO / "conf" / "local.yaml"
    cfg = load_config(local, ["scoring.model_uri=models:/remedi-student@champion", "tracking.promotion_margin=0"])
    assert cfg.scoring.model_uri == "models:/remedi-student@champion" and cfg.tracking.promotion_margin == 0.0
    with pytest.raises(ConfigError, match="scoring.model_uri and scoring.model_dir are both set"):
        load_config(local, ["scoring.model_uri=models:/remedi-student@champion", "scoring.model_dir=data/local/models/s"])


def test_unknown_and_missing_keys_in_files(tmp_path):
    (tmp_path / "typo.yaml").write_text(f"extends: {REPO / 'conf' / 'base.yaml'}\nfolds:\n  n_fold: 3\n")
    with pytest.raises(ConfigError, match=r"folds: unknown keys \['n_fold'\]"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "partial.yaml").write_text("tables:\n  root: x\n")
    with pytest.raises(ConfigError, match="missing keys"):
        load_config(tmp_path / "partial.yaml")


def test_replace_validates_again():
    cfg = load_config(REPO / "conf" / "local.yaml")
    assert replace(cfg, folds={"n_folds": 3}).folds.n_folds == 3
    with pytest.raises(ConfigError):
        replace(cfg, folds={"n_folds": "three"})
