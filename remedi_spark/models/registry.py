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


NEURAL_FAMILIES = ("mlp", "deepfm", "xdeepfm", "kdef")


def build_model(spec: ModelSpec, settings: BaseModelSettings, features: FeatureSpec) -> BaseModel:
    """An untrained model for ``spec``; a clear error for an unknown family/backend pair."""
    key = (spec.family, spec.backend)
    if spec.backend == "torch" and spec.family in NEURAL_FAMILIES:
        return _neural(spec.family)(spec, settings, features)
    if key not in MODEL_CLASSES:
        raise ValueError(f"model {spec.name!r}: no implementation for family={spec.family!r} "
                         f"backend={spec.backend!r}; known: {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[key](spec, settings, features)
