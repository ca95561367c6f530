"""Neural base models (MLP, DeepFM, xDeepFM, KDEF, KAML, HM3) behind the common :class:`BaseModel` contract.

``fit`` fits a :class:`FeatureMap` on the training rows, converts them to tensors and trains
with TorchDistributor on Petastorm (see :mod:`.distributed`); ``predict`` scores a Spark
DataFrame with ``mapInPandas`` (model loaded once per Python worker, ``weights_only=True``).
The artifact is the best epoch's ``state_dict``; the sidecar keeps the feature map.
Zoo models that declare ``needs_horizons`` (KAML) also get y_h1..y_h3 per row (column ``h``,
NaN = horizon not observed), so their training rows may include open label windows; models that
declare ``aux_labels`` (HM3: y_engage, y_visit) get those columns (column ``a``, NaN = unknown).
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from ...features.labels import HORIZON_LABELS
from ..base import KEYS, LABEL, BaseModel, keyed_pandas, keyed_parts
from ..registry import aux_labels, needs_horizons
from .base import build_config
from .feature_map import FeatureMap

_LOADED: dict[int, object] = {}
HORIZON_COLS = HORIZON_LABELS


@dataclass(frozen=True)
class TorchTrainParams:
    """``params`` of a torch model in conf/models.yaml; ``model`` is the zoo model's own config."""

    epochs: int = 5
    batch_size: int = 2048
    # > 0: the batch shrinks so each epoch has at least this many optimiser steps per rank. 50: on the
    # 800k-owner table the configured batches already give hundreds of steps (no change there), but the
    # demo's 150k training rows over 2 ranks at batch 4096 gave 18 steps an epoch, too few for Adam to
    # move past the start within the 3-4 configured epochs; 50 keeps batches >= ~1,000 rows on the demo
    min_steps_per_epoch: int = 50
    lr: float = 1e-3
    warmup_steps: int | None = None  # linear lr warm-up over this many first steps; None = half an epoch, 0 = off
    lr_patience: int = 2  # lr × 0.1 after this many epochs in a row without a better validation log loss
    patience: int = 2  # early stopping: epochs without a better validation stop_metric
    # what early stopping watches on the early-stopping rows (auc | logloss). logloss: those rows hold few
    # positives (64 in a demo-full fold), so their AUC is noisy and, watched, kept the first epoch of MLP,
    # DeepFM, xDeepFM and KAML; on fold 0's OOF rows of training owners (141 positives) stopping on the log
    # loss gave AUC as good or better and a log loss closer to LightGBM's (bench/results/neural_defaults.json)
    stop_metric: str = "logloss"
    grad_clip: float = 10.0
    embedding_l2: float = 1e-5
    numeric_encoding: str = "standardize"
    n_buckets: int = 20
    num_processes: int = 2
    # distributor: TorchDistributor on Petastorm readers (num_processes ranks, any cluster); driver: one
    # process on the driver over the rows collected to it (no launch, no conversion: the fixed costs of
    # a small table on one machine; the rows must fit in the driver's memory)
    launcher: str = "distributor"
    launch_retries: int = 1  # TorchDistributor runs repeated after a failure (e.g. a port taken meanwhile)
    seed: int = 7
    model: dict = field(default_factory=dict)

    def loop_params(self) -> dict:
        """The keys the epoch loop reads (not the model config or the feature encoding)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("model", "numeric_encoding", "n_buckets", "launcher")}


def _load(state: bytes, family: str, vocab_sizes: list[int], num_numeric: int, model_cfg: dict):
    import torch

    from .loop import make_module

    key = hash(state)
    if key not in _LOADED:
        model = make_module(family, model_cfg, vocab_sizes, num_numeric)
        model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        model.eval()
        _LOADED.clear()
        _LOADED[key] = model
    return _LOADED[key]


class NeuralModel(BaseModel):
    artifact_file = "model.pt"

    @property
    def train_params(self) -> TorchTrainParams:
        return build_config(TorchTrainParams, self.spec.params)

    @property
    def needs_horizons(self) -> bool:
        """True when the zoo model trains on the per-horizon labels (``Batch.horizons``)."""
        return needs_horizons(self.spec)

    @property
    def aux_labels(self) -> list[str]:
        """The auxiliary label columns the zoo model trains on (``Batch.aux``), in its order."""
        return list(aux_labels(self.spec))

    def _feature_map(self) -> FeatureMap:
        return FeatureMap(**self.info["feature_map"])

    def fit(self, train: DataFrame, valid: DataFrame) -> "NeuralModel":
        spark = train.sparkSession
        params = self.train_params
        fmap = FeatureMap.fit(train, self.features.columns, vocab=self.features.categorical,
                              numeric_encoding=params.numeric_encoding, n_buckets=params.n_buckets)
        self.info["feature_map"] = asdict(fmap)
        columns = fmap.columns
        horizons = list(HORIZON_COLS) if self.needs_horizons else []
        aux = self.aux_labels
        missing = [c for c in [*horizons, *aux] if c not in train.columns]
        if missing:
            raise ValueError(f"model {self.name!r} (family {self.spec.family}) trains on the label columns "
                             f"{[*horizons, *aux]}: training rows lack columns {missing}")

        valid_pdf = keyed_pandas(valid, *columns, LABEL)
        v_y = valid_pdf[LABEL].astype("float64").to_numpy(dtype=np.float32)
        if np.isnan(v_y).any():
            raise ValueError(f"model {self.name!r}: {int(np.isnan(v_y).sum())} early-stopping rows have a null "
                             f"{LABEL!r} (open label windows): validate on fully labelled rows only")
        v_dense, v_ids = fmap.transform(valid_pdf)
        valid_arrays = (v_dense, v_ids, v_y)
        if params.launcher == "driver":
            result = train_on_driver(train, self.spec.family, params, fmap, horizons, aux, valid_arrays)
        elif params.launcher == "distributor":
            rows = _tensor_rows(train, fmap, horizons, aux, params.num_processes)
            result = train_distributed_call(spark, rows, self.spec.family, params, fmap, valid_arrays)
        else:
            raise ValueError(f"model {self.name!r}: params.launcher must be 'distributor' or 'driver', "
                             f"got {params.launcher!r}")
        self._state = result["state"]
        self.info.update(valid_auc=result["valid_auc"], epochs=result["epochs"],
                         steps_per_epoch=result["steps_per_epoch"], batch_size=result["batch_size"],
                         epoch_seconds=[round(s, 3) for s in result["epoch_seconds"]],
                         **{k: result[k] for k in ("best_epoch", "valid_logloss", "base_rate", "curve") if k in result})
        return self

    def predict(self, df: DataFrame) -> DataFrame:
        return self.predict_outputs(df)

    def predict_outputs(self, df: DataFrame, outputs: tuple[str, ...] = ()) -> DataFrame:
        """``user_id, month, p`` plus one double column per name in ``outputs``: per-row (B,) entries of
        the model's forward dict (e.g. HM3's ``p_engage``, ``p_visit``), for analysis."""
        spark = df.sparkSession
        fmap = self._feature_map()
        state = spark.sparkContext.broadcast(self._state)
        family, model_cfg = self.spec.family, self.train_params.model
        columns = fmap.columns

        def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            from .loop import predict_outputs

            model = _load(state.value, family, fmap.vocab_sizes, len(fmap.numeric), model_cfg)
            for b in batches:
                dense, ids = fmap.transform(b)
                values = predict_outputs(model, dense, ids, ("logit", *outputs))
                out = {"user_id": b["user_id"], "month": b["month"],
                       "p": 1.0 / (1.0 + np.exp(-values["logit"].astype(np.float64)))}
                for name in outputs:
                    if values[name].ndim != 1:
                        raise ValueError(f"model {family!r}: output {name!r} has shape {values[name].shape[1:]} "
                                         "per row; only one value per row can be a column")
                    out[name] = values[name].astype(np.float64)
                yield pd.DataFrame(out)

        schema = "user_id long, month string, p double" + "".join(f", {n} double" for n in outputs)
        return df.select(*KEYS, *columns).mapInPandas(score, schema)

    def artifact(self) -> bytes:
        return self._state

    def _restore(self, spark: SparkSession, data: bytes) -> None:
        self._state = data


def _tensor_rows(train: DataFrame, fmap: FeatureMap, horizons: list[str], aux: list[str],
                 num_processes: int) -> DataFrame:
    """The training rows as the Petastorm converter reads them: dense/cat arrays, y, h and a."""
    def to_tensors(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for b in batches:
            dense, ids = fmap.transform(b)
            out = {"dense": list(dense), "cat": list(ids), "y": b[LABEL].astype(np.float32)}
            if horizons:  # null (not observed) → NaN
                out["h"] = list(b[horizons].astype("float64").to_numpy(dtype=np.float32))
            if aux:  # null (unknown) → NaN
                out["a"] = list(b[aux].astype("float64").to_numpy(dtype=np.float32))
            yield pd.DataFrame(out)

    schema = ("dense array<float>, cat array<bigint>, y float" + (", h array<float>" if horizons else "")
              + (", a array<float>" if aux else ""))
    # the same batches every run; 2 parts per process so each reader shard gets data
    return (keyed_parts(train, 2 * num_processes).select(*fmap.columns, LABEL, *horizons, *aux)
            .mapInPandas(to_tensors, schema))


def train_on_driver(train: DataFrame, family: str, params: TorchTrainParams, fmap: FeatureMap,
                    horizons: list[str], aux: list[str], valid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    """The epoch loop in this (the driver's) process over ``train`` collected in key order: the result
    of :func:`.distributed.train_distributed` without its launch and Petastorm conversion."""
    import torch

    from .loop import make_module, train_in_process

    pdf = keyed_pandas(train, *fmap.columns, LABEL, *horizons, *aux)
    dense, ids = fmap.transform(pdf)
    y = pdf[LABEL].astype("float64").to_numpy(dtype=np.float32)  # null (open window) → NaN
    arrays = (dense, ids, y)
    if horizons:
        arrays = (*arrays, pdf[horizons].astype("float64").to_numpy(dtype=np.float32))
    aux_values = pdf[aux].astype("float64").to_numpy(dtype=np.float32) if aux else None
    model = make_module(family, params.model, fmap.vocab_sizes, len(fmap.numeric), seed=params.seed)
    result = train_in_process(model, arrays, params.loop_params(), valid, aux=aux_values)
    buffer = io.BytesIO()
    torch.save(result.pop("state"), buffer)
    return {**result, "state": buffer.getvalue()}


def train_distributed_call(spark: SparkSession, rows: DataFrame, family: str, params: TorchTrainParams,
                           fmap: FeatureMap, valid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict:
    from .distributed import train_distributed

    return train_distributed(spark, rows, family, params.model, fmap.vocab_sizes, len(fmap.numeric),
                             params.loop_params(), valid)
