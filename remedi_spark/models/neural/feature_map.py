"""FeatureMap: the saved contract between a features table and the neural models (FuxiCTR-style).

Numeric columns, ``numeric_encoding="standardize"`` (default): signed log1p (x → sign(x)·log(1+|x|),
tames heavy tails), then standardised with the training mean and std; missing → 0 (the mean).
``numeric_encoding="buckets"``: quantile buckets from the training rows (``n_buckets``, ties
merged), each bucket an embedding row like a category; missing → the reserved slot 0.
Categorical columns: a vocabulary from the
training rows, index 0 reserved for missing and unseen values, so scoring never fails on a new
category. Fitted on a Spark DataFrame (one aggregation), applied to pandas batches, stored as JSON.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..base import NOT_FEATURES

OOV = 0


def _signed_log1p_col(name: str):
    c = F.col(name).cast("double")
    return F.signum(c) * F.log1p(F.abs(c))


def signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class FeatureMap:
    numeric: list[str]
    mean: list[float]
    std: list[float]
    categorical: list[str]
    vocab: dict[str, list[str]]
    buckets: dict[str, list[float]] = field(default_factory=dict)

    @property
    def bucketed(self) -> list[str]:
        return sorted(self.buckets)

    @property
    def columns(self) -> list[str]:
        """Every input column, in field order: numeric, categorical, bucketed numeric."""
        return self.numeric + self.categorical + self.bucketed

    @property
    def vocab_sizes(self) -> list[int]:
        """Rows per embedding table (values or buckets + the OOV/missing slot); categorical, then buckets."""
        return [len(self.vocab[c]) + 1 for c in self.categorical] + [len(self.buckets[c]) + 2 for c in self.bucketed]

    @classmethod
    def fit(cls, df: DataFrame, columns: list[str] | None = None,
            vocab: dict[str, list[str]] | None = None, numeric_encoding: str = "standardize",
            n_buckets: int = 20) -> "FeatureMap":
        """Fit on the training rows of a features frame (all feature columns unless ``columns``).

        ``vocab`` declares categoricals that are already integer codes (0..n-1, as the GBDT
        encoding writes them) with their vocabularies; other string columns get one from ``df``.
        """
        if numeric_encoding not in ("standardize", "buckets"):
            raise ValueError(f"numeric_encoding must be 'standardize' or 'buckets', got {numeric_encoding!r}")
        if numeric_encoding == "buckets" and n_buckets < 2:
            raise ValueError(f"n_buckets must be >= 2, got {n_buckets}")
        vocab = vocab or {}
        fields = [f for f in df.schema.fields if f.name not in NOT_FEATURES and (columns is None or f.name in columns)]
        numeric = [f.name for f in fields if not isinstance(f.dataType, T.StringType) and f.name not in vocab]
        categorical = [f.name for f in fields if isinstance(f.dataType, T.StringType) or f.name in vocab]
        coded = {c: list(v) for c, v in vocab.items() if c in categorical}
        aggs = []
        for i, c in enumerate(numeric):
            aggs += [F.avg(_signed_log1p_col(c)).alias(f"m{i}"), F.stddev_pop(_signed_log1p_col(c)).alias(f"s{i}")]
        aggs += [F.sort_array(F.collect_set(c)).alias(f"v{i}") for i, c in enumerate(categorical) if c not in coded]
        row = df.agg(*aggs).first() if aggs else {}
        mean = [float(row[f"m{i}"] or 0.0) for i in range(len(numeric))]
        std = [float(row[f"s{i}"] or 0.0) or 1.0 for i in range(len(numeric))]
        learned = {c: coded[c] if c in coded else [str(v) for v in row[f"v{i}"]] for i, c in enumerate(categorical)}
        if numeric_encoding == "standardize":
            return cls(numeric=numeric, mean=mean, std=std, categorical=categorical, vocab=learned)
        probs = [i / n_buckets for i in range(1, n_buckets)]
        cuts = df.select(*[F.col(c).cast("double").alias(c) for c in numeric]).approxQuantile(numeric, probs, 1e-3) \
            if numeric else []
        edges = {c: sorted({float(v) for v in q}) for c, q in zip(numeric, cuts)}
        return cls(numeric=[], mean=[], std=[], categorical=categorical, vocab=learned, buckets=edges)

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """dense (B, F_num) float32 and categorical ids (B, F_cat) int64 for a pandas batch."""
        x = frame[self.numeric].to_numpy(dtype=np.float64) if self.numeric else np.zeros((len(frame), 0))
        dense = (signed_log1p(x) - np.asarray(self.mean)) / np.asarray(self.std)
        dense = np.nan_to_num(dense, nan=0.0).astype(np.float32)
        ids = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, c in enumerate(self.categorical):
            values = frame[c]
            if pd.api.types.is_numeric_dtype(values):  # integer codes 0..n-1 (GBDT encoding)
                codes = values.to_numpy(dtype=np.float64)
                ok = np.isfinite(codes) & (codes >= 0) & (codes < len(self.vocab[c]))
                ids[:, j] = np.where(ok, np.nan_to_num(codes) + 1, OOV).astype(np.int64)
            else:
                index = {v: i + 1 for i, v in enumerate(self.vocab[c])}
                ids[:, j] = values.map(index).fillna(OOV).to_numpy(dtype=np.int64)
        if self.buckets:
            ids = np.concatenate([ids, self._bucket_ids(frame)], axis=1)
        return dense, ids

    def _bucket_ids(self, frame: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(frame), len(self.buckets)), dtype=np.int64)
        for j, c in enumerate(self.bucketed):
            x = frame[c].to_numpy(dtype=np.float64)
            out[:, j] = np.where(np.isnan(x), OOV, np.searchsorted(self.buckets[c], x, side="right") + 1)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureMap":
        return cls(**json.loads(text))
