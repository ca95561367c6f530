"""MLflow tracking of pipeline runs: params, metrics, artifacts and the student model.

One MLflow run per pipeline run (tagged ``remedi.pipeline_run_id``): every stage logs into it
with its label as a prefix (``fusion.hybrid_expert.user_split.auc``), so one run page holds the
whole pipeline and runs compare side by side. A stage run on its own (``jobs/score.py``) gets an
MLflow run of its own, tagged with its run id. The Delta run manifest stays the source of truth
for data versions; MLflow is the place people browse.

The tracking URI defaults to a file store at ``<tables.root>/mlruns`` (browse it with
``mlflow ui --backend-store-uri <root>/mlruns``); on Databricks ``tracking.uri: databricks``.

The Model Registry (``tracking.registered_model``) needs a database-backed store: beside the default
file store it is a SQLite file at ``<tables.root>/mlflow.db`` (:func:`registry_uri`); the runs stay in
the file store. With ``tracking.uri`` set, MLflow's own default registry for that URI is used unless
``tracking.registry_uri`` names one.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from .config import Config

PIPELINE_TAG = "remedi.pipeline_run_id"
STAGE_TAG = "remedi.run_id"
_KEY_OK = re.compile(r"[^0-9A-Za-z_\-. /]")


def tracking_uri(cfg: Config, root: str) -> str:
    """``tracking.uri``, else a file store beside the tables."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return f"{root}/mlruns" if "://" in root else f"file://{root}/mlruns"


def registry_uri(cfg: Config, root: str) -> str | None:
    """``tracking.registry_uri``; else, for the default file store beside the tables, a SQLite
    registry at ``<root>/mlflow.db``; else None (MLflow's default for ``tracking.uri``: the same
    server, or Unity Catalog for ``databricks``)."""
    if cfg.tracking.registry_uri:
        return cfg.tracking.registry_uri
    if cfg.tracking.uri:
        return None
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"tables.root {root!r} is not a local path, so the default SQLite model registry cannot "
                         "live under it: set tracking.registry_uri (or tracking.registered_model: null)")
    return f"sqlite:///{os.path.abspath(root.removeprefix('file://'))}/mlflow.db"


def configure_mlflow(cfg: Config, root: str):
    """The ``mlflow`` module pointed at this config's tracking store and model registry."""
    uri = tracking_uri(cfg, root)
    if uri.startswith("file:"):
        # MLflow 3 refuses the file store unless asked: it is the one backend that needs no
        # server or database next to a table root, which is what a local run wants.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    mlflow.set_tracking_uri(uri)
    registry = registry_uri(cfg, root) if cfg.tracking.registered_model or cfg.tracking.registry_uri else None
    # "" = no registry of our own: MLflow's default for the tracking URI (and not one set earlier in the process)
    mlflow.set_registry_uri(registry or "")
    return mlflow


def metric_key(*parts: str) -> str:
    """An MLflow-safe key: parts joined by dots, other characters replaced by ``_``."""
    return _KEY_OK.sub("_", ".".join(p for p in parts if p))


def flatten_metrics(summary: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in a stage summary, keyed by its path. Lists of records are keyed by the
    record's ``name`` (plus ``evaluation``/``section`` when present) instead of its position."""
    out: dict[str, float] = {}
    if isinstance(summary, bool) or summary is None:
        return out
    if isinstance(summary, (int, float, np.integer, np.floating)):
        if math.isfinite(float(summary)):
            out[prefix] = float(summary)
        return out
    if isinstance(summary, dict):
        for key, value in summary.items():
            out.update(flatten_metrics(value, metric_key(prefix, str(key))))
    elif isinstance(summary, (list, tuple)):
        for i, value in enumerate(summary):
            label = str(i)
            if isinstance(value, dict) and "name" in value:
                label = ".".join(str(value[k]) for k in ("section", "name", "evaluation") if value.get(k) is not None)
                value = {k: v for k, v in value.items() if k not in ("section", "name", "evaluation")}
            out.update(flatten_metrics(value, metric_key(prefix, label)))
    return out


def flatten_params(conf: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as ``section.key -> value`` strings (lists and model specs as JSON)."""
    out: dict[str, str] = {}
    for key, value in conf.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and name.count(".") < 1:
            out.update(flatten_params(value, name))
        else:
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
            out[name] = text[:6000]  # MLflow's limit on a param value
    return out


class Tracker:
    """Logs to MLflow when ``tracking.enabled``; every method is a no-op otherwise."""

    def __init__(self, cfg: Config, root: str):
        self.cfg = cfg
        self.root = root
        self.enabled = cfg.tracking.enabled
        self.uri = tracking_uri(cfg, root) if self.enabled else ""
        self._mlflow = None

    @property
    def mlflow(self):
        if self._mlflow is None:
            mlflow = configure_mlflow(self.cfg, self.root)
            mlflow.set_experiment(self.cfg.tracking.experiment)
            self._mlflow = mlflow
        return self._mlflow

    @property
    def registers(self) -> bool:
        """Whether students go to the Model Registry (tracking on and ``tracking.registered_model`` set)."""
        return self.enabled and bool(self.cfg.tracking.registered_model)

    def active_run_id(self) -> str | None:
        """The MLflow run stages log into now, if any."""
        if not self.enabled or self._mlflow is None:
            return None
        run = self._mlflow.active_run()
        return run.info.run_id if run else None

    def find_run(self, tag: str, value: str) -> str | None:
        """The newest MLflow run tagged ``tag = value`` in the experiment, if any."""
        if not self.enabled:
            return None
        experiment = self.mlflow.get_experiment_by_name(self.cfg.tracking.experiment)
        runs = self.mlflow.search_runs([experiment.experiment_id], filter_string=f"tags.`{tag}` = '{value}'",
                                       order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        return runs[0].info.run_id if runs else None

    @contextmanager
    def run(self, name: str, tags: dict[str, str], resume_tag: str | None = None) -> Iterator[str | None]:
        """Open (or, with ``resume_tag``, reopen the run tagged so) an MLflow run and log the config
        as params. Nested use inside an open run just yields that run."""
        if not self.enabled:
            yield None
            return
        mlflow = self.mlflow
        if mlflow.active_run() is not None:
            yield mlflow.active_run().info.run_id
            return
        existing = self.find_run(resume_tag, tags[resume_tag]) if resume_tag else None
        with mlflow.start_run(run_id=existing, run_name=None if existing else name) as active:
            if existing is None:
                mlflow.set_tags(tags)
                mlflow.log_params(flatten_params(self.cfg.to_dict()))
            yield active.info.run_id

    def log_stage(self, label: str, summary: dict[str, Any], manifest: dict[str, Any]) -> None:
        """A stage's numbers as metrics (prefixed by ``label``), its options as params, and its
        manifest and summary as JSON artifacts under ``label/``."""
        if not self.enabled:
            return
        mlflow = self.mlflow
        prefix = metric_key(label)
        metrics = flatten_metrics(summary, prefix)
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.set_tag(metric_key("remedi.stage", prefix), manifest["run_id"])
        mlflow.log_dict(manifest, f"{prefix}/manifest.json")
        mlflow.log_text(json.dumps(summary, indent=2, sort_keys=True, default=str), f"{prefix}/summary.json")

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags on the active MLflow run."""
        if self.enabled:
            self.mlflow.set_tags(tags)

    def log_trials(self, model: str, rows: list[dict[str, Any]]) -> int:
        """One MLflow child run per tuning trial (``rows`` of ``tuning_results``) under the open run:
        the trial's params as params, its metric (with the interval over the inner folds), folds and
        seconds as metrics, model, state and best as tags. Returns how many were logged (0 without an
        open run or with tracking off)."""
        if not self.enabled or self.mlflow.active_run() is None:
            return 0
        mlflow = self.mlflow
        for r in rows:
            with mlflow.start_run(run_name=f"tune {model} trial {r['trial']}", nested=True):
                mlflow.set_tags({"remedi.tune.model": model, "remedi.tune.trial": str(r["trial"]),
                                 "remedi.tune.state": r["state"], "remedi.tune.best": str(bool(r["best"]))})
                mlflow.log_params(json.loads(r["params"]))
                values = {"value": r["value"], "value_ci_low": r["value_ci_low"], "value_ci_high": r["value_ci_high"],
                          "folds": r["folds"], "seconds": r["seconds"], "best_iteration": r["best_iteration"]}
                mlflow.log_metrics({f"{r['metric']}_{k}" if k.startswith("value") else k: float(v)
                                    for k, v in values.items() if v is not None})
        return len(rows)

    def log_artifacts(self, local_dir: str, artifact_path: str) -> None:
        """Every file under ``local_dir`` as artifacts under ``artifact_path``."""
        if self.enabled:
            self.mlflow.log_artifacts(local_dir, artifact_path)

    def log_pyfunc(self, code_path: str, artifacts: dict[str, str], sample: pd.DataFrame, output: Any, name: str,
                   description: str, requirements: list[str]) -> str | None:
        """Log a pyfunc model from code (``code_path``, run by MLflow to load it: nothing is pickled) with
        ``artifacts``, a signature inferred from ``sample`` (input rows) and ``output`` (the model's output on
        them), and the first rows of ``sample`` as its input example. Returns the model URI."""
        if not self.enabled:
            return None
        from mlflow.models import infer_signature

        info = self.mlflow.pyfunc.log_model(name=name, python_model=code_path, artifacts=artifacts,
                                            signature=infer_signature(sample, output),
                                            input_example=sample.head(5), pip_requirements=requirements)
        self.mlflow.set_tag(f"remedi.model.{name}", description)
        return info.model_uri

    def register(self, model_uri: str, alias: str) -> str | None:
        """Register ``model_uri`` as a new version of ``tracking.registered_model`` with ``alias`` on
        it; the version is tagged on the active run (``remedi.registry.version``). Returns the version."""
        if not self.registers:
            return None
        name = self.cfg.tracking.registered_model
        version = str(self.mlflow.register_model(model_uri, name).version)
        self.set_alias(alias, version)
        self.mlflow.set_tags({"remedi.registry.model": name, "remedi.registry.version": version})
        return version

    def alias_version(self, alias: str) -> str | None:
        """The version of ``tracking.registered_model`` that ``alias`` points at, if any (None also
        when nothing is registered under the name yet)."""
        if not self.registers:
            return None
        from mlflow.exceptions import MlflowException

        try:
            aliases = self.mlflow.MlflowClient().get_registered_model(self.cfg.tracking.registered_model).aliases
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None  # nothing registered under the name yet
            raise
        version = (aliases or {}).get(alias)
        return None if version is None else str(version)

    def set_alias(self, alias: str, version: str) -> None:
        """Point ``alias`` of ``tracking.registered_model`` at ``version`` (moved from where it was)."""
        if self.registers:
            self.mlflow.MlflowClient().set_registered_model_alias(self.cfg.tracking.registered_model, alias, version)
