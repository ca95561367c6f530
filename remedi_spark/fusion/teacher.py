"""The teacher as one scorer: refit base models → Algorithm 1 → teacher head, for any rows.

Distillation calls :func:`teacher_scores` on feature rows of any month; inference-time
comparisons (teacher vs student per 1,000 owners) time it. Every base model is read from
``<root>/models/<name>/`` and the head (the hybrid-expert, or the strategy the fusion stage chose
instead) from ``<root>/models/teacher/``, never from driver memory.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config
from ..io import files
from ..io.store import TableStore
from ..models.base import KEYS, load_model, model_roots
from ..training.oof import model_path
from .meta_features import relative_meta_features
from .meta_models import from_bytes
from .train import teacher_path


def load_teacher(spark: SparkSession, store: TableStore) -> tuple[bytes, str, list[str]]:
    """The saved head (state bytes, JSON) and the base models it expects, in column order."""
    path = teacher_path(store)
    try:
        meta_json = files.read_text(spark, f"{path}/model.json")
    except Exception as exc:  # noqa: BLE001 - Hadoop raises its own types through py4j
        raise FileNotFoundError(f"no teacher head under {path}: run the fusion stage first ({exc})") from None
    return files.read_bytes(spark, f"{path}/state.bin"), meta_json, json.loads(meta_json)["models"]


def base_predictions(spark: SparkSession, cfg: Config, store: TableStore, features: DataFrame,
                     models: list[str]) -> DataFrame:
    """(user_id, month, p_<model>...) from each refit base model, in ``models`` order."""
    wide = None
    for name in models:
        model = load_model(spark, model_path(store, name), cfg.base_models, model_roots(cfg, store.root))
        p = model.predict(model.features.encode(features)).select(*KEYS, F.col("p").alias(f"p_{name}"))
        wide = p if wide is None else wide.join(p, list(KEYS))
    return wide


def teacher_scores(spark: SparkSession, cfg: Config, store: TableStore, features: DataFrame) -> DataFrame:
    """(user_id, month, p_teacher) for every row of a features frame."""
    state, meta_json, models = load_teacher(spark, store)
    wide = base_predictions(spark, cfg, store, features, models)
    head = spark.sparkContext.broadcast((state, meta_json))
    p_cols = [f"p_{m}" for m in models]

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        model = from_bytes(*head.value)
        for b in batches:
            x = relative_meta_features(b[p_cols].to_numpy(np.float64))
            yield pd.DataFrame({"user_id": b["user_id"], "month": b["month"], "p_teacher": model.predict(x)})

    return wide.mapInPandas(score, "user_id long, month string, p_teacher double")
