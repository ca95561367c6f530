"""The KDEF K-table: does knowledge distillation between sub-networks beat independent ensembling?

For K = 1..max_k the first K sub-network types of ``kdef_study.subnets`` are trained two ways on
the same rows, with the same training parameters as the configured KDEF base model:

* ``kdef``: one KDEF model (shared embedding, examination-weighted distillation); its members
  are the K heads, its ensemble the teacher σ(mean_k z_k).
* ``independent``: each sub-network trained alone on its own embedding (a KDEF with one head,
  whose loss is then plain BCE); its ensemble is the mean fusion σ(mean_k z_k) of those nets.

Every member and ensemble gets AUC and LogLoss on the held-out split, and the ensembles get the
knowledge abundance (KA) of their embeddings. The study trains in one process over in-memory
arrays (the loop the distributed trainer runs per rank), so its numbers do not depend on the
cluster; K = 1 KDEF equals the independent first sub-network and is trained once.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from pyspark.sql import SparkSession

from ..config import BootstrapSettings, Config, ConfigError
from ..io.schemas import frame_from_pandas
from ..io.store import TableStore
from ..metrics import lead_metrics
from ..models.neural.base import RemediModel
from ..models.neural.layers import FieldEmbedding
from ..models.neural.loop import make_module, predict_logits, train_in_process
from .oof import training_frame
from .study_inputs import difference_cell, interval_cell, study_intervals, study_model, study_rows

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


def knowledge_abundance(model: torch.nn.Module, tau: float) -> float:
    """Share of singular values above ``tau`` of the model's normalised embedding matrix.

    The matrix stacks every embedding vector (categorical rows without the OOV slot, and the
    numeric field vectors) with each row scaled to unit length; singular values are divided by
    the largest, so ``tau`` is scale-free. 1.0 = every dimension carries information; values
    near 1/D mean the embeddings collapsed onto one direction. Averaged over embedding modules.
    """
    shares = []
    for emb in (m for m in model.modules() if isinstance(m, FieldEmbedding)):
        rows = [t.weight[1:] for t in emb.categorical] + [emb.numeric]
        w = torch.cat(rows).detach().double()
        w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sigma = torch.linalg.svdvals(w)
        shares.append(float((sigma / sigma.max() > tau).double().mean()))
    return float(np.mean(shares))


def _logits(model: RemediModel, data: Arrays) -> np.ndarray:
    """(N, K) sub-network logits (K = 1 for a single-head model)."""
    return predict_logits(model, data[0], data[1], key="logits").astype(np.float64)


_K_FRACTION = 0.1  # the bootstrap's list length; the table reports AUC and LogLoss, which do not depend on it
_REFERENCE = "independent ensemble (same K)"


def _probability(logit: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logit))


def _scores(y: np.ndarray, logit: np.ndarray) -> dict[str, float]:
    m = lead_metrics(y, _probability(logit), k=max(1, len(y) // 10))
    return {"auc": m["auc"], "logloss": m["logloss"]}


def _key(row: dict[str, Any]) -> str:
    return f"{row['k']}|{row['variant']}|{row['member']}"


def kdef_k_table(train: Arrays, valid: Arrays, test: Arrays, vocab_sizes: list[int], num_numeric: int,
                 model_cfg: dict, params: dict[str, Any], subnets: list[str], max_k: int, tau: float, *,
                 bootstrap_settings: BootstrapSettings, test_owners: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (k, variant, member): AUC and LogLoss on ``test`` with paired-bootstrap intervals over
    ``test_owners`` (None: every row its own owner); ensembles also carry KA, and the KDEF ensemble of
    K ≥ 2 its AUC and LogLoss difference to the independent nets' mean fusion of the same K."""
    if not 1 <= max_k <= len(subnets):
        raise ConfigError(f"kdef_study.max_k must be in 1..{len(subnets)} (number of subnets), got {max_k}")
    y = test[2]

    def fit(kinds: list[str]) -> tuple[RemediModel, dict[str, Any]]:
        model = make_module("kdef", {**model_cfg, "subnets": kinds}, vocab_sizes, num_numeric, seed=params["seed"])
        start = time.perf_counter()
        result = train_in_process(model, train, params, valid)
        model.load_state_dict(result["state"])
        return model, {"epochs": result["epochs"], "seconds": time.perf_counter() - start}

    alone = [fit([kind]) for kind in subnets[:max_k]]
    alone_z = [_logits(m, test)[:, 0] for m, _ in alone]
    rows, logits = [], {}

    def add(row: dict[str, Any], logit: np.ndarray) -> None:
        rows.append({**row, **_scores(y, logit)})
        logits[_key(row)] = logit

    for k in range(1, max_k + 1):
        kinds = subnets[:k]
        model, info = alone[0] if k == 1 else fit(kinds)
        z = _logits(model, test)
        ka = knowledge_abundance(model, tau)
        for j, kind in enumerate(kinds):
            add({"k": k, "variant": "kdef", "member": kind, "knowledge_abundance": ka}, z[:, j])
        add({"k": k, "variant": "kdef", "member": "ensemble", "knowledge_abundance": ka, "epochs": info["epochs"],
             "train_seconds": info["seconds"]}, z.mean(axis=1))
        for j, kind in enumerate(kinds):
            add({"k": k, "variant": "independent", "member": kind,
                 "knowledge_abundance": knowledge_abundance(alone[j][0], tau)}, alone_z[j])
        add({"k": k, "variant": "independent", "member": "ensemble",
             "knowledge_abundance": float(np.mean([knowledge_abundance(m, tau) for m, _ in alone[:k]])),
             "epochs": int(max(i["epochs"] for _, i in alone[:k])),
             "train_seconds": float(sum(i["seconds"] for _, i in alone[:k]))}, np.mean(alone_z[:k], axis=0))
    references = {f"{k}|kdef|ensemble": f"{k}|independent|ensemble" for k in range(2, max_k + 1)}
    intervals = study_intervals(y, {name: _probability(z) for name, z in logits.items()}, test_owners, _K_FRACTION,
                                bootstrap_settings, references, metrics=("auc", "logloss"))
    rows = [{**row, **intervals[_key(row)]} for row in rows]
    for row in rows:
        row["reference"] = _REFERENCE if row["reference"] else None
    table = pd.DataFrame(rows)
    table["epochs"] = table["epochs"].astype("Int64")
    return table


def run_kdef_study(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``kdef-study``: the K-table on the training split, evaluated on the held-out split,
    written to the ``kdef_study`` table; the summary holds the table as records."""
    study = cfg.kdef_study
    spec, params = study_model(cfg, "kdef_study", study.model, "kdef")
    rows = study_rows(cfg, spec, params, training_frame(store, cfg), max_train_rows=study.max_train_rows)
    train, valid, test = (rows.arrays(rows.split("train", early_stopping=False))[:3],
                          rows.arrays(rows.split("train", early_stopping=True))[:3],
                          rows.arrays(rows.split("test"))[:3])
    run = params.loop_params()
    table = kdef_k_table(train, valid, test, rows.fmap.vocab_sizes, len(rows.fmap.numeric), params.model, run,
                         list(study.subnets), study.max_k, study.tau, bootstrap_settings=cfg.evaluation.bootstrap,
                         test_owners=rows.owners(rows.split("test")))
    table["run_id"] = store.run.run_id if store.run else "adhoc"
    store.write_table(frame_from_pandas(spark, table, "kdef_study"), "kdef_study")
    return {"rows": {"train": len(train[2]), "valid": len(valid[2]), "test": len(test[2])},
            "table": table.drop(columns="run_id").round(6).to_dict("records")}


def format_k_table(records: list[dict[str, Any]]) -> str:
    """Markdown: per K, the KDEF teacher and the mean fusion side by side (AUC and LogLoss with
    intervals), the members' AUC range, KA, and KDEF − mean fusion with its interval and reading."""
    table = pd.DataFrame(records)
    lines = ["| K | KDEF teacher AUC | KDEF teacher LogLoss | KDEF members AUC (min–max) | KA (KDEF) "
             "| mean-fusion AUC | mean-fusion LogLoss | independent AUC (min–max) | KA (independent) "
             "| AUC KDEF − mean fusion | LogLoss KDEF − mean fusion |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, rows in table.groupby("k"):
        cells, kdef_ensemble = [], {}
        for variant in ("kdef", "independent"):
            part = rows[rows["variant"] == variant]
            ens = part[part["member"] == "ensemble"].iloc[0].to_dict()
            kdef_ensemble = kdef_ensemble or ens
            members = part[part["member"] != "ensemble"]["auc"]
            cells += [interval_cell(ens["auc"], ens.get("auc_ci_low"), ens.get("auc_ci_high"), ".4f"),
                      interval_cell(ens["logloss"], ens.get("logloss_ci_low"), ens.get("logloss_ci_high"), ".5f"),
                      f"{members.min():.4f}–{members.max():.4f}", f"{ens['knowledge_abundance']:.3f}"]
        cells += [difference_cell(kdef_ensemble, "auc", "+.4f"),
                  difference_cell(kdef_ensemble, "logloss", "+.5f", lower_is_better=True)]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    if "positives" in table and len(table):
        lines.append(f"\n{int(table['positives'].iloc[0]):,} positive held-out rows; "
                     f"{100 * float(table['ci_level'].iloc[0]):.0f}% intervals, paired bootstrap over owners.")
    return "\n".join(lines)
