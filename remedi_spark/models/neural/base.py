"""Contract of the neural models: a typed batch in, a dict with a ``logit`` out, losses through hooks.

Models return logits, never probabilities; ``compute_loss`` returns every term for logging.
Subclasses implement ``forward`` and may add terms with ``extra_loss`` (KDEF does).
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Batch:
    """dense (B, F_num) float, cat_ids (B, F_cat) long, label (B,) float or None.

    ``horizons`` (B, H) float holds the per-horizon labels y_h1..y_hH for models that declare
    ``needs_horizons`` (NaN = horizon not observed yet, never 0); None for every other model.
    ``aux`` (B, A) float holds the auxiliary label columns a model declares in ``aux_labels``, in
    that order (NaN = unknown); None for models without any.
    """

    dense: torch.Tensor
    cat_ids: torch.Tensor
    label: torch.Tensor | None = None
    horizons: torch.Tensor | None = None
    aux: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(self.dense.to(device), self.cat_ids.to(device), move(self.label), move(self.horizons),
                     move(self.aux))


def build_config(cls: type, values: dict[str, Any]) -> Any:
    """A model's frozen config dataclass from a dict; unknown keys are errors, not silently dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; known: {sorted(names)}")
    return cls(**values)


class RemediModel(nn.Module, ABC):
    """Base of every neural base model."""

    name: ClassVar[str]
    Config: ClassVar[type]
    needs_horizons: ClassVar[bool] = False  # True: trains on Batch.horizons (and on open-window rows)
    aux_labels: ClassVar[tuple[str, ...]] = ()  # features-table label columns it trains on, as Batch.aux

    @abstractmethod
    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Must return at least ``{"logit": (B,)}``."""

    def extra_loss(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        return {}

    def base_loss(self, out: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(out["logit"], batch.label)

    def compute_loss(self, out: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """``{"loss": total, ...terms}``."""
        base = self.base_loss(out, batch)
        extra = self.extra_loss(out, batch)
        total = base + sum(extra.values()) if extra else base
        return {"loss": total, "base": base, **extra}
