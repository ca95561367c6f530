"""What a search leaves: ``tuning_results`` rows and the config overlay.

The overlay (default ``conf/tuned/<profile>.yaml``, next to the profile) ``extends:`` the profile and
sets ``base_models.tuned_params.<model>`` / ``distill.tuned_params.<student>``, which the config
merges into that model's params when it loads (:func:`remedi_spark.config.apply_tuned_params`).
Writing it again keeps the other models' entries: tuning one model never forgets another's; a search
run on the overlay itself (``--conf conf/tuned/demo_full.yaml``) updates it in place."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml

from .study import TrialRecord, fold_interval, params_json


def result_rows(model: str, family: str, records: list[TrialRecord], metric: str, level: float,
                best: TrialRecord | None, parallelism: str) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        low, high = fold_interval(r.values, level)
        rows.append({"model": model, "family": family, "trial": r.trial, "state": r.state,
                     "params": params_json(r.params), "metric": metric, "value": r.value,
                     "value_ci_low": low, "value_ci_high": high, "ci_level": level, "folds": len(r.values),
                     "best_iteration": float(sum(r.best_iterations) / len(r.best_iterations)) if r.best_iterations
                     else None, "seconds": round(r.seconds, 3), "best": best is not None and r.trial == best.trial,
                     "parallelism": parallelism, "error": r.error})
    return rows


def default_overlay_path(profile: str | Path) -> Path:
    """``conf/tuned/<name>.yaml`` for the profile ``conf/<name>.yaml``; a profile that is itself an
    overlay (in a ``tuned`` folder) is updated in place."""
    profile = Path(profile)
    return profile if profile.parent.name == "tuned" else profile.parent / "tuned" / profile.name


def _plain(value: Any) -> Any:
    """numpy scalars and tuples as plain YAML values."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def write_overlay(path: str | Path, profile: str | Path, models: dict[str, dict], students: dict[str, dict],
                  run_id: str) -> Path:
    """Write (or update) the overlay at ``path`` extending ``profile``: ``models`` into
    ``base_models.tuned_params``, ``students`` into ``distill.tuned_params``; entries of other models
    already in the file are kept. Returns the path."""
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    tuned = {**((data.get("base_models") or {}).get("tuned_params") or {}), **_plain(models)}
    tuned_students = {**((data.get("distill") or {}).get("tuned_params") or {}), **_plain(students)}
    if path.resolve() == Path(profile).resolve():  # searched on the overlay itself: it keeps its parent
        if not data.get("extends"):
            raise ValueError(f"{path}: an overlay updated in place must extend a profile")
        parent = data["extends"]
    else:
        parent = os.path.relpath(Path(profile).resolve(), path.parent.resolve())
    out: dict[str, Any] = {"extends": parent}
    if tuned:
        out["base_models"] = {"tuned_params": dict(sorted(tuned.items()))}
    if tuned_students:
        out["distill"] = {"tuned_params": dict(sorted(tuned_students.items()))}
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    header = (f"# Written by `python -m remedi_spark tune` (run {run_id}, {stamp} UTC): the best params per model, searched on training owners only (table tuning_results).\n"
              f"# Train with them: python -m remedi_spark train-base --conf {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=110))
    return path
