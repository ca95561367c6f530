"""The base-model contract shared by every model family (FuxiCTR-style: one module per family).

A model is built from its :class:`~remedi_spark.config.ModelSpec` (name, family, backend,
objective, feature group, params), the shared ``base_models`` settings and a
:class:`FeatureSpec`. ``fit(train, valid)`` trains on encoded Spark frames (``valid`` only for
early stopping), ``predict(df)`` returns ``user_id, month, p``, and ``save``/``load`` use a
LightGBM text model plus a JSON sidecar: no pickle.

A model fitted on a share of the negative rows (``training.negative_rate``, recorded with
:meth:`BaseModel.set_negative_rate` in ``info``, so saved with it) has its ``p`` corrected here, for
every family: :class:`BaseModel` wraps each subclass's ``predict`` (and ``predict_outputs``) so the
returned ``p`` is :func:`prior_corrected`. A family implements prediction on the training prior only.
"""
from __future__ import annotations

import json
import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ..config import BaseModelSettings, Config, ModelSpec, is_under
from ..features.labels import LABEL_COLUMNS
from ..io.files import read_bytes, read_text, write_bytes, write_text

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

KEYS = ("user_id", "month")
LABEL = "y"


# A shuffle's output order varies between runs (map outputs arrive in any order), and a model
# fitted on rows in another order is another model (float sums, bagging, batches). Every training
# input goes through one of these two, so a stage run twice, or on a cluster, gives the same model.
def keyed_parts(df: DataFrame, n: int) -> DataFrame:
    """``df`` in ``n`` partitions by hash of (user_id, month), each partition in key order: the
    rows each distributed training task (or reader shard) gets, whatever the input's layout."""
    return df.repartition(n, *KEYS).sortWithinPartitions(*KEYS)


def keyed_pandas(df: DataFrame, *columns: str) -> "pd.DataFrame":
    """``columns`` of ``df`` as pandas, rows sorted by (user_id, month): training inputs
    collected to the driver."""
    return df.orderBy(*KEYS).select(*columns).toPandas()


_IPC = T.StructType([T.StructField("ipc", T.BinaryType())])


def _as_ipc(batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
    """Each Arrow batch of a partition as one binary value: its IPC stream (runs in Python workers)."""
    import pyarrow as pa

    for batch in batches:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        yield pa.record_batch([pa.array([sink.getvalue().to_pybytes()], pa.binary())], names=["ipc"])


def keyed_arrow_batches(df: DataFrame, *columns: str) -> Iterator["pa.RecordBatch"]:
    """``columns`` of ``df`` as Arrow record batches, rows sorted by (user_id, month), streamed to the
    driver a partition at a time: for a collect too large to hold twice. ``toPandas`` holds every
    Arrow batch and the pandas frame at once, and Spark 3.5's self-destruct option frees nothing there
    (it converts a renamed copy of the table, which still holds the buffers): fusion's meta-features
    at 800k owners, 1.6 GiB of numbers, peaked the driver's Python at 6.8 GiB in ``toPandas``."""
    import pyarrow as pa

    ordered = df.orderBy(*KEYS).select(*columns)
    for row in ordered.mapInArrow(_as_ipc, _IPC).toLocalIterator():
        yield from pa.ipc.open_stream(row.ipc)


NEGATIVE_RATE = "negative_rate"  # info key: the share of negative rows the model was fitted on
# the prediction methods whose ``p`` column the negative-sampling correction applies to
PREDICTORS = ("predict", "predict_outputs")


def check_negative_rate(rate: float, who: str = "") -> None:
    """A ValueError (prefixed ``who: ``) unless ``rate`` is a share of the negative rows in (0, 1]."""
    if not 0 < rate <= 1 or math.isnan(rate):
        raise ValueError(f"{who + ': ' if who else ''}negative rate must lie in (0, 1], got {rate!r}")


def prior_corrected(p: Column, rate: float) -> Column:
    """``p`` of a model fitted on every positive and a share ``rate`` of the negatives, as a probability
    for the full population: ``logit + log(rate)``, written as ``rate p / (1 - p + rate p)`` so that 0
    and 1 stay 0 and 1 (a clipped regressor's output)."""
    check_negative_rate(rate)
    return p * F.lit(rate) / (F.lit(1.0) - p + p * F.lit(rate))


def _correcting(method: Any) -> Any:
    """``method`` (a model's ``predict``/``predict_outputs``) with its ``p`` column prior-corrected
    by the model's negative rate. Only the outermost call corrects: a predictor that calls another
    (NeuralModel.predict -> predict_outputs) or its parent's is corrected once."""
    @functools.wraps(method)
    def wrapper(self: "BaseModel", *args: Any, **kwargs: Any) -> DataFrame:
        if self.__dict__.get("_predicting"):
            return method(self, *args, **kwargs)
        self._predicting = True
        try:
            out = method(self, *args, **kwargs)
        finally:
            self._predicting = False
        rate = self.negative_rate
        return out if rate == 1.0 else out.withColumn("p", prior_corrected(F.col("p"), rate))

    wrapper._prior_corrected = True  # type: ignore[attr-defined]
    return wrapper


# keys and every label column: a label among the model inputs would be a leak
NOT_FEATURES = {"user_id", "month", *LABEL_COLUMNS}


def in_group(column: str, members: list[str]) -> bool:
    """A feature belongs to a group if the group lists it or a prefix of it (``name_...``)."""
    return any(column == m or column.startswith(m + "_") for m in members)


def channel_of(column: str, groups: dict[str, list[str]], channels: list[str] | None = None) -> str:
    """The first group of ``channels`` (``base_models.channel_groups``: the groups a feature is
    attributed to for lead reasons and importance; None = every group, by name) that holds
    ``column``, else ``"other"``. Never depends on the order of ``groups`` (a config read back from a
    run manifest has its keys sorted)."""
    order = sorted(groups) if channels is None else channels
    return next((g for g in order if g in groups and in_group(column, groups[g])), "other")


@dataclass
class FeatureSpec:
    """Which columns a model reads and how categoricals map to integer codes.

    Categorical values unseen in training become null (missing) at scoring time: never a crash.
    """

    numeric: list[str]
    categorical: dict[str, list[str]]

    def __post_init__(self) -> None:
        # one canonical column order: sidecars are JSON with sorted keys, so a dict's insertion
        # order would not survive a save/load and the model would read columns in another order
        self.categorical = {c: list(self.categorical[c]) for c in sorted(self.categorical)}

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    @property
    def categorical_indexes(self) -> list[int]:
        return [len(self.numeric) + i for i in range(len(self.categorical))]

    @classmethod
    def from_frame(cls, df: DataFrame, members: list[str] | None = None) -> "FeatureSpec":
        """Numeric and string feature columns of ``df`` (optionally one group); vocabularies from ``df``."""
        cols = [f for f in df.schema.fields if f.name not in NOT_FEATURES
                and (members is None or in_group(f.name, members))]
        if not cols:
            raise ValueError(f"no feature columns match the group {members}")
        strings = [f.name for f in cols if isinstance(f.dataType, T.StringType)]
        vocab: dict[str, list[str]] = {}
        if strings:
            row = df.agg(*[F.sort_array(F.collect_set(c)).alias(c) for c in strings]).first()
            vocab = {c: list(row[c]) for c in strings}
        numeric = [f.name for f in cols if not isinstance(f.dataType, T.StringType)]
        return cls(numeric=numeric, categorical=vocab)

    def subset(self, members: list[str] | None) -> "FeatureSpec":
        """The columns of one feature group (None = all), in this spec's order and with its
        vocabularies: what :meth:`from_frame` with ``members`` gives on the same rows, without a pass."""
        if members is None:
            return self
        numeric = [c for c in self.numeric if in_group(c, members)]
        categorical = {c: v for c, v in self.categorical.items() if in_group(c, members)}
        if not numeric and not categorical:
            raise ValueError(f"no feature columns match the group {members}")
        return FeatureSpec(numeric=numeric, categorical=categorical)

    def encode(self, df: DataFrame, extra: tuple[str, ...] = ()) -> DataFrame:
        """Keys, ``extra`` columns and the features as doubles (categoricals as codes)."""
        cats = []
        for c, values in self.categorical.items():
            mapping = F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(float(i)))])
            cats.append(mapping[F.col(c)].alias(c))
        keep = [c for c in (*KEYS, *extra) if c in df.columns]
        return df.select(*keep, *[F.col(c).cast("double").alias(c) for c in self.numeric], *cats)

    def unseen_counts(self, df: DataFrame) -> dict[str, int]:
        """Per categorical column, how many non-null values of ``df`` are not in the training
        vocabulary (they score as missing); columns with none are left out. One pass."""
        if not self.categorical:
            return {}
        row = df.agg(*[F.sum((F.col(c).isNotNull() & ~F.col(c).isin(values)).cast("int")).alias(c)
                       for c, values in self.categorical.items()]).first()
        return {c: int(row[c]) for c in self.categorical if row[c]}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BaseModel(ABC):
    """One base model. Subclasses implement fitting, prediction and the native model text.

    A subclass's ``predict`` (and ``predict_outputs``) returns ``p`` on its training rows' prior; the
    class wraps it (:meth:`__init_subclass__`) so callers get ``p`` corrected for the model's
    :attr:`negative_rate`, for models trained here and models loaded from a sidecar alike."""

    def __init__(self, spec: ModelSpec, settings: BaseModelSettings, features: FeatureSpec):
        self.spec = spec
        self.settings = settings
        self.features = features
        self.info: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in PREDICTORS:
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_prior_corrected", False):
                setattr(cls, name, _correcting(method))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def negative_rate(self) -> float:
        """The share of negative rows the model was fitted on (1.0: all of them, also for a model
        saved before the knob existed); its predictions are corrected for it."""
        return float(self.info.get(NEGATIVE_RATE, 1.0))

    def set_negative_rate(self, rate: float) -> "BaseModel":
        """Record that the model was fitted on every positive and a share ``rate`` of the negatives
        (``training.negative_rate``): predictions from now on, and from the saved model, add
        ``log(rate)`` to the logit."""
        check_negative_rate(rate, self.name)
        self.info[NEGATIVE_RATE] = float(rate)
        return self

    def lightgbm_params(self) -> dict[str, Any]:
        """Shared LightGBM params, then the model's own."""
        return {**self.settings.lightgbm, **self.spec.params}

    @abstractmethod
    def fit(self, train: DataFrame, valid: DataFrame) -> "BaseModel":
        """Train on ``train`` (encoded features + ``y``); ``valid`` is used for early stopping only."""

    @abstractmethod
    def predict(self, df: DataFrame) -> DataFrame:
        """``user_id, month, p`` for the rows of ``df`` (encoded features)."""

    artifact_file: str = "model.txt"  # LightGBM text; torch models write a state_dict instead

    @abstractmethod
    def artifact(self) -> bytes:
        """The trained model as bytes (LightGBM text model, or a torch state_dict)."""

    @abstractmethod
    def _restore(self, spark: SparkSession, data: bytes) -> None:
        """Rebuild the trained state from :meth:`artifact` output."""

    def save(self, spark: SparkSession, path: str, extra: dict[str, Any] | None = None) -> None:
        """Write the model artifact and the ``model.json`` sidecar (spec, features, params, info, extra)."""
        write_bytes(spark, f"{path}/{self.artifact_file}", self.artifact())
        sidecar = {"spec": asdict(self.spec), "features": self.features.to_dict(),
                   "params": self.lightgbm_params(), "info": self.info, **(extra or {})}
        write_text(spark, f"{path}/model.json", json.dumps(sidecar, indent=2, sort_keys=True, default=str))


def saved_model_dir(root: str, name: str = "") -> str:
    """``<root>/models/<name>``: where the pipeline on tables root ``root`` saves model ``name``
    (a base model, ``teacher`` or ``student``); without ``name`` the folder of all of them."""
    return f"{root.rstrip('/')}/models" + (f"/{name}" if name else "")


def model_roots(cfg: Config, root: str) -> list[str]:
    """Where models may be loaded from: ``<tables.root>/models`` and ``scoring.model_dir``."""
    return [saved_model_dir(root), *([cfg.scoring.model_dir] if cfg.scoring.model_dir else [])]


def load_model(spark: SparkSession, path: str, settings: BaseModelSettings, roots: list[str]) -> BaseModel:
    """Load a model saved by :meth:`BaseModel.save` from ``path``, which must lie under one of
    ``roots`` (see :func:`model_roots`). Artifacts are LightGBM text or a torch state_dict read with
    ``weights_only=True``, plus a JSON sidecar: nothing is unpickled."""
    from .registry import build_model

    if not any(is_under(path, root) for root in roots):
        raise ValueError(f"refusing to load a model from {path!r}: it is outside the model roots {roots}")

    sidecar = json.loads(read_text(spark, f"{path}/model.json"))
    spec = ModelSpec(**sidecar["spec"])
    model = build_model(spec, settings, FeatureSpec(**sidecar["features"]))
    model.info = sidecar["info"]
    model._restore(spark, read_bytes(spark, f"{path}/{model.artifact_file}"))
    return model
