"""Small composable torch modules (torchrec-style arches). Shapes: B batch, F fields, D embedding dim."""
from .attention import FieldSelfAttention
from .cin import CompressedInteractionNet
from .cross import CrossNet
from .embedding import FieldEmbedding
from .fm import FMInteraction
from .mlp import MLPBlock

__all__ = ["CompressedInteractionNet", "CrossNet", "FieldEmbedding", "FieldSelfAttention", "FMInteraction",
           "MLPBlock"]
