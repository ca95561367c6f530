"""Typed configuration loaded from YAML profiles.

``conf/base.yaml`` holds every knob and its default; a profile names its parent with
``extends:`` and overrides only what differs; ``--set section.key=value`` overrides last.
The dataclasses below define which keys exist and their types: an unknown key, a missing
key or a wrongly typed value is an error that names the key, raised before Spark starts.
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class SparkSettings:
    profile: str
    master: str
    driver_memory: str
    shuffle_partitions: int
    jars_dir: str
    conf: dict


@dataclass(frozen=True)
class TableSettings:
    root: str
    allowed_roots: list[str]


@dataclass(frozen=True)
class SyntheticSettings:
    n_users: int
    start_month: str
    end_month: str
    seed: int
    chunk_users: int
    burn_in_months: int
    hazard_scale: float
    missing_rate: float
    drift_month: str | None
    drift_strength: float


@dataclass(frozen=True)
class CustomFeatureTable:
    format: str
    path: str | None
    table: str | None
    id_col: str
    month_col: str
    label_col: str
    feature_cols: list[str]
    categorical_cols: list[str]
    label_cols: dict


@dataclass(frozen=True)
class FeatureSettings:
    source: str
    windows: list[int]
    recency_lookback_months: int
    observed_through: str | None
    categorical: list[str]
    custom: CustomFeatureTable


@dataclass(frozen=True)
class FoldSettings:
    n_folds: int
    seed: int
    test_fraction: float
    months: list[str] | None
    include_open_windows: bool


@dataclass(frozen=True)
class ModelSpec:
    """One base model: its unique name is its column in the OOF table."""

    name: str
    family: str
    backend: str
    objective: str
    feature_group: str | None
    params: dict


@dataclass(frozen=True)
class FocalSettings:
    alpha: float
    gamma: float
    min_hessian: float


@dataclass(frozen=True)
class BaseModelSettings:
    metric_k_fraction: float
    early_stopping_rounds: int
    early_stopping_fraction: float
    num_workers: int
    network_retries: int  # a native LightGBM fit whose workers lost their connection is run again this many times
    synapseml_transfer: str
    imbalance: str
    lightgbm: dict
    focal: FocalSettings
    feature_groups: dict
    channel_groups: list[str] | None
    models: list[ModelSpec]
    tuned_params: dict  # model name -> params found by `tune`, merged into that model's params at load
    neural_launcher: str | None  # the launcher of every torch model whose params name none (null: the model's default)


@dataclass(frozen=True)
class KdefStudySettings:
    """The KDEF K-table (stage kdef-study): K = 1..max_k of ``subnets``, KDEF vs independent nets."""

    model: str
    subnets: list[str]
    max_k: int
    tau: float
    max_train_rows: int | None


@dataclass(frozen=True)
class FusionSettings:
    """Meta-models over the OOF predictions (stage fusion): the networks' knobs, the base-model
    subsets and head variants compared with the teacher, which strategy is distilled, and what
    happens when it is worse than its own inputs on the meta-level out-of-fold rows."""

    meta_model: dict
    ablations: list[str]
    variants: dict
    teacher: str
    on_weak_teacher: str
    seeds: list[int]


@dataclass(frozen=True)
class BootstrapSettings:
    """Paired bootstrap over owners behind every interval (an owner's rows are resampled together)."""

    replicates: int
    seed: int
    level: float


@dataclass(frozen=True)
class EvaluationSettings:
    """How evaluation numbers get their intervals."""

    bootstrap: BootstrapSettings


@dataclass(frozen=True)
class DistillSettings:
    """Students distilled from the teacher (stage distill); ``student`` is the one scoring uses."""

    student: str
    students: list[dict]
    timing_rows: int
    tuned_params: dict  # student name -> params found by `tune`, merged into that student's params at load


@dataclass(frozen=True)
class ScoringSettings:
    """Scoring job: which month (null = newest month of the features table), and where the
    student lives (null = ``<tables.root>/models/student``), or ``model_uri``: a student registered
    in the MLflow Model Registry (``models:/remedi-student@champion``) instead of a folder."""

    month: str | None
    model_dir: str | None
    model_uri: str | None


@dataclass(frozen=True)
class LeadListSettings:
    """Top-K lead list after business filters (stage lead-list)."""

    k: int | float
    exclude_purchase_months: int
    exclude_do_not_contact: bool
    min_vehicle_age_months: int
    cap_column: str | None
    cap_per_value: int | None
    export_dir: str | None
    export_formats: list[str]


@dataclass(frozen=True)
class TrackingSettings:
    """MLflow tracking: one MLflow run per pipeline run (stages log into it with their name as a
    prefix); a stage run on its own gets its own MLflow run. ``registered_model``: the Model Registry
    name every distilled student is registered under (alias ``challenger``; ``champion`` when it passes
    the promotion rule with ``promotion_margin``); null = no registration. ``registry_uri``: null = a
    SQLite registry beside the tables for the default file store, else MLflow's default for ``uri``."""

    enabled: bool
    uri: str | None
    experiment: str
    registered_model: str | None
    registry_uri: str | None
    promotion_margin: float


@dataclass(frozen=True)
class ReportSettings:
    """The evaluation report (stage report)."""

    dir: str | None
    curve_points: int
    calibration_bins: int
    top_features: int
    neural_auc_tolerance: float


@dataclass(frozen=True)
class MonitoringSettings:
    """Monthly monitoring and the retraining rules (stage monitor)."""

    month: str | None
    reference_rows: int
    psi_bins: int
    top_features: int
    min_realized_precision: float
    feature_psi_retrain: float
    score_psi_retrain: float
    max_model_age_months: int
    retrain_exit_code: int


@dataclass(frozen=True)
class KamlStudySettings:
    """The KAML ablation table (stage kaml-study): the full model against it without open-window
    rows, without the ranking loss and with independent horizon heads."""

    model: str
    max_train_rows: int | None


@dataclass(frozen=True)
class Hm3StudySettings:
    """The HM3 ablation table (stage hm3-study): the full funnel model against it without the
    auxiliary tasks and with flat (independent) heads."""

    model: str
    max_train_rows: int | None


@dataclass(frozen=True)
class BacktestSettings:
    """Walk-forward backtest of the lead list (stage backtest): for each of the last ``months`` fully
    labelled months T, the chain (folds → base models → fusion → student) is trained in a sub-root
    ``<root>/T=YYYY-MM`` on the months whose label window closed by T (t + 3 ≤ T) only, then T's
    owners are scored and listed and the list is evaluated against T's buyers. ``models``: base
    models (names from base_models.models) for a lighter chain, null = all; ``root``: where the
    sub-roots go, null = ``<tables.root>/backtest``."""

    months: int
    models: list[str] | None
    root: str | None


@dataclass(frozen=True)
class TuningSettings:
    """Hyperparameter search (stage tune): Optuna TPE (seeded) over ``spaces.<family>`` (``lgbm`` for
    every LightGBM base model, ``student`` for the distilled students, a neural family's name for its
    models), each trial scored by inner cross-validation over the training folds on training owners
    outside the evaluation month; trials whose running metric is worse than the median of earlier
    trials after ``prune_warmup_folds`` folds are pruned. ``models``: what ``tune`` searches without
    ``--models`` (null = every LightGBM base model, every neural model whose family has a space and
    ``distill.student``)."""

    models: list[str] | None
    metric: str
    max_trials: int
    timeout_minutes: float | None
    inner_folds: int | None
    sample_rows: int | None
    seed: int
    parallelism: str
    prune_startup_trials: int
    prune_warmup_folds: int
    spaces: dict


@dataclass(frozen=True)
class ParamRange:
    """One searched parameter: ``choices`` (categorical), or ``low``..``high`` (an integer parameter
    takes integer bounds), sampled on a log scale when ``log``. In YAML a range is a list,
    ``[low, high]`` or ``[low, high, log]``, and a choice ``{choices: [...]}``: a profile that
    overrides an entry replaces it whole (mappings would merge key by key); ``null`` leaves the
    parameter out of the search."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None


@dataclass(frozen=True)
class TrainingSettings:
    """How the base models' fit rows are drawn (stage train-base: every fold's fit and the refit).

    ``negative_rate``: the share of negative rows (``y = 0``) a fit keeps; every positive row (and
    every open-window row, whose label is not known) is kept. Which negatives are kept is a hash of
    ``(user_id, month, folds.seed)``: the same rows on every run. A model fitted on a share ``r`` adds
    ``log(r)`` to its logit when it predicts (the rate is saved with it), so its probabilities stay
    calibrated for the full population. 1.0 = every row (no sampling)."""

    negative_rate: float  # checked with the other knobs (RULES)


@dataclass(frozen=True)
class Config:
    spark: SparkSettings
    tables: TableSettings
    synthetic: SyntheticSettings
    features: FeatureSettings
    folds: FoldSettings
    base_models: BaseModelSettings
    kdef_study: KdefStudySettings
    fusion: FusionSettings
    evaluation: EvaluationSettings
    distill: DistillSettings
    scoring: ScoringSettings
    lead_list: LeadListSettings
    tracking: TrackingSettings
    report: ReportSettings
    monitoring: MonitoringSettings
    kaml_study: KamlStudySettings
    hm3_study: Hm3StudySettings
    backtest: BacktestSettings
    tuning: TuningSettings
    training: TrainingSettings

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (for run manifests and logs)."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key."""


_CHOICES = {
    "spark.profile": {"local", "cluster", "databricks"},
    "features.source": {"builtin", "custom"},
    "features.custom.format": {"delta", "parquet", "csv", "table"},
    "base_models.imbalance": {"none", "is_unbalance", "scale_pos_weight"},
    "base_models.synapseml_transfer": {"bulk", "streaming"},
    "base_models.neural_launcher": {"distributor", "driver"},
    "kdef_study.subnets": {"mlp", "cross", "cin", "fm"},  # list items
    "lead_list.cap_column": {"region_id", "dealer_id"},
    "lead_list.export_formats": {"csv", "parquet"},
    "fusion.teacher": {"hybrid_expert", "auto"},
    "fusion.on_weak_teacher": {"warn", "fallback", "fail"},
    "tuning.metric": {"logloss", "precision_at_k"},
    "tuning.parallelism": {"tasks", "driver"},
    "fusion.ablations": {"trees_only", "neural_only", "without_focal", "without_subset", "without_kaml",
                         "without_hm3"},
}
_ITEM_CHOICES = {  # choices for fields of list items, by field name
    "family": {"lgbm", "mlp", "deepfm", "xdeepfm", "autoint", "kdef", "kaml", "hm3"},
    "backend": {"synapseml", "native", "torch"},
    "objective": {"logloss", "focal", "mse", "xentropy"},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and value:
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `extends` forms a cycle")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = data.pop("extends", None)
    for included in data.pop("include", []) or []:  # sections kept in their own files
        data = _merge(_read_yaml(path.parent / included, seen + (path,)), data)
    if parent is None:
        return data
    return _merge(_read_yaml(path.parent / parent, seen + (path,)), data)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"--set {dotted}: unknown key {'.'.join(keys[: i + 1])}")
        node = node[key]
    if keys[-1] not in node and not (len(keys) >= 2 and keys[-2] == "conf"):
        raise ConfigError(f"--set {dotted}: unknown key {dotted}")
    node[keys[-1]] = value


def _check_type(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected text, got number {value!r} (quote it)")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    choices = _CHOICES.get(key.split("[", 1)[0] if key.endswith("]") else key) or (_ITEM_CHOICES.get(key.rsplit(".", 1)[-1]) if "[" in key else None)
    if choices and value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {sorted(choices)}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix or 'config'}: unknown keys {unknown}")
    missing = sorted(names - set(data))
    if missing:
        raise ConfigError(f"{prefix or 'config'}: missing keys {missing}")
    values = {n: _check_type(data[n], hints[n], f"{prefix}.{n}" if prefix else n) for n in names}
    return cls(**values)


_SECRET_WORDS = ("token", "password", "secret", "credential", "access.key", "accesskey")
# paths the pipeline writes to or loads models from: each must stay under tables.root or tables.allowed_roots
_OUTPUT_PATHS = ("scoring.model_dir", "lead_list.export_dir", "report.dir", "backtest.root")


def normalize_path(path: str) -> str:
    """``path`` with ``.``/``..`` resolved: absolute for local paths, the same scheme for URIs."""
    if "://" in path or path.startswith("dbfs:"):
        scheme, _, rest = path.partition(":")
        lead = "/" * (len(rest) - len(rest.lstrip("/")))
        return f"{scheme}:{lead}{posixpath.normpath(rest.lstrip('/'))}".rstrip("/")
    return os.path.abspath(path)


def is_under(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or inside it (after resolving ``..``)."""
    path, root = normalize_path(path), normalize_path(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_paths(cfg: "Config") -> None:
    """Output and model paths stay under ``tables.root`` or ``tables.allowed_roots``."""
    roots = [cfg.tables.root, *cfg.tables.allowed_roots]
    for key in _OUTPUT_PATHS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not any(is_under(value, root) for root in roots):
            raise ConfigError(f"{key}: {value!r} is outside tables.root and tables.allowed_roots {roots}; "
                              "add its root to tables.allowed_roots if it is meant to be written")


# What a number means decides its range. A rule: the kind (int accepts no bool, float accepts int), the
# bounds (None = unbounded on that side; ``open_low``/``open_high`` exclude the bound itself) and the
# range in words for the message. Checked while the config loads, so `--set lead_list.k=-5` or
# `--set fusion.meta_model.epochs=abc` fail before Spark starts instead of deep in a stage.
@dataclass(frozen=True)
class Rule:
    kind: type
    low: float | None
    high: float | None
    words: str
    open_low: bool = False
    open_high: bool = False
    choices: tuple | None = None  # for kind str: the known values
    items: bool = False  # the value is a list whose every item follows the rule


def _positive(words: str = "a positive integer") -> Rule:
    return Rule(int, 1, None, words)


def _at_least_zero(kind: type = int) -> Rule:
    return Rule(kind, 0, None, "zero or a positive integer" if kind is int else "zero or a positive number")


_FRACTION_OPEN = Rule(float, 0, 1, "a fraction strictly between 0 and 1", open_low=True, open_high=True)
_FRACTION = Rule(float, 0, 1, "a fraction in (0, 1]", open_low=True)
_SHARE = Rule(float, 0, 1, "a share in [0, 1)", open_high=True)
_POSITIVE_NUMBER = Rule(float, 0, None, "a positive number", open_low=True)
_ANY_INT = Rule(int, None, None, "an integer")
_BOOL = Rule(bool, None, None, "true or false")

# top-level knobs, by their dotted key
RULES: dict[str, Rule] = {
    "spark.shuffle_partitions": _positive(),
    "training.negative_rate": _FRACTION,
    "synthetic.n_users": _positive(),
    "synthetic.chunk_users": _positive(),
    "synthetic.burn_in_months": _at_least_zero(),
    "synthetic.hazard_scale": _POSITIVE_NUMBER,
    "synthetic.missing_rate": _SHARE,
    "synthetic.drift_strength": Rule(float, 0, 1, "a strength in [0, 1]"),
    "features.windows": Rule(int, 1, None, "a list of positive window lengths (months)", items=True),
    "features.recency_lookback_months": _positive(),
    "folds.n_folds": Rule(int, 2, None, "an integer of at least 2"),
    "folds.test_fraction": _FRACTION_OPEN,
    "base_models.metric_k_fraction": _FRACTION,  # 1.0 = the whole population is a valid K
    "base_models.early_stopping_fraction": _FRACTION_OPEN,
    "base_models.early_stopping_rounds": _positive(),
    "base_models.num_workers": _positive(),
    "base_models.network_retries": _at_least_zero(),
    "base_models.focal.alpha": _FRACTION_OPEN,
    "base_models.focal.gamma": _at_least_zero(float),
    "base_models.focal.min_hessian": _POSITIVE_NUMBER,
    "kdef_study.max_k": _positive(),
    "kdef_study.tau": _FRACTION_OPEN,
    "kdef_study.max_train_rows": _positive("a positive integer (or null: all rows)"),
    "evaluation.bootstrap.replicates": _positive(),
    "evaluation.bootstrap.level": Rule(float, 0, 1, "a level strictly between 0 and 1", open_low=True, open_high=True),
    "distill.timing_rows": Rule(int, 0, None, "zero (skip the timing) or a positive integer"),
    "lead_list.exclude_purchase_months": _at_least_zero(),
    "lead_list.min_vehicle_age_months": _at_least_zero(),
    "lead_list.cap_per_value": _positive("a positive integer (or null: no cap)"),
    "tracking.promotion_margin": Rule(float, 0, None, "zero or a positive P@K difference (absolute, e.g. 0.002)"),
    "report.curve_points": Rule(int, 2, None, "an integer of at least 2"),
    "report.calibration_bins": _positive(),
    "report.top_features": _positive(),
    "report.neural_auc_tolerance": _FRACTION_OPEN,
    "monitoring.reference_rows": _positive(),
    "monitoring.psi_bins": Rule(int, 2, None, "an integer of at least 2"),
    "monitoring.top_features": _positive(),
    "monitoring.min_realized_precision": Rule(float, 0, 1, "a precision in [0, 1]"),
    "monitoring.feature_psi_retrain": _POSITIVE_NUMBER,
    "monitoring.score_psi_retrain": _POSITIVE_NUMBER,
    "monitoring.max_model_age_months": _positive(),
    "monitoring.retrain_exit_code": Rule(int, 0, 255, "an exit status in 0..255"),
    "kaml_study.max_train_rows": _positive("a positive integer (or null: all rows)"),
    "hm3_study.max_train_rows": _positive("a positive integer (or null: all rows)"),
    "backtest.months": _positive(),
    "tuning.max_trials": _positive(),
    "tuning.timeout_minutes": Rule(float, 0, None, "a positive number of minutes (or null: no time limit)",
                                   open_low=True),
    "tuning.inner_folds": _positive("a positive integer (or null: every training fold)"),
    "tuning.sample_rows": _positive("a positive integer (or null: every training row)"),
    "tuning.prune_startup_trials": _at_least_zero(),
    "tuning.prune_warmup_folds": _at_least_zero(),
}

# month keys ('YYYY-MM'; a list: every item)
MONTH_KEYS = ("synthetic.start_month", "synthetic.end_month", "synthetic.drift_month", "features.observed_through",
              "folds.months", "scoring.month", "monitoring.month")

_HIDDEN = Rule(int, 1, None, "a list of positive layer widths", items=True)
# Knobs inside mapping-valued settings, per kind of mapping. ``fusion.meta_model`` and each
# ``fusion.variants.<name>`` are fusion.meta_models.ExpertConfig (a test checks the names agree);
# a torch model's ``params`` are models.neural.model.TorchTrainParams; LightGBM params (base_models.lightgbm,
# an lgbm model's or a student's params) may name any LightGBM parameter, the ones below are checked.
META_MODEL_RULES: dict[str, Rule] = {
    "raw_hidden": _HIDDEN, "relative_hidden": _HIDDEN, "output_hidden": _HIDDEN,
    "dropout": _SHARE, "batch_norm": _BOOL, "weight_decay": _at_least_zero(float),
    "epochs": _positive(), "batch_size": _positive(), "min_steps_per_epoch": _positive(),
    "lr": Rule(float, 0, None, "a positive learning rate", open_low=True), "patience": _positive(),
    "valid_fraction": _FRACTION_OPEN, "min_valid_positives": _positive(), "linear_skip": _BOOL,
    "bags": _positive(), "seed": _ANY_INT,
}
TORCH_PARAM_RULES: dict[str, Rule] = {
    "epochs": _positive(), "batch_size": _positive(), "min_steps_per_epoch": _at_least_zero(),
    "lr": Rule(float, 0, None, "a positive learning rate", open_low=True), "patience": _positive(),
    "grad_clip": _POSITIVE_NUMBER, "embedding_l2": _at_least_zero(float),
    "numeric_encoding": Rule(str, None, None, "one of ['buckets', 'standardize']",
                             choices=("standardize", "buckets")),
    "n_buckets": Rule(int, 2, None, "an integer of at least 2"), "num_processes": _positive(),
    "launch_retries": _at_least_zero(), "seed": _ANY_INT, "model": Rule(dict, None, None, "a mapping"),
    "launcher": Rule(str, None, None, "one of ['distributor', 'driver']", choices=("distributor", "driver")),
    "warmup_steps": _at_least_zero(), "lr_patience": _positive(),
    "stop_metric": Rule(str, None, None, "one of ['auc', 'logloss']", choices=("auc", "logloss")),
}
LGBM_PARAM_RULES: dict[str, Rule] = {
    "num_iterations": _positive(), "learning_rate": Rule(float, 0, None, "a positive learning rate", open_low=True),
    # num_leaves: type only; LightGBM's own error for < 2 is what tests/test_reliability_faults.py
    # provokes to check how a model that fails to train stops the stage
    "num_leaves": _ANY_INT, "min_data_in_leaf": _at_least_zero(),
    "feature_fraction": _FRACTION, "bagging_fraction": _FRACTION, "bagging_freq": _at_least_zero(),
    "lambda_l1": _at_least_zero(float), "lambda_l2": _at_least_zero(float),
    "max_bin": Rule(int, 2, None, "an integer of at least 2"), "max_depth": _ANY_INT,
    "min_sum_hessian_in_leaf": _at_least_zero(float), "min_gain_to_split": _at_least_zero(float),
    "seed": _ANY_INT, "deterministic": _BOOL, "force_col_wise": _BOOL, "verbosity": _ANY_INT,
    "is_unbalance": _BOOL, "scale_pos_weight": _POSITIVE_NUMBER,
}


def check_value(key: str, value: Any, rule: Rule) -> None:
    """``value`` has ``rule``'s kind and lies in its range (a list: every item, when ``rule.items``);
    a ConfigError naming the key, the value and what is expected otherwise. None is not checked
    (a null optional value)."""
    if value is None:
        return
    if rule.items:
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{key}: expected {rule.words}, got {value!r}")
        for item in value:
            check_value(key, item, dataclasses.replace(rule, items=False))
        return
    if rule.kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif rule.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, rule.kind)
    if ok and rule.choices is not None:
        ok = value in rule.choices
    if ok and rule.low is not None:
        ok = value > rule.low if rule.open_low else value >= rule.low
    if ok and rule.high is not None:
        ok = value < rule.high if rule.open_high else value <= rule.high
    if not ok:
        raise ConfigError(f"{key}: expected {rule.words}, got {value!r}")


def check_params(key: str, params: Any, rules: dict[str, Rule], closed: bool) -> None:
    """The knobs of one mapping-valued setting (``key``) against ``rules``; ``closed``: a name not in
    ``rules`` is an error too (a typo would otherwise be ignored or fail deep in a stage)."""
    if not isinstance(params, dict):
        raise ConfigError(f"{key}: expected a mapping, got {params!r}")
    if closed:
        unknown = sorted(set(params) - set(rules))
        if unknown:
            raise ConfigError(f"{key}: unknown keys {unknown}; known: {sorted(rules)}")
    for name, value in params.items():
        if name in rules:
            check_value(f"{key}.{name}", value, rules[name])


def _lookup(cfg: "Config", key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_months(cfg: "Config") -> None:
    """Every month knob of :data:`MONTH_KEYS` is a 'YYYY-MM' month; the synthetic world's months are in order."""
    from .months import parse_month

    for key in MONTH_KEYS:
        value = _lookup(cfg, key)
        for month in value if isinstance(value, list) else [value]:
            if month is None:
                continue
            try:
                parse_month(month)
            except ValueError:
                raise ConfigError(f"{key}: expected a month 'YYYY-MM', got {month!r}") from None
    s = cfg.synthetic
    if parse_month(s.end_month) < parse_month(s.start_month):
        raise ConfigError(f"synthetic.end_month: {s.end_month!r} precedes synthetic.start_month {s.start_month!r}")


def check_model_params(cfg: "Config") -> None:
    """The knobs inside mapping-valued settings: the meta-model and its variants, every base model's
    and student's params (LightGBM or torch), the shared LightGBM params."""
    check_params("fusion.meta_model", cfg.fusion.meta_model, META_MODEL_RULES, closed=True)
    if not isinstance(cfg.fusion.variants, dict):
        raise ConfigError(f"fusion.variants: expected a mapping of name -> meta_model overrides, "
                          f"got {cfg.fusion.variants!r}")
    for name, overrides in cfg.fusion.variants.items():
        check_params(f"fusion.variants.{name}", overrides, META_MODEL_RULES, closed=True)
    check_params("base_models.lightgbm", cfg.base_models.lightgbm, LGBM_PARAM_RULES, closed=False)
    for spec in cfg.base_models.models:
        key = f"base_models.models[{spec.name}].params"
        if spec.backend == "torch":
            check_params(key, spec.params, TORCH_PARAM_RULES, closed=True)
        else:
            check_params(key, spec.params, LGBM_PARAM_RULES, closed=False)
    for i, item in enumerate(cfg.distill.students):
        if not isinstance(item, dict):
            raise ConfigError(f"distill.students[{i}]: expected a mapping, got {item!r}")
        key = f"distill.students[{item.get('name', i)}]"
        check_value(f"{key}.objective", item.get("objective"),
                    Rule(str, None, None, "one of ['logloss', 'mse', 'xentropy']", choices=("mse", "xentropy", "logloss")))
        check_params(f"{key}.params", item.get("params") or {}, LGBM_PARAM_RULES, closed=False)


def check_ranges(cfg: "Config") -> None:
    """Every knob of :data:`RULES` has its kind and lies in its range (a null optional value is not
    checked), months are months, the knobs inside mappings follow their rules (:func:`check_model_params`);
    a ConfigError naming the key, the value and what is expected otherwise."""
    for key, rule in RULES.items():
        check_value(key, _lookup(cfg, key), rule)
    k = cfg.lead_list.k
    if (k < 1) if isinstance(k, int) else not 0 < k <= 1:
        raise ConfigError(f"lead_list.k: expected a count of leads (a positive integer) or a fraction of the month's "
                          f"scored owners in (0, 1], got {k!r}")
    check_months(cfg)
    check_model_params(cfg)
    check_custom_features(cfg)
    check_tuning(cfg)


# the label columns a custom table may declare (features.custom.label_cols): per-horizon and funnel labels
DECLARABLE_LABELS = ("y_h1", "y_h2", "y_h3", "y_engage", "y_visit")


def check_custom_features(cfg: "Config") -> None:
    """``features.custom``: a source that matches its format, declared labels that exist in the layout,
    channel groups that are feature groups."""
    c = cfg.features.custom
    if c.format == "table" and (c.path or not c.table):
        raise ConfigError("features.custom: format 'table' reads a metastore `table` (set it, and not `path`)")
    if c.format != "table" and c.table:
        raise ConfigError(f"features.custom: format {c.format!r} reads a `path`; use format 'table' for a "
                          f"metastore table")
    unknown = sorted(set(c.label_cols) - set(DECLARABLE_LABELS))
    if unknown:
        raise ConfigError(f"features.custom.label_cols: unknown labels {unknown}; declarable: {list(DECLARABLE_LABELS)}")
    bad = sorted(k for k, v in c.label_cols.items() if not isinstance(v, str) or not v)
    if bad:
        raise ConfigError(f"features.custom.label_cols: {bad} must name a column of your table")
    channels = cfg.base_models.channel_groups or []
    missing = [g for g in channels if g not in cfg.base_models.feature_groups]
    if missing:
        raise ConfigError(f"base_models.channel_groups: {missing} are not in base_models.feature_groups "
                          f"{sorted(cfg.base_models.feature_groups)}")


MODEL_URI_SCHEMES = ("models:/", "runs:/")


def check_model_source(cfg: "Config") -> None:
    """``scoring.model_uri`` is an MLflow model URI, and not given together with ``scoring.model_dir``."""
    uri = cfg.scoring.model_uri
    if uri is None:
        return
    if not uri.startswith(MODEL_URI_SCHEMES):
        raise ConfigError(f"scoring.model_uri: expected an MLflow model URI such as "
                          f"models:/remedi-student@champion, got {uri!r}")
    if cfg.scoring.model_dir:
        raise ConfigError("scoring.model_uri and scoring.model_dir are both set: score with one student, "
                          "set the other to null")


# What `tune` may search, per family of `tuning.spaces`, and each parameter's kind (int or float)
LGBM_TUNABLE: dict[str, type] = {
    "num_leaves": int, "min_data_in_leaf": int, "learning_rate": float, "feature_fraction": float,
    "bagging_fraction": float, "bagging_freq": int, "lambda_l1": float, "lambda_l2": float,
    "min_sum_hessian_in_leaf": float, "min_gain_to_split": float, "max_depth": int, "max_bin": int,
    "num_iterations": int,
}
# neural: training params, the zoo's emb_dim and dropout, and the hidden layers as width x depth
NEURAL_TUNABLE: dict[str, type] = {
    "lr": float, "batch_size": int, "epochs": int, "emb_dim": int, "dropout": float, "width": int, "depth": int,
}
NEURAL_FAMILIES = ("mlp", "deepfm", "xdeepfm", "autoint", "kdef", "kaml", "hm3")
SPACE_FAMILIES = ("lgbm", "student", *NEURAL_FAMILIES)


def tunable(family: str) -> dict[str, type]:
    """The parameters ``tuning.spaces.<family>`` may name, with their kind."""
    return NEURAL_TUNABLE if family in NEURAL_FAMILIES else LGBM_TUNABLE


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_space(spaces: dict, family: str) -> list[ParamRange]:
    """``tuning.spaces.<family>`` as :class:`ParamRange` objects, in the config's order; a ConfigError
    naming the key for an unknown family or parameter, a malformed entry, ``low > high``, or a log
    scale whose low bound is not positive."""
    if family not in SPACE_FAMILIES:
        raise ConfigError(f"tuning.spaces.{family}: unknown family; known: {list(SPACE_FAMILIES)}")
    entries = spaces.get(family)
    if entries is None:
        raise ConfigError(f"tuning.spaces.{family}: no search space for this family; add one to tuning.spaces")
    if not isinstance(entries, dict) or not any(v is not None for v in entries.values()):
        raise ConfigError(f"tuning.spaces.{family}: expected a mapping of parameter -> range, got {entries!r}")
    kinds = tunable(family)
    out = []
    for name, entry in entries.items():
        key = f"tuning.spaces.{family}.{name}"
        if entry is None:  # a profile leaves a parameter of its parent's space out of the search
            continue
        if name not in kinds:
            raise ConfigError(f"{key}: unknown parameter; tunable for {family}: {sorted(kinds)}")
        shape = "[low, high], [low, high, log] or {choices: [...]}"
        if isinstance(entry, dict):
            if set(entry) != {"choices"}:
                raise ConfigError(f"{key}: a mapping holds `choices` only, got keys {sorted(entry)}; a range is "
                                  f"a list: {shape}")
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices or not all(_number(c) for c in choices):
                raise ConfigError(f"{key}: choices must be a non-empty list of numbers, got {choices!r}")
            if kinds[name] is int and not all(isinstance(c, int) for c in choices):
                raise ConfigError(f"{key}: {name} is an integer parameter; its choices must be integers")
            out.append(ParamRange(name, choices=tuple(choices), integer=kinds[name] is int))
            continue
        if not isinstance(entry, list) or len(entry) not in (2, 3) or (len(entry) == 3 and entry[2] != "log"):
            raise ConfigError(f"{key}: expected {shape}, got {entry!r}")
        low, high, log = entry[0], entry[1], len(entry) == 3
        if not (_number(low) and _number(high)):
            raise ConfigError(f"{key}: low and high must both be numbers, got {entry!r}")
        if low > high:
            raise ConfigError(f"{key}: low {low!r} > high {high!r}")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log scale needs low > 0, got low={low!r}")
        integer = kinds[name] is int
        if integer and not (isinstance(low, int) and isinstance(high, int)):
            raise ConfigError(f"{key}: {name} is an integer parameter; low and high must be integers")
        out.append(ParamRange(name, low=low, high=high, log=log, integer=integer))
    return out


def tuning_names(cfg: "Config") -> tuple[list[str], list[str]]:
    """The names ``tune`` knows: base models and distill students."""
    return [s.name for s in cfg.base_models.models], [str(item.get("name")) for item in cfg.distill.students]


def check_tuning(cfg: "Config") -> None:
    """``tuning``: every search space parses (:func:`parse_space`) and the models to tune exist."""
    t = cfg.tuning
    if not isinstance(t.spaces, dict):
        raise ConfigError(f"tuning.spaces: expected a mapping of family -> space, got {t.spaces!r}")
    for family in t.spaces:
        parse_space(t.spaces, family)
    models, students = tuning_names(cfg)
    unknown = sorted(set(t.models or []) - set(models) - set(students))
    if unknown:
        raise ConfigError(f"tuning.models: unknown models {unknown}; base models: {models}, students: {students}")


def _check_tuned(tuned: Any, key: str, known: list[str], what: str) -> dict:
    if not isinstance(tuned, dict):
        raise ConfigError(f"{key}: expected a mapping of {what} -> params, got {tuned!r}")
    unknown = sorted(set(tuned) - set(known))
    if unknown:
        raise ConfigError(f"{key}: {unknown} are not in {what}s {known} (an overlay tuned for another model list?)")
    for name, params in tuned.items():
        if not isinstance(params, dict):
            raise ConfigError(f"{key}.{name}: expected a mapping of params, got {params!r}")
    return tuned


def apply_tuned_params(cfg: "Config") -> "Config":
    """``cfg`` with ``base_models.tuned_params[<model>]`` merged into that model's ``params`` and
    ``distill.tuned_params[<student>]`` into that student's (mappings merged key by key, any other
    value, lists included, replaced whole). Merging twice gives the same config, so a config read back
    from a run manifest (which holds both the merged params and ``tuned_params``) loads the same."""
    models, students = tuning_names(cfg)
    tuned = _check_tuned(cfg.base_models.tuned_params, "base_models.tuned_params", models, "base model")
    tuned_students = _check_tuned(cfg.distill.tuned_params, "distill.tuned_params", students, "student")
    if not tuned and not tuned_students:
        return cfg
    specs = [dataclasses.replace(s, params=_merge(s.params, tuned[s.name])) if s.name in tuned else s
             for s in cfg.base_models.models]
    items = [{**item, "params": _merge(item.get("params") or {}, tuned_students[item["name"]])}
             if item.get("name") in tuned_students else item for item in cfg.distill.students]
    return dataclasses.replace(cfg, base_models=dataclasses.replace(cfg.base_models, models=specs),
                               distill=dataclasses.replace(cfg.distill, students=items))


def apply_neural_launcher(cfg: "Config") -> "Config":
    """``cfg`` with ``base_models.neural_launcher`` (when set) written into the params of every torch model
    that names no ``launcher`` of its own; a model's own choice stays. Applying it twice gives the same config."""
    launcher = cfg.base_models.neural_launcher
    if launcher is None:
        return cfg
    specs = [dataclasses.replace(s, params={**s.params, "launcher": launcher})
             if s.backend == "torch" and "launcher" not in s.params else s for s in cfg.base_models.models]
    return dataclasses.replace(cfg, base_models=dataclasses.replace(cfg.base_models, models=specs))


def check_no_secrets(data: Any, key: str = "") -> None:
    """Refuse credentials written into conf: they come from the environment (``DATABRICKS_TOKEN``,
    cloud credential chains) or a Databricks secret scope (``{{secrets/scope/key}}``), never from YAML."""
    if isinstance(data, dict):
        for name, value in data.items():
            check_no_secrets(value, f"{key}.{name}" if key else str(name))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_no_secrets(value, f"{key}[{i}]")
    elif isinstance(data, str) and data and any(w in key.lower() for w in _SECRET_WORDS):
        if not data.startswith(("{{secrets/", "${")):
            raise ConfigError(f"{key}: looks like a credential written into the config; pass it through the "
                              "environment or a secret scope ({{secrets/scope/key}}), never in YAML")


def config_from_dict(data: dict) -> Config:
    """Validate a plain dict (already merged) into a :class:`Config`: types and choices, no
    credentials, output paths under the configured roots."""
    check_no_secrets(data)
    cfg = apply_neural_launcher(apply_tuned_params(_build(Config, data, "")))
    check_ranges(cfg)
    check_paths(cfg)
    check_model_source(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML profile, apply ``key=value`` overrides (values parsed as YAML), validate."""
    data = _read_yaml(Path(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return config_from_dict(data)


def replace(cfg: Config, **sections: dict) -> Config:
    """Copy of ``cfg`` with some keys of some sections changed, validated again.

    Example: ``replace(cfg, synthetic={"n_users": 2000}, tables={"root": "/tmp/t"})``.
    """
    data = cfg.to_dict()
    for section, values in sections.items():
        if section not in data:
            raise ConfigError(f"unknown section {section!r}")
        data[section] = _merge(data[section], values)
    return config_from_dict(data)
