"""Distributed training of a zoo model with pyspark's TorchDistributor on Petastorm readers.

The only module that imports petastorm. Every rank reads its own shard of the converted
training rows and runs the same number of steps per epoch (``rows // (batch × world)``, the
reader loops forever), so DDP never waits on a rank that ran out of data. The epoch loop is
:func:`.loop.fit_epochs`; after each epoch rank 0 scores the validation rows and broadcasts the
AUC and log loss, so every rank takes the same early-stopping and learning-rate decisions. Every
rank builds the model with the same seed and the output bias at the training rows' base rate
(read on the driver from the converted files).

pyspark's torchrun wrapper exits 0 whatever torchrun did, so a failed run reaches the driver only
as "TorchDistributor failed during training". The worker therefore returns its own traceback
instead of raising, and :func:`run_with_retries` names it (or, for a failure outside the worker,
such as the rendezvous port TorchDistributor probes free and releases before torchrun binds it,
says where the launcher's output went) and runs the training again ``launch_retries`` times.
"""
from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile
import traceback
import warnings
from typing import Any, Callable

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from ...log_streams import launcher_output_to_log
from ...spark import root_cause

CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"


def _train_worker(*args: Any) -> dict[str, Any]:
    """:func:`_train_rank`'s result, or ``{"error": traceback, "rank": r}`` if it raised."""
    try:
        return _train_rank(*args)
    except Exception:  # noqa: BLE001 - returned, not swallowed: the driver raises it with the rank
        return {"error": traceback.format_exc(), "rank": os.environ.get("RANK", "?")}


def _train_rank(converter: Any, model_name: str, model_cfg: dict, vocab_sizes: list[int], num_numeric: int,
                params: dict, valid: tuple[np.ndarray, np.ndarray, np.ndarray], base_rate: float) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from remedi_spark.models.neural.base import Batch
    from remedi_spark.models.neural.loop import epoch_batch_size, fit_epochs, make_module, validation_metrics

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = make_module(model_name, model_cfg, vocab_sizes, num_numeric, seed=params["seed"], base_rate=base_rate)
    ddp = DistributedDataParallel(model)
    batch_size = epoch_batch_size(len(converter), params, world)
    steps = max(1, len(converter) // (batch_size * world))

    def agreed_metrics(m: Any) -> dict[str, float]:
        mine = validation_metrics(m, valid) if rank == 0 else {"auc": 0.0, "logloss": 0.0}
        both = torch.tensor([mine["auc"], mine["logloss"]], dtype=torch.float64)
        dist.broadcast(both, src=0)
        return {"auc": float(both[0]), "logloss": float(both[1])}

    # seeded row-group shuffle and one reader thread: the same batches in the same order on every run
    with converter.make_torch_dataloader(batch_size=batch_size, cur_shard=rank, shard_count=world,
                                         num_epochs=None, workers_count=1, seed=params["seed"]) as loader:
        batches = (Batch(b["dense"].float(), b["cat"].long(), b["y"].float(),
                         b["h"].float() if "h" in b else None, b["a"].float() if "a" in b else None)
                   for b in loader)
        result = fit_epochs(model, ddp, batches, steps, params, agreed_metrics)
    dist.destroy_process_group()
    if rank != 0:
        return {}
    buffer = io.BytesIO()
    torch.save(result.pop("state"), buffer)
    return {**result, "state": buffer.getvalue(), "steps_per_epoch": steps, "batch_size": batch_size,
            "base_rate": base_rate}


def training_base_rate(converter: Any) -> float:
    """Share of positives among the known labels (column ``y``, NaN = unknown) of the converted rows,
    read from the converter's Parquet files."""
    import pyarrow.parquet as pq
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    from .loop import base_rate

    fs, paths = get_filesystem_and_path_or_paths(list(converter.file_urls))
    labels = []
    for path in paths:
        with fs.open(path, "rb") as f:
            labels.append(pq.read_table(f, columns=["y"]).column("y").to_numpy(zero_copy_only=False))
    return base_rate(np.concatenate(labels).astype(np.float64))


def ensure_cache_dir(spark: SparkSession) -> None:
    """Petastorm's converter needs a cache URL; default to a local temp dir (set it on clusters),
    removed when this Python process exits (each converter deletes its own files, not the dir)."""
    if not spark.conf.get(CACHE_CONF, None):
        path = tempfile.mkdtemp(prefix="remedi-petastorm-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        spark.conf.set(CACHE_CONF, "file://" + path)


def train_distributed(spark: SparkSession, rows: DataFrame, model_name: str, model_cfg: dict,
                      vocab_sizes: list[int], num_numeric: int, params: dict,
                      valid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Train on ``rows`` (columns dense array<float>, cat array<bigint>, y float and, for models that
    need horizons, h array<float> with NaN = not observed, and for models with auxiliary labels
    a array<float>, NaN = unknown); rank 0's result."""
    from petastorm.spark import SparkDatasetConverter, make_spark_converter
    from pyspark.ml.torch.distributor import TorchDistributor

    ensure_cache_dir(spark)
    listed = make_spark_converter(rows)
    # the files in name order: Spark lists them in directory order, which varies between runs (the
    # names hold random ids), and the reader deals row groups to shards in the order it is given
    converter = SparkDatasetConverter(listed.cache_dir_url, sorted(listed.file_urls), listed.dataset_size)
    try:
        rate = training_base_rate(converter)
        distributor = TorchDistributor(num_processes=params["num_processes"], local_mode=False, use_gpu=False)
        with launcher_output_to_log():  # torchrun's chatter: to the log file unless --verbose
            return run_with_retries(
                lambda: distributor.run(_train_worker, converter, model_name, model_cfg, vocab_sizes, num_numeric,
                                        params, valid, rate),
                retries=params["launch_retries"], what=f"distributed training of {model_name!r}")
    finally:
        converter.delete()


def run_with_retries(run: Callable[[], dict[str, Any]], retries: int, what: str) -> dict[str, Any]:
    """``run()``'s result; a run that raises or returns ``{"error": ...}`` is warned about and run
    again, up to ``retries`` more times, then raised as a RuntimeError naming ``what`` and the cause."""
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            result = run()
        except Exception as exc:  # noqa: BLE001 - the launcher's failures are re-raised below
            cause = (f"the launcher failed ({root_cause(exc)}); torchrun's own output, with the reason, is "
                     "in the driver's stderr (from the CLI: in the run's log file, on the console with --verbose)")
        else:
            if "error" not in result:
                return result
            cause = f"rank {result['rank']} raised:\n{result['error'].rstrip()}"
        if attempt < attempts:
            warnings.warn(f"{what}, attempt {attempt} of {attempts}, failed; running it again. {cause}",
                          RuntimeWarning, stacklevel=2)
    raise RuntimeError(f"{what} failed {attempts} time(s); the last time {cause}")
