"""Contract of the neural models: a typed batch in, a dict with a ``logit`` out, losses through hooks.

Models return logits, never probabilities; ``compute_loss`` returns every term for logging.
Subclasses implement ``forward`` and may add terms with ``extra_loss`` (KDEF does), and say which
bias(es) make the final logit through ``output_bias_values``, so every model starts predicting the
training base rate (:meth:`RemediModel.init_output_bias`) instead of PyTorch's default p ≈ 0.5.
"""
from __future__ import annotations

import dataclasses
import math
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


def log_odds(p: float) -> float:
    """logit(p) = log(p / (1 − p))."""
    return math.log(p / (1.0 - p))


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

    def output_bias_values(self, base_rate: float) -> list[tuple[torch.Tensor, float]]:
        """Hook: (bias tensor, value) pairs that make a freshly built model's ``logit`` start near
        ``log_odds(base_rate)`` (every other additive bias on the way to the logit set to 0)."""
        raise NotImplementedError(f"model {type(self).__name__} does not say which biases make its output logit")

    def init_output_bias(self, base_rate: float) -> None:
        """Start the output at the training base rate: fill every bias of :meth:`output_bias_values`.

        A model at p ≈ 0.5 on a ~1% target spends its first hundreds of steps only pulling the output
        down (and Adam's moments with it); starting at the base rate lets every step learn ranking.
        ``base_rate`` is clipped to [1e-6, 1 − 1e-6] (a label column of one class).
        """
        if not math.isfinite(base_rate):
            raise ValueError(f"base rate must be a finite probability, got {base_rate}")
        rate = min(max(float(base_rate), 1e-6), 1.0 - 1e-6)
        with torch.no_grad():
            for bias, value in self.output_bias_values(rate):
                bias.fill_(value)

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
