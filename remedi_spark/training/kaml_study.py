"""The KAML ablations: what do open-window rows, the ranking loss and hierarchical heads each add?

Variants, all trained on the same training-split users with the configured KAML model's
parameters (one process over in-memory arrays, like the KDEF study) and scored on the
held-out split's fully labelled rows:

* ``full``: KAML on the fully labelled rows plus the open-window rows of the same users.
* ``without_open_windows``: the same model on the fully labelled rows only.
* ``without_rank_loss``: ``rank_weight = 0`` (open-window rows still train the observed heads).
* ``independent_heads``: ``shared = false``, no knowledge passed from shorter to longer horizons.
* ``mlp_baseline``: a plain binary MLP with KAML's trunk on the fully labelled rows (what a
  single-label base model can use).

The open-window rows are the ``split = open`` rows of the folds table, or, when the folds were
built without ``folds.include_open_windows``, the same rows derived from the features table
(:func:`~remedi_spark.folds.assign.open_window_rows`), so the study never depends on that switch.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from ..config import BootstrapSettings, Config, ConfigError
from ..folds.assign import OPEN, open_window_rows
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..metrics import k_for, lead_metrics
from ..models.neural.loop import make_module, predict_logits, train_in_process
from ..models.neural.model import HORIZON_COLS
from ..models.neural.zoo.kaml import KAML
from .oof import training_frame
from .study_inputs import (ABLATION_HEADER, Arrays, ablation_cells, cell, markdown_table, study_intervals, study_model,
                           study_rows)


VARIANTS: dict[str, dict[str, Any]] = {
    "full": {"family": "kaml", "open": True, "model": {}},
    "without_open_windows": {"family": "kaml", "open": False, "model": {}},
    "without_rank_loss": {"family": "kaml", "open": True, "model": {"rank_weight": 0.0}},
    "independent_heads": {"family": "kaml", "open": True, "model": {"shared": False}},
    "mlp_baseline": {"family": "mlp", "open": False, "model": {}},
}
_MLP_KEYS = ("emb_dim", "hidden", "dropout")


def _concat(a: Arrays, b: Arrays) -> Arrays:
    return tuple(np.concatenate([x, y]) for x, y in zip(a, b))  # type: ignore[return-value]


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _evaluate(model: Any, test: Arrays, k_fraction: float) -> tuple[dict[str, Any], np.ndarray]:
    """Union-probability metrics on ``test`` and, for horizon models, each head's AUC; and the
    union probabilities themselves."""
    dense, ids, y, horizons = test
    p = 1.0 / (1.0 + np.exp(-predict_logits(model, dense, ids).astype(np.float64)))
    m = lead_metrics(y, p, k_for(len(y), k_fraction))
    row = {"auc": m["auc"], "logloss": m["logloss"], "precision_at_k": m["precision_at_k"]}
    z = predict_logits(model, dense, ids, key="horizon_logits") if model.needs_horizons else None
    for h in range(len(HORIZON_COLS)):
        row[f"auc_h{h + 1}"] = None if z is None else _auc(horizons[:, h], z[:, h])
    return row, p


def kaml_ablation_table(train: Arrays, open_rows: Arrays, valid: Arrays, test: Arrays, vocab_sizes: list[int],
                        num_numeric: int, model_cfg: dict, params: dict[str, Any], k_fraction: float, *,
                        bootstrap_settings: BootstrapSettings, test_owners: np.ndarray | None = None
                        ) -> pd.DataFrame:
    """One row per variant of :data:`VARIANTS`: AUC, LogLoss and P@K of the union probability on the
    fully labelled ``test`` rows with paired-bootstrap intervals over ``test_owners`` (the owner of each
    test row; None: every row its own owner), each variant's AUC and LogLoss difference to ``full``
    with its interval, each horizon head's AUC, rows used, epochs and training seconds."""
    if np.isnan(train[3]).any() or np.isnan(test[3]).any():
        raise ValueError("kaml study: train and test rows must be fully labelled (open windows go in open_rows)")
    rows, scores = [], {}
    for variant, spec in VARIANTS.items():
        if spec["family"] == "mlp":
            cfg = {k: model_cfg[k] for k in _MLP_KEYS if k in model_cfg}
        else:
            cfg = {**model_cfg, **spec["model"]}
        model = make_module(spec["family"], cfg, vocab_sizes, num_numeric, seed=params["seed"])
        built = model.cfg if isinstance(model, KAML) else None  # the MLP baseline has no heads
        data = _concat(train, open_rows) if spec["open"] else train
        start = time.perf_counter()
        result = train_in_process(model, data if model.needs_horizons else data[:3], params, valid[:3])
        seconds = time.perf_counter() - start
        model.load_state_dict(result["state"])
        metrics, scores[variant] = _evaluate(model, test, k_fraction)
        rows.append({"variant": variant, "family": spec["family"],
                     "open_windows": bool(spec["open"]), "shared": bool(built.shared) if built else False,
                     "rank_weight": float(built.rank_weight) if built else 0.0,
                     "train_rows": len(data[2]), "open_rows": len(open_rows[2]) if spec["open"] else 0,
                     **metrics, "epochs": result["epochs"], "train_seconds": seconds})
    intervals = study_intervals(test[2], scores, test_owners, k_fraction, bootstrap_settings,
                                {v: "full" for v in VARIANTS if v != "full"})
    return pd.DataFrame([{**row, **intervals[row["variant"]]} for row in rows])


def _study_folds(store: TableStore) -> DataFrame:
    """The folds table, with open-window rows derived from ``features`` when it holds none."""
    folds = store.read("folds")
    if folds.filter(F.col("split") == OPEN).limit(1).count():
        return folds
    labelled = folds.filter(F.col("split") != OPEN)
    return labelled.unionByName(open_window_rows(store.read("features"), labelled))


def run_kaml_study(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``kaml-study``: the ablation table of the configured KAML model, written to ``kaml_study``;
    the summary holds the rows used and the table as records."""
    spec, params = study_model(cfg, "kaml_study", cfg.kaml_study.model, "kaml")
    data = training_frame(store, cfg, _study_folds(store))
    rows = study_rows(cfg, spec, params, data, HORIZON_COLS, cfg.kaml_study.max_train_rows)
    train = rows.arrays(rows.split("train", early_stopping=False))
    open_rows = rows.arrays(rows.split(OPEN, early_stopping=False))
    valid = rows.arrays(rows.split("train", early_stopping=True))
    test = rows.arrays(rows.split("test"))
    test_owners = rows.owners(rows.split("test"))
    if not len(open_rows[2]):
        raise ConfigError("kaml study: the features table has no rows with an open label window after the newest "
                          "fold month (features.observed_through); nothing to ablate")
    table = kaml_ablation_table(train, open_rows, valid, test, rows.fmap.vocab_sizes, len(rows.fmap.numeric),
                                params.model, params.loop_params(), cfg.base_models.metric_k_fraction,
                                bootstrap_settings=cfg.evaluation.bootstrap, test_owners=test_owners)
    table["run_id"] = store.run.run_id if store.run else "adhoc"
    store.write_table(frame_from_pandas(spark, table, "kaml_study"), "kaml_study")
    return {"rows": {"train": len(train[2]), "open": len(open_rows[2]), "valid": len(valid[2]),
                     "test": len(test[2])},
            "table": table.drop(columns="run_id").round(6).to_dict("records")}


def format_kaml_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one line per variant (union AUC, LogLoss and P@K with intervals, the AUC and LogLoss
    difference to ``full``, per-horizon AUC, rows, seconds), then the positives the numbers rest on."""
    header = ["variant", *ABLATION_HEADER, "AUC T+1", "AUC T+2", "AUC T+3", "train rows (open)", "seconds"]
    rows = [[r["variant"], *ablation_cells(r), *(cell(r[f"auc_h{h}"], ".4f") for h in (1, 2, 3)),
             f"{r['train_rows']:,} ({r['open_rows']:,})", cell(r["train_seconds"], ".1f")] for r in records]
    lines = [markdown_table(header, rows)]
    if records and records[0].get("positives") is not None:
        lines.append(f"\n{records[0]['positives']:,} positive held-out rows; {100 * records[0]['ci_level']:.0f}% "
                     "intervals, paired bootstrap over owners.")
    return "\n".join(lines)
