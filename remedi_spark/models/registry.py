"""Model families and backends by name: the one place that maps a ModelSpec to a class."""
from __future__ import annotations

from ..config import BaseModelSettings, ModelSpec
from .base import BaseModel, FeatureSpec
from .gbdt.native import NativeLightGBM
from .gbdt.synapse import SynapseLightGBM

MODEL_CLASSES: dict[tuple[str, str], type[BaseModel]] = {
    ("lgbm", "native"): NativeLightGBM,
    ("lgbm", "synapseml"): SynapseLightGBM,
}


def _neural(family: str) -> type[BaseModel]:
    from .neural.model import NeuralModel  # imports torch: only when a neural model is asked for

    return NeuralModel


NEURAL_FAMILIES = ("mlp", "deepfm", "xdeepfm", "autoint", "kdef", "kaml", "hm3")


def zoo_class(spec: ModelSpec) -> type | None:
    """The zoo module class (``RemediModel``) of a torch model; None for every other model."""
    if spec.backend != "torch" or spec.family not in NEURAL_FAMILIES:
        return None
    from .neural.zoo import MODELS  # imports torch: only for neural models

    return MODELS[spec.family]


def needs_horizons(spec: ModelSpec) -> bool:
    """True when the model trains on the per-horizon labels y_h1..y_h3 and so can use rows whose label
    window is still open (folds ``split = open``); every other model trains on fully labelled rows."""
    zoo = zoo_class(spec)
    return bool(zoo and zoo.needs_horizons)


def aux_labels(spec: ModelSpec) -> tuple[str, ...]:
    """The features-table label columns (besides ``y``) the model trains on as auxiliary tasks
    (HM3: ``y_engage``, ``y_visit``); empty for every other model."""
    zoo = zoo_class(spec)
    return tuple(zoo.aux_labels) if zoo else ()


def build_model(spec: ModelSpec, settings: BaseModelSettings, features: FeatureSpec) -> BaseModel:
    """An untrained model for ``spec``; a clear error for an unknown family/backend pair."""
    key = (spec.family, spec.backend)
    if spec.backend == "torch" and spec.family in NEURAL_FAMILIES:
        return _neural(spec.family)(spec, settings, features)
    if key not in MODEL_CLASSES:
        raise ValueError(f"model {spec.name!r}: no implementation for family={spec.family!r} "
                         f"backend={spec.backend!r}; known: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[key](spec, settings, features)
