"""Fusion stage: every meta-model trained on out-of-fold rows, compared on held-out rows (Tables 1–3).

Training rows are the ``train`` split's out-of-fold meta-features, without the out-of-time month
(so that month is unseen by every meta-model). Two evaluations:

* ``user_split``: the held-out owners (``split = test``, 20%), every labelled month;
* ``out_of_time``: the held-out owners in the newest fully labelled month (``oot_split = test``).
  The base models were refit on the training owners' rows of every month, that month included,
  so this checks the fusion across time, not a full backtest of the base models.

Rows of the results table: each base model alone, each fusion strategy, the hybrid-expert on
subsets of the base models (diversity ablations) and the oracle ceiling (the simulator's true
probability). The hybrid-expert is saved as the teacher head and scores every meta-feature row
into ``teacher_predictions`` (what distillation learns from).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, ConfigError, ModelSpec
from ..io import files
from ..io.schemas import frame_from_pandas, load_schema
from ..io.store import TableStore
from ..metrics import k_for, lead_metrics
from ..models.base import keyed_pandas, saved_model_dir
from ..models.neural.base import build_config
from .meta_features import meta_feature_names, relative_meta_features
from .meta_models import STRATEGIES, ExpertConfig, HybridExpert, MetaModel

METRICS = ("precision_at_k", "business_recall_at_k", "lift_at_k", "auc", "logloss")
ABLATIONS = {
    "trees_only": lambda s: s.family == "lgbm",
    "neural_only": lambda s: s.family != "lgbm",
    "without_focal": lambda s: s.objective != "focal",
    # the feature-subset GBDTs (dealer/digital/calls); neural models on the `core` columns stay
    "without_subset": lambda s: not (s.family == "lgbm" and s.feature_group is not None),
    "without_kaml": lambda s: s.family != "kaml",  # the teacher with vs without the multi-horizon model
    "without_hm3": lambda s: s.family != "hm3",  # ... and without the behaviour-funnel model
}


def teacher_path(store: TableStore) -> str:
    return saved_model_dir(store.root, "teacher")


def models_in(meta: DataFrame) -> list[str]:
    """Base model names of a meta-features frame, in its column order."""
    return [c[2:] for c in meta.columns if c.startswith("p_")]


def _evaluation_sets(pdf: pd.DataFrame) -> dict[str, np.ndarray]:
    test = (pdf["split"] == "test").to_numpy()
    return {"user_split": test, "out_of_time": test & (pdf["oot_split"] == "test").to_numpy()}


def _rows(section: str, name: str, models: list[str], y: np.ndarray, p: np.ndarray,
          sets: dict[str, np.ndarray], k_fraction: float) -> list[dict[str, Any]]:
    out = []
    for evaluation, mask in sets.items():
        m = lead_metrics(y[mask], p[mask], k_for(int(mask.sum()), k_fraction))
        out.append({"section": section, "name": name, "models": ",".join(models), "evaluation": evaluation,
                    "rows": int(m["rows"]), "positives": int(m["positives"]), "k": int(m["k"]),
                    **{k: float(m[k]) for k in METRICS}})
    return out


def fit_strategy(name: str, m: int, x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                 expert: ExpertConfig) -> MetaModel:
    cls = STRATEGIES[name]
    model = cls(m, expert) if issubclass(cls, HybridExpert) else cls(m)
    return model.fit(x, y, groups)


def _specs_for(cfg: Config, models: list[str]) -> dict[str, ModelSpec]:
    specs = {s.name: s for s in cfg.base_models.models}
    missing = [m for m in models if m not in specs]
    if missing:
        raise ConfigError(f"meta_features has predictions of models {missing} that base_models.models does not "
                          f"configure; re-run meta-features after changing the model list")
    return {m: specs[m] for m in models}


def train_fusion(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``fusion``: results table ``fusion_results``, teacher head, ``teacher_predictions``."""
    fcfg = cfg.fusion
    expert = build_config(ExpertConfig, fcfg.meta_model)
    meta = store.read("meta_features")
    models = models_in(meta)
    specs = _specs_for(cfg, models)
    names = meta_feature_names(models)
    oot = store.read("folds").select("user_id", "month", "oot_split")
    oracle = store.read("oracle").select("user_id", "month", F.col("p_3m").alias("p_oracle"))
    pdf = keyed_pandas(meta.join(oot, ["user_id", "month"]).join(oracle, ["user_id", "month"], "left"),
                       "user_id", "month", "split", "oot_split", "y", "p_oracle", *names)
    x, y, groups = pdf[names].to_numpy(np.float64), pdf["y"].to_numpy(np.float64), pdf["user_id"].to_numpy()
    fit = ((pdf["split"] == "train") & (pdf["oot_split"] == "train")).to_numpy()
    sets = _evaluation_sets(pdf)
    k_fraction = cfg.base_models.metric_k_fraction
    rows: list[dict[str, Any]] = []
    for j, m in enumerate(models):
        rows += _rows("base", m, [m], y, x[:, j], sets, k_fraction)
    fitted: dict[str, MetaModel] = {}
    seconds = {}
    for name in STRATEGIES:
        start = time.perf_counter()
        fitted[name] = fit_strategy(name, len(models), x[fit], y[fit], groups[fit], expert)
        seconds[name] = round(time.perf_counter() - start, 2)
        rows += _rows("fusion", name, models, y, fitted[name].predict(x), sets, k_fraction)
    for ablation in fcfg.ablations:
        subset = [m for m in models if ABLATIONS[ablation](specs[m])]
        if not subset or len(subset) == len(models):
            continue  # nothing to compare: the subset is empty or all models
        xs = relative_meta_features(x[:, [models.index(m) for m in subset]])
        model = fit_strategy("hybrid_expert", len(subset), xs[fit], y[fit], groups[fit], expert)
        rows += _rows("ablation", f"hybrid_expert[{ablation}]", subset, y, model.predict(xs), sets, k_fraction)
    known = pdf["p_oracle"].notna().to_numpy()
    if known.all():
        rows += _rows("oracle", "oracle", [], y, pdf["p_oracle"].to_numpy(np.float64), sets, k_fraction)
    run_id = store.run.run_id if store.run else "adhoc"
    results = pd.DataFrame(rows).assign(run_id=run_id)
    store.write_table(frame_from_pandas(spark, results, "fusion_results"), "fusion_results")
    teacher: HybridExpert = fitted["hybrid_expert"]  # type: ignore[assignment]
    state, meta_json = teacher.to_bytes({"models": models, "run_id": run_id})
    files.write_bytes(spark, f"{teacher_path(store)}/model.pt", state)
    files.write_text(spark, f"{teacher_path(store)}/model.json", meta_json)
    teacher_pdf = pdf[["user_id", "month", "split"]].assign(p_teacher=teacher.predict(x), run_id=run_id)
    schema = load_schema("teacher_predictions").struct()  # ~all labelled rows: through Arrow, not tuples
    store.write_table(spark.createDataFrame(teacher_pdf[[f.name for f in schema.fields]], schema), "teacher_predictions")
    return {"models": models, "fit_rows": int(fit.sum()), "train_seconds": seconds,
            "teacher_valid_auc": round(teacher.valid_auc, 4), "results": results.drop(columns="run_id")
            .round(5).to_dict("records")}


def format_results(records: list[dict[str, Any]], evaluation: str = "user_split") -> str:
    """Markdown table of one evaluation: P@K, Business Recall@K, Lift, AUC, LogLoss per row."""
    table = pd.DataFrame(records)
    table = table[table["evaluation"] == evaluation]
    lines = [f"{evaluation}: {int(table['rows'].iloc[0]):,} rows, {int(table['positives'].iloc[0]):,} positives, "
             f"K = {int(table['k'].iloc[0]):,}",
             "| section | name | P@K | Business Recall@K | Lift@K | AUC | LogLoss |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.section} | {r.name} | {100 * r.precision_at_k:.2f}% | {100 * r.business_recall_at_k:.1f}% "
                     f"| {r.lift_at_k:.2f} | {r.auc:.4f} | {r.logloss:.5f} |")
    return "\n".join(lines)
