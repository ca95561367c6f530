"""The model zoo: one module per model, and the explicit name → class registry."""
from .autoint import AutoInt
from .deepfm import DeepFM
from .hm3 import HM3
from .kaml import KAML
from .kdef import KDEF
from .mlp import MLP
from .xdeepfm import XDeepFM

MODELS = {m.name: m for m in (MLP, DeepFM, XDeepFM, AutoInt, KDEF, KAML, HM3)}

__all__ = ["MODELS", "AutoInt", "DeepFM", "HM3", "KAML", "KDEF", "MLP", "XDeepFM"]
