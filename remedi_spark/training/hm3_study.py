"""The HM3 ablations: what do the auxiliary funnel tasks and the conditional-probability heads add?

Variants, all trained on the same training-split users with the configured HM3 model's
parameters (one process over in-memory arrays, like the KDEF and KAML studies) and scored on
the held-out split's fully labelled rows:

* ``full``: the configured model (hierarchical heads, auxiliary tasks with ``aux_weight``).
* ``without_aux``: ``aux_weight = 0``: the same heads, trained on the purchase label only.
* ``flat_heads``: ``hierarchical = false``: independent engage/visit/buy heads on the trunk.

Each row has AUC, LogLoss and P@K of P(buy) vs ``y`` and the AUC of the engage and visit
outputs vs ``y_engage`` and ``y_visit``. The teacher with vs without HM3 is the fusion ablation
``without_hm3``. :func:`funnel_scores` scores a frame with a trained HM3 base model and returns
the funnel probabilities for analysis (the OOF table keeps its fixed schema).
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
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..metrics import k_for, lead_metrics
from ..models.base import LABEL, load_model, model_roots
from ..models.neural.loop import make_module, predict_outputs, train_in_process
from ..models.neural.model import NeuralModel
from ..models.neural.zoo.hm3 import AUX_LABELS
from .oof import model_path, training_frame
from .study_inputs import (ABLATION_HEADER, Arrays, ablation_cells, cell, markdown_table, study_intervals, study_model,
                           study_rows)


VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "without_aux": {"aux_weight": 0.0},
    "flat_heads": {"hierarchical": False},
}
FUNNEL_OUTPUTS = ("p_engage", "p_visit")


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def _evaluate(model: Any, test: Arrays, k_fraction: float) -> tuple[dict[str, Any], np.ndarray]:
    """P(buy) metrics on ``test`` and the AUC of P(engage), P(visit) vs their labels (known rows);
    and P(buy) itself."""
    dense, ids, y, aux = test
    out = predict_outputs(model, dense, ids, ("logit", *FUNNEL_OUTPUTS))
    p = 1.0 / (1.0 + np.exp(-out["logit"].astype(np.float64)))
    m = lead_metrics(y, p, k_for(len(y), k_fraction))
    return {"auc": m["auc"], "logloss": m["logloss"], "precision_at_k": m["precision_at_k"],
            "auc_engage": _auc(aux[:, 0], out["p_engage"]), "auc_visit": _auc(aux[:, 1], out["p_visit"])}, p


def hm3_ablation_table(train: Arrays, valid: Arrays, test: Arrays, vocab_sizes: list[int], num_numeric: int,
                       model_cfg: dict, params: dict[str, Any], k_fraction: float, *,
                       bootstrap_settings: BootstrapSettings, test_owners: np.ndarray | None = None) -> pd.DataFrame:
    """One row per variant of :data:`VARIANTS`: hierarchical, aux_weight, train rows, AUC, LogLoss and
    P@K of P(buy) on ``test`` with paired-bootstrap intervals over ``test_owners`` (None: every row its
    own owner), each variant's AUC and LogLoss difference to ``full`` with its interval, the engage and
    visit heads' AUC, epochs and training seconds."""
    if np.isnan(train[2]).any() or np.isnan(test[2]).any():
        raise ValueError(f"hm3 study: train and test rows need a known {LABEL!r} (fully labelled rows only)")
    rows, scores = [], {}
    for variant, change in VARIANTS.items():
        model = make_module("hm3", {**model_cfg, **change}, vocab_sizes, num_numeric, seed=params["seed"])
        start = time.perf_counter()
        result = train_in_process(model, train[:3], params, valid[:3], aux=train[3])
        seconds = time.perf_counter() - start
        model.load_state_dict(result["state"])
        metrics, scores[variant] = _evaluate(model, test, k_fraction)
        rows.append({"variant": variant, "hierarchical": bool(model.cfg.hierarchical),
                     "aux_weight": float(model.cfg.aux_weight), "train_rows": len(train[2]),
                     **metrics, "epochs": result["epochs"], "train_seconds": seconds})
    intervals = study_intervals(test[2], scores, test_owners, k_fraction, bootstrap_settings,
                                {v: "full" for v in VARIANTS if v != "full"})
    return pd.DataFrame([{**row, **intervals[row["variant"]]} for row in rows])


def run_hm3_study(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``hm3-study``: the ablation table of the configured HM3 model, written to ``hm3_study``;
    the summary holds the rows used and the table as records."""
    spec, params = study_model(cfg, "hm3_study", cfg.hm3_study.model, "hm3")
    data = training_frame(store, cfg).filter(F.col("split").isin("train", "test"))
    missing = [c for c in AUX_LABELS if c not in data.columns]
    if missing:
        raise ConfigError(f"hm3 study: table 'features' lacks the funnel label columns {missing}: rebuild the "
                          "features (stage features) with this version")
    rows = study_rows(cfg, spec, params, data, AUX_LABELS, cfg.hm3_study.max_train_rows)
    train = rows.arrays(rows.split("train", early_stopping=False))
    valid = rows.arrays(rows.split("train", early_stopping=True))
    test = rows.arrays(rows.split("test"))
    table = hm3_ablation_table(train, valid, test, rows.fmap.vocab_sizes, len(rows.fmap.numeric), params.model,
                               params.loop_params(), cfg.base_models.metric_k_fraction,
                               bootstrap_settings=cfg.evaluation.bootstrap, test_owners=rows.owners(rows.split("test")))
    table["run_id"] = store.run.run_id if store.run else "adhoc"
    store.write_table(frame_from_pandas(spark, table, "hm3_study"), "hm3_study")
    return {"rows": {"train": len(train[2]), "valid": len(valid[2]), "test": len(test[2])},
            "table": table.drop(columns="run_id").round(6).to_dict("records")}


def funnel_scores(spark: SparkSession, cfg: Config, store: TableStore, df: DataFrame, model: str = "hm3"
                  ) -> DataFrame:
    """``user_id, month, p, p_engage, p_visit`` for the rows of ``df`` (a features frame) from the saved
    HM3 base model ``model`` (``<root>/models/<model>/``, written by ``train-base``)."""
    spec = next((s for s in cfg.base_models.models if s.name == model), None)
    if spec is None or spec.family != "hm3":
        raise ConfigError(f"funnel scores: {model!r} is not a configured base model of family hm3")
    trained = load_model(spark, model_path(store, model), cfg.base_models, model_roots(cfg, store.root))
    if not isinstance(trained, NeuralModel):
        raise ConfigError(f"funnel scores: the model saved at {model_path(store, model)} is not a torch model")
    return trained.predict_outputs(trained.features.encode(df), FUNNEL_OUTPUTS)


def format_hm3_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one line per variant (AUC, LogLoss, P@K of P(buy) with intervals, the AUC and LogLoss
    difference to ``full``, engage/visit AUC, rows, seconds), then the positives the numbers rest on."""
    header = ["variant", "heads", "aux weight", *ABLATION_HEADER, "AUC engage", "AUC visit", "train rows", "seconds"]
    rows = [[r["variant"], "hierarchical" if r["hierarchical"] else "flat", cell(r["aux_weight"], ".2f"),
             *ablation_cells(r), cell(r["auc_engage"], ".4f"), cell(r["auc_visit"], ".4f"), f"{r['train_rows']:,}",
             cell(r["train_seconds"], ".1f")] for r in records]
    lines = [markdown_table(header, rows)]
    if records and records[0].get("positives") is not None:
        lines.append(f"\n{records[0]['positives']:,} positive held-out rows; {100 * records[0]['ci_level']:.0f}% "
                     "intervals, paired bootstrap over owners.")
    return "\n".join(lines)
