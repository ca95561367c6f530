"""Search spaces: ``tuning.spaces.<family>`` (checked when the config loads, see
:func:`remedi_spark.config.parse_space`) as Optuna suggestions, and a trial's values as model params."""
from __future__ import annotations

from typing import Any

from ..config import NEURAL_FAMILIES, Config, ModelSpec, ParamRange, parse_space


def space_family(spec: ModelSpec, student: bool = False) -> str:
    """Which ``tuning.spaces`` entry searches ``spec``: ``student`` for a distilled student, ``lgbm``
    for every LightGBM base model (either backend), else the neural family's own name."""
    return "student" if student else spec.family


def ranges(cfg: Config, family: str) -> list[ParamRange]:
    return parse_space(cfg.tuning.spaces, family)


def suggest(trial: Any, space: list[ParamRange]) -> dict[str, Any]:
    """One value per parameter of ``space`` from an Optuna trial (TPE decides)."""
    out: dict[str, Any] = {}
    for r in space:
        if r.choices is not None:
            out[r.name] = trial.suggest_categorical(r.name, list(r.choices))
        elif r.integer:
            out[r.name] = trial.suggest_int(r.name, int(r.low), int(r.high), log=r.log)
        else:
            out[r.name] = trial.suggest_float(r.name, float(r.low), float(r.high), log=r.log)
    return out


def as_model_params(family: str, values: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as the entries of a model's ``params`` they set (what ``tuned_params`` holds).
    LightGBM values are LightGBM params; neural ones map to the training params (lr, batch_size,
    epochs) and the zoo config under ``model`` (emb_dim, dropout; width x depth = ``model.hidden``,
    the missing one taken from the model's current ``hidden``)."""
    if family not in NEURAL_FAMILIES:
        return dict(values)
    out: dict[str, Any] = {k: v for k, v in values.items() if k in ("lr", "batch_size", "epochs")}
    model = {k: v for k, v in values.items() if k in ("emb_dim", "dropout")}
    if "width" in values or "depth" in values:
        hidden = list((params.get("model") or {}).get("hidden") or [200, 200])
        width = int(values.get("width", hidden[0]))
        depth = int(values.get("depth", len(hidden)))
        model["hidden"] = [width] * depth
    if model:
        out["model"] = model
    return out
