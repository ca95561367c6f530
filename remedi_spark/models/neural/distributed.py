"""Distributed training of a zoo model with pyspark's TorchDistributor on Petastorm readers.

The only module that imports petastorm. Every rank reads its own shard of the converted
training rows and runs the same number of steps per epoch (``rows // (batch × world)``, the
reader loops forever), so DDP never waits on a rank that ran out of data. After each epoch
rank 0 scores the validation rows and broadcasts the AUC; every rank takes the same
early-stopping and learning-rate decisions from it.
"""
from __future__ import annotations

import io
import tempfile
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession

CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"


def _train_worker(converter: Any, model_name: str, model_cfg: dict, vocab_sizes: list[int], num_numeric: int,
                  params: dict, valid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from sklearn.metrics import roc_auc_score
    from torch.nn.parallel import DistributedDataParallel

    from remedi_spark.models.neural.base import Batch, build_config
    from remedi_spark.models.neural.zoo import MODELS

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(params["seed"])
    cls = MODELS[model_name]
    model = cls(vocab_sizes, num_numeric, build_config(cls.Config, model_cfg))
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=0)
    batch_size = params["batch_size"]
    steps = max(1, len(converter) // (batch_size * world))
    valid_batch = Batch(torch.from_numpy(valid[0]), torch.from_numpy(valid[1]), torch.from_numpy(valid[2]))
    best_auc, best_state, stale, epochs_run = -1.0, None, 0, 0
    with converter.make_torch_dataloader(batch_size=batch_size, cur_shard=rank, shard_count=world,
                                         num_epochs=None, workers_count=1) as loader:
        rows = iter(loader)
        for epoch in range(params["epochs"]):
            model.train()
            for _ in range(steps):
                b = next(rows)
                batch = Batch(b["dense"].float(), b["cat"].long(), b["y"].float())
                loss = model.compute_loss(ddp(batch), batch)["loss"]
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), params["grad_clip"])
                optimizer.step()
            epochs_run = epoch + 1
            auc = torch.zeros(1, dtype=torch.float64)
            if rank == 0:
                model.eval()
                with torch.no_grad():
                    p = torch.sigmoid(model(valid_batch)["logit"]).numpy()
                y = valid[2]
                auc[0] = roc_auc_score(y, p) if 0 < y.sum() < len(y) else -float(np.mean((p - y) ** 2))
            dist.broadcast(auc, src=0)
            score = float(auc[0])
            plateau.step(score)
            if score > best_auc:
                best_auc, stale = score, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
                if stale >= params["patience"]:
                    break
    dist.destroy_process_group()
    if rank != 0:
        return {}
    buffer = io.BytesIO()
    torch.save(best_state, buffer)
    return {"state": buffer.getvalue(), "valid_auc": best_auc, "epochs": epochs_run, "steps_per_epoch": steps}


def ensure_cache_dir(spark: SparkSession) -> None:
    """Petastorm's converter needs a cache URL; default to a local temp dir (set it on clusters)."""
    if not spark.conf.get(CACHE_CONF, None):
        spark.conf.set(CACHE_CONF, "file://" + tempfile.mkdtemp(prefix="remedi-petastorm-"))


def train_distributed(spark: SparkSession, rows: DataFrame, model_name: str, model_cfg: dict,
                      vocab_sizes: list[int], num_numeric: int, params: dict,
                      valid: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Train on ``rows`` (columns dense array<float>, cat array<bigint>, y float); rank 0's result."""
    from petastorm.spark import make_spark_converter
    from pyspark.ml.torch.distributor import TorchDistributor

    ensure_cache_dir(spark)
    converter = make_spark_converter(rows)
    try:
        distributor = TorchDistributor(num_processes=params["num_processes"], local_mode=False, use_gpu=False)
        return distributor.run(_train_worker, converter, model_name, model_cfg, vocab_sizes, num_numeric,
                               params, valid)
    finally:
        converter.delete()
