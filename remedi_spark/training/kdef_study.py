"""The KDEF K-table: does knowledge distillation between sub-networks beat independent ensembling?

For K = 1..max_k the first K sub-network types of ``kdef_study.subnets`` are trained two ways on
the same rows, with the same training parameters as the configured KDEF base model:

* ``kdef``: one KDEF model (shared embedding, examination-weighted distillation); its members
  are the K heads, its ensemble the teacher σ(mean_k z_k).
* ``independent``: each sub-network trained alone on its own embedding (a KDEF with one head,
  whose loss is then plain BCE); its ensemble is the mean fusion σ(mean_k z_k) of those nets.

Every member and ensemble gets AUC and LogLoss on the held-out split and the knowledge abundance
(KA, KDEF eq. 3) of its sub-networks' layer weight matrices: per layer and for every τ of
:data:`KA_TAUS` (column ``knowledge_abundance_layers``, members' rows), and as one number, the mean
over the layers at the configured ``tau`` (``knowledge_abundance``; an ensemble's: over all its
members' layers). Every training run (a KDEF model: its ensemble row; an independent net: its
member rows) records the epochs it ran, its best epoch and its validation curve (``valid_curve``:
per epoch the early-stopping rows' log loss and AUC), so a member that did not converge shows. The
study trains in one process over in-memory
arrays (the loop the distributed trainer runs per rank), so its numbers do not depend on the
cluster; K = 1 KDEF equals the independent first sub-network and is trained once.
"""
from __future__ import annotations

import json
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
from ..models.neural.loop import make_module, predict_logits, train_in_process
from .oof import training_frame
from .study_inputs import cell, difference_cell, interval_cell, markdown_table, study_intervals, study_model, study_rows

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]


KA_TAUS = (0.01, 0.05, 0.1, 0.2)  # the thresholds every layer's KA is reported at (besides kdef_study.tau)
CURVE_FIELDS = ("epoch", "valid_logloss", "valid_auc")  # per epoch of a training run, in ``valid_curve``


def knowledge_abundance(weight: torch.Tensor, tau: float) -> float:
    """KDEF eq. 3 for one layer weight matrix W: #{σ_i > τ} / #{σ_i > 0} over W's singular values.

    The singular values are divided by the largest, so ``tau`` is a share of the leading direction
    and means the same for layers of any width and scale (the paper thresholds raw singular values;
    ours start from different initialisations per layer type). "σ > 0" is the numerical rank:
    σ > σ_max · max(m, n) · ε of float32, the weights' precision. 1.0 = every direction W uses is
    significant; small values = W collapsed onto a few directions (dimensional collapse).
    """
    sigma = torch.linalg.svdvals(weight.detach().double())
    top = float(sigma.max()) if len(sigma) else 0.0
    if top == 0.0:
        return 0.0
    rank = int((sigma > top * max(weight.shape) * float(torch.finfo(torch.float32).eps)).sum())
    return int((sigma / top > tau).sum()) / rank


def layer_matrices(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The layer weight matrices of a sub-network, input side first: every ``nn.Linear`` weight
    (out × in) and ``nn.Conv1d`` weight (out × in·kernel, CIN's compression) in module order, the
    first reading the shared field embeddings. Vectors (a layer with one output or one input, such
    as a logit layer or DCN's cross weights) are left out: one singular value says nothing about
    collapse."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
            w = m.weight.reshape(m.weight.shape[0], -1)
            if min(w.shape) >= 2:
                out.append((name, w))
    return out


def layer_abundance(module: torch.nn.Module, taus: tuple[float, ...]) -> list[dict[str, Any]]:
    """Per layer matrix of :func:`layer_matrices`: ``{"layer": 1-based, "module", "shape", "ka": {τ: KA}}``."""
    return [{"layer": i, "module": name, "shape": list(w.shape),
             "ka": {f"{tau:g}": knowledge_abundance(w, tau) for tau in taus}}
            for i, (name, w) in enumerate(layer_matrices(module), start=1)]


def mean_abundance(layers: list[dict[str, Any]], tau: float) -> float | None:
    """Mean KA over ``layers`` (from :func:`layer_abundance`) at ``tau``; None when there are none."""
    values = [layer["ka"][f"{tau:g}"] for layer in layers]
    return float(np.mean(values)) if values else None


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
    ``test_owners`` (None: every row its own owner); members carry their layers' KA at every τ of
    :data:`KA_TAUS` and ``tau`` (JSON, ``knowledge_abundance_layers``) and all rows the mean layer KA
    at ``tau`` (``knowledge_abundance``); the KDEF ensemble of K ≥ 2 its AUC and LogLoss difference to
    the independent nets' mean fusion of the same K."""
    if not 1 <= max_k <= len(subnets):
        raise ConfigError(f"kdef_study.max_k must be in 1..{len(subnets)} (number of subnets), got {max_k}")
    y = test[2]
    taus = tuple(sorted({*KA_TAUS, float(tau)}))

    def layers(model: RemediModel) -> list[list[dict[str, Any]]]:
        """Per head of a KDEF model: its layers' KA."""
        return [layer_abundance(head, taus) for head in model.heads]

    def ka_cells(per_member: list[list[dict[str, Any]]], member: int | None) -> dict[str, Any]:
        """A member's KA columns (``member`` = its index), or an ensemble's (None: over every member)."""
        if member is None:
            return {"knowledge_abundance": mean_abundance([l for m in per_member for l in m], tau),
                    "knowledge_abundance_layers": None}
        return {"knowledge_abundance": mean_abundance(per_member[member], tau),
                "knowledge_abundance_layers": json.dumps(per_member[member])}

    def fit(kinds: list[str]) -> tuple[RemediModel, dict[str, Any]]:
        model = make_module("kdef", {**model_cfg, "subnets": kinds}, vocab_sizes, num_numeric, seed=params["seed"])
        start = time.perf_counter()
        result = train_in_process(model, train, params, valid)
        model.load_state_dict(result["state"])
        return model, {"epochs": result["epochs"], "best_epoch": result["best_epoch"],
                       "valid_curve": json.dumps([{k: point[k] for k in CURVE_FIELDS} for point in result["curve"]]),
                       "seconds": time.perf_counter() - start}

    def training(info: dict[str, Any]) -> dict[str, Any]:
        """The columns of one training run (epochs, best epoch, validation curve, seconds)."""
        return {"epochs": info["epochs"], "best_epoch": info["best_epoch"], "valid_curve": info["valid_curve"],
                "train_seconds": info["seconds"]}

    alone = [fit([kind]) for kind in subnets[:max_k]]
    alone_z = [_logits(m, test)[:, 0] for m, _ in alone]
    alone_layers = [layers(m)[0] for m, _ in alone]
    rows, logits = [], {}

    def add(row: dict[str, Any], logit: np.ndarray) -> None:
        rows.append({**row, **_scores(y, logit)})
        logits[_key(row)] = logit

    for k in range(1, max_k + 1):
        kinds = subnets[:k]
        model, info = alone[0] if k == 1 else fit(kinds)
        z = _logits(model, test)
        kdef_layers = layers(model)
        for j, kind in enumerate(kinds):
            add({"k": k, "variant": "kdef", "member": kind, **ka_cells(kdef_layers, j)}, z[:, j])
        add({"k": k, "variant": "kdef", "member": "ensemble", **ka_cells(kdef_layers, None), **training(info)},
            z.mean(axis=1))
        for j, kind in enumerate(kinds):
            add({"k": k, "variant": "independent", "member": kind, **ka_cells(alone_layers, j), **training(alone[j][1])},
                alone_z[j])
        add({"k": k, "variant": "independent", "member": "ensemble", **ka_cells(alone_layers[:k], None),
             "epochs": int(max(i["epochs"] for _, i in alone[:k])),
             "train_seconds": float(sum(i["seconds"] for _, i in alone[:k]))}, np.mean(alone_z[:k], axis=0))
    references = {f"{k}|kdef|ensemble": f"{k}|independent|ensemble" for k in range(2, max_k + 1)}
    intervals = study_intervals(y, {name: _probability(z) for name, z in logits.items()}, test_owners, _K_FRACTION,
                                bootstrap_settings, references, metrics=("auc", "logloss"))
    rows = [{**row, **intervals[_key(row)]} for row in rows]
    for row in rows:
        row["reference"] = _REFERENCE if row["reference"] else None
    table = pd.DataFrame(rows)
    for column in ("epochs", "best_epoch"):
        table[column] = table[column].astype("Int64")
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


def _ka_cell(value: Any) -> str:
    """A KA cell: three decimals, or – when the networks have no layer matrix (cross, fm)."""
    return "–" if value is None or pd.isna(value) else f"{value:.3f}"


def format_k_table(records: list[dict[str, Any]]) -> str:
    """Markdown: per K, the KDEF teacher and the mean fusion side by side (AUC and LogLoss with
    intervals), the members' AUC range, KA, and KDEF − mean fusion with its interval and reading."""
    table = pd.DataFrame(records)
    header = ["K", "KDEF teacher AUC", "KDEF teacher LogLoss", "KDEF members AUC (min–max)", "KA (KDEF)",
              "mean-fusion AUC", "mean-fusion LogLoss", "independent AUC (min–max)", "KA (independent)",
              "AUC KDEF − mean fusion", "LogLoss KDEF − mean fusion"]
    k_rows = []
    for k, rows in table.groupby("k"):
        cells, kdef_ensemble = [], {}
        for variant in ("kdef", "independent"):
            part = rows[rows["variant"] == variant]
            ens = part[part["member"] == "ensemble"].iloc[0].to_dict()
            kdef_ensemble = kdef_ensemble or ens
            members = part[part["member"] != "ensemble"]["auc"]
            cells += [interval_cell(ens["auc"], ens.get("auc_ci_low"), ens.get("auc_ci_high"), ".4f"),
                      interval_cell(ens["logloss"], ens.get("logloss_ci_low"), ens.get("logloss_ci_high"), ".5f"),
                      f"{members.min():.4f}–{members.max():.4f}", _ka_cell(ens.get("knowledge_abundance"))]
        cells += [difference_cell(kdef_ensemble, "auc", "+.4f"),
                  difference_cell(kdef_ensemble, "logloss", "+.5f", lower_is_better=True)]
        k_rows.append([str(k), *cells])
    lines = [markdown_table(header, k_rows)]
    if "positives" in table and len(table):
        lines.append(f"\n{int(table['positives'].iloc[0]):,} positive held-out rows; "
                     f"{100 * float(table['ci_level'].iloc[0]):.0f}% intervals, paired bootstrap over owners.")
    return "\n".join(lines)


def _largest_k(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["k"] == table["k"].max()]


def layer_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per layer weight matrix of the members of the largest K (the KDEF model's heads and
    the independently trained nets): variant, member, layer, module, shape and KA at every τ as
    ``ka_<τ>``. Members without a layer matrix (cross, fm) get one row with ``layer`` None."""
    table = pd.DataFrame(records)
    if table.empty:
        return []
    out = []
    for row in _largest_k(table).to_dict("records"):
        if row["member"] == "ensemble":
            continue
        layers = json.loads(row["knowledge_abundance_layers"]) if row.get("knowledge_abundance_layers") else []
        base = {"variant": row["variant"], "member": row["member"]}
        if not layers:
            out.append({**base, "layer": None, "module": "(vectors only)", "shape": ""})
        for layer in layers:
            out.append({**base, "layer": layer["layer"], "module": layer["module"],
                        "shape": "×".join(str(n) for n in layer["shape"]),
                        **{f"ka_{tau}": value for tau, value in layer["ka"].items()}})
    return out


def _whole(value: Any) -> int | None:
    """An integer column's value from records (pandas may have made it a float), None when missing."""
    return None if value is None or pd.isna(value) else int(value)


def curve_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per training run of the study: every KDEF model (per K) and each independently trained
    net (once: the same run serves every K), with the epochs run, the best epoch and the validation
    AUC and log loss per epoch as "a → b → c" texts (``valid_curve``)."""
    table = pd.DataFrame(records)
    if table.empty or "valid_curve" not in table:
        return []
    runs = pd.concat([table[(table["variant"] == "kdef") & (table["member"] == "ensemble") & (table["k"] > 1)],
                      _largest_k(table[(table["variant"] == "independent") & (table["member"] != "ensemble")])])
    out = []
    for row in runs.to_dict("records"):
        curve = json.loads(row["valid_curve"]) if row.get("valid_curve") else []
        out.append({"run": f"KDEF K={row['k']}" if row["variant"] == "kdef" else f"{row['member']} alone",
                    "epochs": _whole(row["epochs"]), "best_epoch": _whole(row["best_epoch"]),
                    "valid_auc_by_epoch": " → ".join(f"{p['valid_auc']:.4f}" for p in curve),
                    "valid_logloss_by_epoch": " → ".join(f"{p['valid_logloss']:.5f}" for p in curve)})
    return out


def _markdown(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a markdown table of every key they hold: floats with three decimals, "–" when missing."""
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return markdown_table(columns, [[cell(r.get(c), ".3f" if isinstance(r.get(c), float) else "") for c in columns]
                                    for r in rows])


def format_training(records: list[dict[str, Any]]) -> str:
    """Markdown: the members' knowledge abundance per layer (largest K) and every training run's
    validation curve (see :func:`layer_rows`, :func:`curve_rows`)."""
    parts = []
    if layers := layer_rows(records):
        parts.append("Knowledge abundance per layer weight matrix (KDEF eq. 3, σ / σ_max > τ), largest K:\n\n"
                     + _markdown(layers))
    if curves := curve_rows(records):
        parts.append("Training runs: validation (early-stopping rows) AUC and log loss per epoch:\n\n"
                     + _markdown(curves))
    return "\n\n".join(parts)
