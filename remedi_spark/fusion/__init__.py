"""Fusion of the base models' out-of-fold predictions: REMEDI's relative meta-features (Algorithm 1)."""
from .meta_features import (
    add_meta_features,
    build_meta_features,
    meta_feature_names,
    pivot_oof,
    relative_meta_features,
)

__all__ = ["add_meta_features", "build_meta_features", "meta_feature_names", "pivot_oof",
           "relative_meta_features"]
