"""The rows a search reads: training owners outside the evaluation month, nothing else.

:func:`training_rows` filters :func:`~remedi_spark.training.oof.training_frame` to ``split = train``
first, so held-out owners (``test``), open-window rows and the evaluation month (``evaluation``)
are gone before the feature vocabularies are built, before any join and before anything is
collected; tests/test_tuning.py checks it with a canary that changes only those rows. The rows are
collected once (sorted by key, so a search on the same rows is the same search) as numpy arrays
that every trial of a model shares (broadcast to Spark tasks, or used on the driver).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..config import Config, ModelSpec
from ..io.store import TableStore
from ..models.base import KEYS, LABEL, FeatureSpec, keyed_pandas
from ..training.oof import ES, training_frame

TARGET = "_target"


@dataclass
class TrialData:
    """One model's search rows: features ``x`` (float64, categoricals as codes), the fit target
    (the label, or the teacher's probability for a soft student), the 0/1 label the metric uses, the
    training fold and the early-stopping flag of every row."""

    x: np.ndarray
    target: np.ndarray
    label: np.ndarray
    fold: np.ndarray
    early_stop: np.ndarray
    columns: list[str]
    categorical: list[int]

    @property
    def rows(self) -> int:
        return len(self.label)

    def folds(self) -> list[int]:
        return sorted(int(k) for k in np.unique(self.fold))


def training_only(store: TableStore, cfg: Config) -> DataFrame:
    """``training_frame`` reduced to ``split = train`` rows: the only rows a search may read."""
    return training_frame(store, cfg).filter(F.col("split") == "train")


def training_rows(store: TableStore, cfg: Config, spec: ModelSpec, target: str = LABEL) -> tuple[TrialData, FeatureSpec]:
    """The search rows of ``spec`` (its feature group) and its :class:`FeatureSpec` (vocabularies from
    these rows, as train-base builds them). ``target``: ``y``, or ``p_teacher`` for a student distilled
    from the teacher (its predictions joined on the training rows only)."""
    train = training_only(store, cfg)
    if target != LABEL:
        teacher = store.read("teacher_predictions").select(*KEYS, F.col("p_teacher").alias(target))
        train = train.join(teacher, list(KEYS), "inner")
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = FeatureSpec.from_frame(train.drop("fold", "split", ES, target), members)
    extra = (LABEL, "fold", ES) + ((target,) if target != LABEL else ())
    pdf = keyed_pandas(features.encode(train, extra=extra), *KEYS, *features.columns, *extra)
    label = pdf[LABEL].to_numpy(dtype=np.float64)
    data = TrialData(x=pdf[features.columns].to_numpy(dtype=np.float64),
                     target=pdf[target].to_numpy(dtype=np.float64) if target != LABEL else label,
                     label=label, fold=pdf["fold"].to_numpy(dtype=np.int64), early_stop=pdf[ES].to_numpy(dtype=bool),
                     columns=list(features.columns), categorical=list(features.categorical_indexes))
    return data, features
