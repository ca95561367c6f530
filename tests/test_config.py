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


def test_neural_launcher_sets_every_torch_model_without_its_own():
    local = load_config(REPO / "conf" / "local.yaml")
    paper = load_config(REPO / "conf" / "paper.yaml")
    assert [s.name for s in paper.base_models.models] == [s.name for s in local.base_models.models]
    for mine, theirs in zip(paper.base_models.models, local.base_models.models):
        if mine.backend == "torch":  # models.yaml's params, plus the launcher
            assert mine.params == {**theirs.params, "launcher": "driver"}
        else:
            assert mine.params == theirs.params
    demo = load_config(REPO / "conf" / "demo.yaml", ["base_models.neural_launcher=distributor"])
    assert {s.params["launcher"] for s in demo.base_models.models if s.backend == "torch"} == {"driver"}  # own choice
    assert replace(paper, tables={"root": "/tmp/p"}).base_models.models == paper.base_models.models  # idempotent
    with pytest.raises(ConfigError, match="base_models.neural_launcher"):
        load_config(REPO / "conf" / "local.yaml", ["base_models.neural_launcher=gpu"])


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


@pytest.mark.parametrize("override, message", [
    ("fusion.meta_model.epochs=abc", "fusion.meta_model.epochs: expected a positive integer, got 'abc'"),
    ("base_models.network_retries=-1", "base_models.network_retries: expected zero or a positive integer, got -1"),
    ("fusion.meta_model.epochs=0", "fusion.meta_model.epochs: expected a positive integer, got 0"),
    ("fusion.meta_model.epochs=2.5", "fusion.meta_model.epochs: expected a positive integer, got 2.5"),
    ("fusion.meta_model.dropout=1.0", r"fusion.meta_model.dropout: expected a share in \[0, 1\), got 1.0"),
    ("fusion.meta_model.batch_norm=maybe", "fusion.meta_model.batch_norm: expected true or false, got 'maybe'"),
    ("fusion.meta_model.raw_hidden=[16, 0]", "fusion.meta_model.raw_hidden: expected a list of positive layer widths"),
    ("fusion.variants.paper.bags=0", "fusion.variants.paper.bags: expected a positive integer, got 0"),
    ("base_models.lightgbm.learning_rate=0", "base_models.lightgbm.learning_rate: expected a positive learning rate"),
    ("base_models.lightgbm.feature_fraction=1.5", r"base_models.lightgbm.feature_fraction: expected a fraction in \(0, 1\]"),
    ("base_models.lightgbm.deterministic=yes please", "base_models.lightgbm.deterministic: expected true or false"),
    ("base_models.focal.alpha=1", "base_models.focal.alpha: expected a fraction strictly between 0 and 1, got 1.0"),
    ("synthetic.start_month=2024-13", "synthetic.start_month: expected a month 'YYYY-MM', got '2024-13'"),
    ("synthetic.end_month=2024-01", "synthetic.end_month: '2024-01' precedes synthetic.start_month '2024-06'"),
    ("scoring.month=June", "scoring.month: expected a month 'YYYY-MM', got 'June'"),
    ("folds.months=[2024-06, 2024-00]", "folds.months: expected a month 'YYYY-MM', got '2024-00'"),
    ("features.windows=[0, 3]", r"features.windows: expected a list of positive window lengths \(months\), got 0"),
    ("synthetic.missing_rate=1", r"synthetic.missing_rate: expected a share in \[0, 1\), got 1.0"),
    ("spark.shuffle_partitions=0", "spark.shuffle_partitions: expected a positive integer, got 0"),
    ("monitoring.retrain_exit_code=300", r"monitoring.retrain_exit_code: expected an exit status in 0..255, got 300"),
    ("report.curve_points=1", "report.curve_points: expected an integer of at least 2, got 1"),
    ("kdef_study.tau=0", "kdef_study.tau: expected a fraction strictly between 0 and 1, got 0.0"),
])
def test_bad_values_name_the_key_the_value_and_what_is_expected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "conf" / "local.yaml", [override])


def test_knobs_inside_mappings_are_checked_in_files_too(tmp_path):
    (tmp_path / "p.yaml").write_text(f"extends: {REPO / 'conf' / 'local.yaml'}\n"
                                     "fusion:\n  meta_model: {epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"fusion.meta_model: unknown keys \['epoch'\]; known: "):
        load_config(tmp_path / "p.yaml")
    (tmp_path / "s.yaml").write_text(f"extends: {REPO / 'conf' / 'local.yaml'}\n"
                                     "distill:\n  students:\n    - {name: s, objective: mse, target: teacher, "
                                     "params: {num_iterations: 0}}\n  student: s\n")
    with pytest.raises(ConfigError, match=r"distill.students\[s\].params.num_iterations: expected a positive integer"):
        load_config(tmp_path / "s.yaml")


def test_torch_model_params_are_checked(base_cfg):
    spec = {"name": "mlp", "family": "mlp", "backend": "torch", "objective": "logloss", "feature_group": None,
            "params": {"epochs": 1, "batch_size": 512}}
    assert replace(base_cfg, base_models={"models": [spec]}).base_models.models[0].params["epochs"] == 1
    with pytest.raises(ConfigError, match=r"base_models.models\[mlp\].params.lr: expected a positive learning rate"):
        replace(base_cfg, base_models={"models": [{**spec, "params": {"lr": -0.1}}]})
    with pytest.raises(ConfigError, match=r"base_models.models\[mlp\].params: unknown keys \['epoch'\]"):
        replace(base_cfg, base_models={"models": [{**spec, "params": {"epoch": 1}}]})
    with pytest.raises(ConfigError, match=r"params.numeric_encoding: expected one of \['buckets', 'standardize'\]"):
        replace(base_cfg, base_models={"models": [{**spec, "params": {"numeric_encoding": "zscore"}}]})


def test_the_rules_of_mappings_match_the_dataclasses_that_read_them():
    """fusion.meta_model is an ExpertConfig and a torch model's params a TorchTrainParams: the rule
    tables name exactly their fields, and the dataclasses' defaults pass them."""
    import dataclasses

    from remedi_spark.config import META_MODEL_RULES, TORCH_PARAM_RULES, check_params
    from remedi_spark.fusion.meta_models import ExpertConfig
    from remedi_spark.models.neural.model import TorchTrainParams

    for cls, rules in ((ExpertConfig, META_MODEL_RULES), (TorchTrainParams, TORCH_PARAM_RULES)):
        assert set(rules) == {f.name for f in dataclasses.fields(cls)}, cls.__name__
        check_params(cls.__name__, dataclasses.asdict(cls()), rules, closed=True)


def test_every_profile_in_conf_passes_the_checks():
    profiles = [p for p in (REPO / "conf").rglob("*.yaml") if p.name not in ("base.yaml", "models.yaml")]
    assert len(profiles) >= 8
    for path in profiles:
        load_config(path)
