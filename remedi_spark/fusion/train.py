"""Fusion stage: every meta-model fitted on out-of-fold rows, cross-fitted on the training owners,
compared with intervals, and a guarded choice of the teacher that distillation learns from.

Fit rows are the ``train`` split's out-of-fold meta-features without the evaluation month (the
folds table's ``oot_split = test`` month, which no base model trained on either). Three
evaluations, each row of ``fusion_results`` with a paired-bootstrap interval over owners:

* ``meta_oof``: the training owners' fit rows, each predicted by a meta-model fitted on the other
  folds (cross-fitting over the base models' own folds). Everything the stage *chooses* — the best
  base model, the ``auto`` teacher, the weak-teacher guard — is decided on these rows only.
* ``user_split``: the held-out owners (``split = test``), every labelled month;
* ``out_of_time``: every owner of the evaluation month (``oot_split = test``), whose base-model
  inputs come from the refit models, as for a new month.

Held-out numbers are reported, never used as a target.

Rows: each base model alone, each fusion strategy, the hybrid-expert on subsets of the base models
(``ablation``), the hybrid-expert with other head settings (``variant``, e.g. the paper's head
exactly), the oracle ceiling where the synthetic ``oracle`` table exists, and the paired
differences that carry the method's claims (``difference``: teacher − best base model, teacher −
stacking LR, teacher − simple average, hybrid-expert − each variant). The teacher — the
hybrid-expert, or with ``fusion.teacher: auto`` the strategy with the best meta-OOF log loss — is
checked against the best base model and the simple average (``fusion.on_weak_teacher``), saved as
the teacher head and scores every meta-feature row into ``teacher_predictions``.
"""
from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import Config, ConfigError, ModelSpec
from ..io import files
from ..io.schemas import frame_from_pandas, load_schema
from ..io.store import TableStore
from ..metrics import BOOTSTRAP_METRICS, bootstrap, difference_verdict, k_for, lead_metrics
from ..models.base import keyed_arrow_batches, saved_model_dir
from ..models.neural.base import build_config
from .meta_features import meta_feature_names, relative_meta_features
from .meta_models import STRATEGIES, ExpertConfig, MetaModel, fit_strategy, to_bytes

ABLATIONS = {
    "trees_only": lambda s: s.family == "lgbm",
    "neural_only": lambda s: s.family != "lgbm",
    "without_focal": lambda s: s.objective != "focal",
    # the feature-subset GBDTs (dealer/digital/calls/core); neural models on the `core` columns stay
    "without_subset": lambda s: not (s.family == "lgbm" and s.feature_group is not None),
    "without_kaml": lambda s: s.family != "kaml",  # the teacher with vs without the multi-horizon model
    "without_hm3": lambda s: s.family != "hm3",  # ... and without the behaviour-funnel model
}


class WeakTeacherError(RuntimeError):
    """``fusion.on_weak_teacher: fail`` and the teacher is worse than its inputs on meta-OOF rows."""


def teacher_path(store: TableStore) -> str:
    return saved_model_dir(store.root, "teacher")


def models_in(meta: DataFrame) -> list[str]:
    """Base model names of a meta-features frame, in its column order."""
    return [c[2:] for c in meta.columns if c.startswith("p_")]


def _specs_for(cfg: Config, models: list[str]) -> dict[str, ModelSpec]:
    specs = {s.name: s for s in cfg.base_models.models}
    missing = [m for m in models if m not in specs]
    if missing:
        raise ConfigError(f"meta_features has predictions of models {missing} that base_models.models does not "
                          f"configure; re-run meta-features after changing the model list")
    return {m: specs[m] for m in models}


def cross_fitted(fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]], folds: np.ndarray) -> np.ndarray:
    """Out-of-fold predictions over ``folds`` (one fold id per row): for each fold k, ``fit(train_rows)``
    is given the indices of the rows of the other folds and returns a predictor, which is asked only
    for fold k's rows. No row is predicted by a model that was fitted on it."""
    out = np.full(len(folds), np.nan)
    for k in np.unique(folds):
        held = np.flatnonzero(folds == k)
        predict = fit(np.flatnonzero(folds != k))
        out[held] = predict(held)
    return out


@dataclass
class Candidate:
    """One fitted meta-level ranker: its results-table section and name, the base models it uses,
    their meta-features ``x`` (every row), the strategy fitted on them and the networks' config."""

    section: str
    name: str
    models: list[str]
    x: np.ndarray
    strategy: str
    expert: ExpertConfig

    def fit(self, rows: np.ndarray, y: np.ndarray, groups: np.ndarray) -> MetaModel:
        """The strategy fitted on rows ``rows`` of ``x`` (read in place: no copy of them)."""
        return fit_strategy(self.strategy, len(self.models), self.x, y[rows], groups[rows], self.expert, rows)


def _candidates(cfg: Config, models: list[str], specs: dict[str, ModelSpec], x: np.ndarray,
                expert: ExpertConfig) -> list[Candidate]:
    out = [Candidate("fusion", name, models, x, name, expert) for name in STRATEGIES]
    for ablation in cfg.fusion.ablations:
        subset = [m for m in models if ABLATIONS[ablation](specs[m])]
        if not subset or len(subset) == len(models):
            continue  # nothing to compare: the subset is empty or all models
        xs = relative_meta_features(x[:, [models.index(m) for m in subset]])
        out.append(Candidate("ablation", f"hybrid_expert[{ablation}]", subset, xs, "hybrid_expert", expert))
    for variant, overrides in cfg.fusion.variants.items():
        out.append(Candidate("variant", f"hybrid_expert[{variant}]", models, x, "hybrid_expert",
                             _expert_config({**asdict(expert), **(overrides or {})}, f"fusion.variants.{variant}")))
    return out


def _meta_oof(c: Candidate, fit_idx: np.ndarray, fold: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Candidate ``c`` cross-fitted over the fit rows' folds: its meta-level OOF predictions."""
    def fit(rows: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        model = c.fit(fit_idx[rows], y, groups)
        return lambda held: model.predict(c.x[fit_idx[held]])
    return cross_fitted(fit, fold)


SEEDED = ("hybrid_expert", "no_hybrid")  # strategies whose fit depends on the networks' seed


def _seed_rows(seeds: list[int], candidates: list[Candidate], fit_idx: np.ndarray, fold: np.ndarray, y: np.ndarray,
               groups: np.ndarray, oof: dict[str, np.ndarray], pairs: list[tuple[str, str]], k_fraction: float
               ) -> list[dict[str, Any]]:
    """The meta-OOF comparison repeated per seed of ``fusion.seeds``: every network candidate
    cross-fitted again with ``meta_model.seed = s`` (the other rankers do not depend on it), one row
    per (seed, candidate) and per (seed, pair) difference, point estimates (section ``seed``)."""
    y_fit, rows = y[fit_idx], []
    k = k_for(len(fit_idx), k_fraction)
    common = {"section": "seed", "evaluation": "meta_oof", "rows": len(fit_idx), "positives": int(y_fit.sum()), "k": k}
    for seed in seeds:
        scores = dict(oof)
        seeded = [c for c in candidates if c.strategy in SEEDED]
        for c in seeded:
            scores[c.name] = _meta_oof(replace(c, expert=replace(c.expert, seed=seed)), fit_idx, fold, y, groups)
        point = {name: lead_metrics(y_fit, p, k) for name, p in scores.items()}
        for c in seeded:
            rows.append({**common, "name": c.name, "models": ",".join(c.models), "seed": seed,
                         **{m: point[c.name][m] for m in BOOTSTRAP_METRICS}})
        for a, b in pairs:
            rows.append({**common, "name": f"{a} - {b}", "models": f"{a},{b}", "seed": seed,
                         **{m: point[a][m] - point[b][m] for m in BOOTSTRAP_METRICS}})
        print(f"[remedi] fusion: seed {seed} cross-fitted ({seeds.index(seed) + 1}/{len(seeds)})", file=sys.stderr,
              flush=True)
    return rows


def _expert_config(values: dict[str, Any], key: str) -> ExpertConfig:
    try:
        return build_config(ExpertConfig, values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _choose_teacher(mode: str, meta_oof: dict[str, dict[str, float]]) -> str:
    """``hybrid_expert``, or for ``auto`` the strategy with the lowest meta-OOF log loss (higher P@K breaks a tie)."""
    return "hybrid_expert" if mode == "hybrid_expert" else _best_by_logloss(STRATEGIES, meta_oof)


def weak_teacher_reasons(differences: dict[tuple[str, str], dict[str, Any]], teacher: str,
                         rivals: list[str]) -> list[str]:
    """The rivals the teacher is worse than beyond noise on meta-OOF log loss: the lower end of the
    interval of (teacher − rival) log loss above 0."""
    out = []
    for rival in rivals:
        iv = differences[(teacher, rival)]["logloss"]
        if difference_verdict(iv, lower_is_better=True) == "worse":
            out.append(f"{teacher} meta-OOF log loss is {iv.estimate:+.5f} against {rival} "
                       f"({100 * iv.level:.0f}% interval {iv.low:+.5f} .. {iv.high:+.5f})")
    return out


def _pairs(teacher: str, best_base: str, variants: list[str]) -> list[tuple[str, str]]:
    pairs = [(teacher, best_base), (teacher, "stacking_lr"), (teacher, "simple_average")]
    if teacher != "hybrid_expert":
        pairs += [("hybrid_expert", best_base), ("hybrid_expert", "simple_average"), ("hybrid_expert", teacher)]
    pairs += [("hybrid_expert", v) for v in variants]
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))


def _result_rows(evaluation: str, candidates: list[tuple[str, str, list[str]]], y: np.ndarray,
                 scores: dict[str, np.ndarray], groups: np.ndarray, pairs: list[tuple[str, str]], cfg: Config
                 ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]:
    """Rows of one evaluation: every candidate's metrics with intervals, then the paired differences."""
    b = cfg.evaluation.bootstrap
    k_fraction = cfg.base_models.metric_k_fraction
    boot = bootstrap(y, scores, groups, k_fraction, replicates=b.replicates, seed=b.seed, level=b.level, pairs=pairs)
    common = {"evaluation": evaluation, "rows": len(y), "positives": int(y.sum()), "k": k_for(len(y), k_fraction),
              "ci_level": b.level}
    rows = []
    for section, name, models in candidates:
        rows.append({"section": section, "name": name, "models": ",".join(models), **common,
                     **_metric_columns(boot["intervals"][name])})
    for (a, c), ivs in boot["differences"].items():
        rows.append({"section": "difference", "name": f"{a} - {c}", "models": f"{a},{c}", **common,
                     **_metric_columns(ivs)})
    return rows, boot["differences"]


def _metric_columns(intervals: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in BOOTSTRAP_METRICS:
        iv = intervals[metric]
        out.update({metric: iv.estimate, f"{metric}_ci_low": iv.low, f"{metric}_ci_high": iv.high})
    return out


def _meta_frame(store: TableStore, meta: DataFrame, names: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The meta-features in key order: a frame of the keys with fold, splits, label and, where the
    synthetic ``oracle`` table exists, its probability (a bring-your-own table has no ceiling:
    ``p_oracle`` is null), and the float64 matrix of the ``names`` columns. The rows arrive an Arrow
    batch at a time and go straight into the matrix, so the driver holds the meta-features once
    (1.6 GiB at 800k owners; through ``toPandas`` the driver peaked at 6.8 GiB)."""
    joined = meta.join(store.read("folds").select("user_id", "month", "oot_split"), ["user_id", "month"])
    if store.exists("oracle"):
        oracle = store.read("oracle").select("user_id", "month", F.col("p_3m").alias("p_oracle"))
        joined = joined.join(oracle, ["user_id", "month"], "left")
    else:
        joined = joined.withColumn("p_oracle", F.lit(None).cast("double"))
    keys = ["user_id", "month", "fold", "split", "oot_split", "y", "p_oracle"]
    n = joined.count()
    x = np.empty((n, len(names)), dtype=np.float64)
    frames, at = [], 0
    for batch in keyed_arrow_batches(joined, *keys, *names):
        if at + batch.num_rows > n:
            raise RuntimeError(f"meta_features changed while fusion read it: more than the {n:,} rows counted")
        for j, name in enumerate(names):
            x[at:at + batch.num_rows, j] = batch.column(name).to_numpy(zero_copy_only=False)
        frames.append(batch.select(keys).to_pandas())
        at += batch.num_rows
    if at != n:
        raise RuntimeError(f"meta_features changed while fusion read it: {at:,} rows of the {n:,} counted")
    pdf = pd.concat(frames, ignore_index=True) if frames else joined.select(*keys).limit(0).toPandas()
    return pdf, x


def _best_by_logloss(names: Any, point: dict[str, dict[str, float]]) -> str:
    """The name with the lowest meta-OOF log loss (higher P@K breaks a tie)."""
    return min(names, key=lambda n: (round(point[n]["logloss"], 6), -point[n]["precision_at_k"]))


def _guard(mode: str, teacher: str, best_base: str, differences: dict[tuple[str, str], dict[str, Any]],
           point: dict[str, dict[str, float]]) -> dict[str, Any]:
    """``fusion.on_weak_teacher`` applied: the decision record, with the strategy to distill in ``chosen``."""
    reasons = weak_teacher_reasons(differences, teacher, [best_base, "simple_average"])
    decision = {"chosen": teacher, "best_base_model": best_base, "weak": bool(reasons), "reasons": reasons,
                "action": mode if reasons else "none"}
    if not reasons:
        return decision
    decision["message"] = "the teacher is weaker than its inputs on meta-level OOF rows: " + "; ".join(reasons)
    if mode == "warn":
        warnings.warn(decision["message"] + " (fusion.on_weak_teacher: warn; distilling it anyway)", RuntimeWarning,
                      stacklevel=3)
    elif mode == "fallback":
        decision["chosen"] = _best_by_logloss(STRATEGIES, point)
    return decision


def train_fusion(spark: SparkSession, cfg: Config, store: TableStore) -> dict[str, Any]:
    """Stage ``fusion``: results table ``fusion_results``, teacher head, ``teacher_predictions``."""
    fcfg = cfg.fusion
    expert = _expert_config(dict(fcfg.meta_model), "fusion.meta_model")
    meta = store.read("meta_features")
    models = models_in(meta)
    specs = _specs_for(cfg, models)
    names = meta_feature_names(models)
    pdf, x = _meta_frame(store, meta, names)
    y, groups = pdf["y"].to_numpy(np.float64), pdf["user_id"].to_numpy()
    fit = ((pdf["split"] == "train") & (pdf["oot_split"] == "train")).to_numpy()
    test = (pdf["split"] == "test").to_numpy()
    masks = {"meta_oof": fit, "user_split": test, "out_of_time": (pdf["oot_split"] == "test").to_numpy()}
    if not fit.any():
        raise ValueError("fusion: no training-owner rows outside the out-of-time month to fit the meta-models on")
    fit_idx = np.flatnonzero(fit)
    fold = pdf["fold"].to_numpy()[fit]

    candidates = _candidates(cfg, models, specs, x, expert)
    full: dict[str, np.ndarray] = {m: x[:, j] for j, m in enumerate(models)}  # every row
    oof: dict[str, np.ndarray] = {m: x[fit, j] for j, m in enumerate(models)}  # fit rows, cross-fitted
    fitted: dict[str, MetaModel] = {}
    seconds: dict[str, float] = {}
    for i, c in enumerate(candidates):
        start = time.perf_counter()
        oof[c.name] = _meta_oof(c, fit_idx, fold, y, groups)
        fitted[c.name] = c.fit(fit_idx, y, groups)
        full[c.name] = fitted[c.name].predict(c.x)
        seconds[c.name] = round(time.perf_counter() - start, 2)
        print(f"[remedi] fusion: {c.name} fitted {len(np.unique(fold)) + 1} times in {seconds[c.name]:.0f} s "
              f"({i + 1}/{len(candidates)})", file=sys.stderr, flush=True)
    rankers = [("base", m, [m]) for m in models] + [(c.section, c.name, c.models) for c in candidates]
    if pdf["p_oracle"].notna().all():
        full["oracle"] = pdf["p_oracle"].to_numpy(np.float64)
        rankers_held = rankers + [("oracle", "oracle", [])]
    else:
        rankers_held = rankers

    # choices on the training owners' meta-OOF rows only
    k_oof = k_for(int(fit.sum()), cfg.base_models.metric_k_fraction)
    point = {name: lead_metrics(y[fit], p, k_oof) for name, p in oof.items()}
    best_base = _best_by_logloss(models, point)
    teacher = _choose_teacher(fcfg.teacher, point)
    variants = [c.name for c in candidates if c.section == "variant"]
    # every strategy against the guard's two rivals, so whichever ends up distilled has its rows
    guard_pairs = [(s, rival) for s in STRATEGIES for rival in (best_base, "simple_average") if s != rival]
    pairs = list(dict.fromkeys(guard_pairs + _pairs(teacher, best_base, variants)))
    rows, differences = _result_rows("meta_oof", rankers, y[fit], oof, groups[fit], pairs, cfg)
    if fcfg.seeds:
        rows += _seed_rows(list(fcfg.seeds), candidates, fit_idx, fold, y, groups, oof, pairs,
                           cfg.base_models.metric_k_fraction)
    decision = _guard(fcfg.on_weak_teacher, teacher, best_base, differences, point)
    decision["mode"] = fcfg.teacher
    teacher = decision["chosen"]
    for evaluation in ("user_split", "out_of_time"):
        mask = masks[evaluation]
        if mask.any():
            rows += _result_rows(evaluation, rankers_held, y[mask], {n: p[mask] for n, p in full.items()},
                                 groups[mask], _pairs(teacher, best_base, variants), cfg)[0]
    run_id = store.run.run_id if store.run else "adhoc"
    results = pd.DataFrame(rows).assign(run_id=run_id, teacher=lambda d: (d["name"] == teacher) & (d["section"] != "seed"))
    if "seed" not in results:
        results["seed"] = None
    store.write_table(frame_from_pandas(spark, results, "fusion_results"), "fusion_results")
    summary = {"models": models, "fit_rows": int(fit.sum()), "fit_positives": int(y[fit].sum()),
               "train_seconds": seconds, "teacher": decision,
               "results": results.drop(columns="run_id").round(5).to_dict("records")}
    if decision["action"] == "fail":
        raise WeakTeacherError(f"fusion: {decision['message']}; fusion_results was written, the teacher was not "
                               f"(fusion.on_weak_teacher: fail). Set it to warn or fallback, or fix the base models.")
    state, meta_json = to_bytes(fitted[teacher], {"models": models, "run_id": run_id, "decision": decision})
    files.write_bytes(spark, f"{teacher_path(store)}/state.bin", state)
    files.write_text(spark, f"{teacher_path(store)}/model.json", meta_json)
    teacher_pdf = pdf[["user_id", "month", "split"]].assign(p_teacher=full[teacher], run_id=run_id)
    schema = load_schema("teacher_predictions").struct()  # ~all labelled rows: through Arrow, not tuples
    store.write_table(spark.createDataFrame(teacher_pdf[[f.name for f in schema.fields]], schema), "teacher_predictions")
    return summary


def seed_summary(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Mean and standard deviation over ``fusion.seeds`` of each ``seed`` row's metrics (empty when
    the comparison ran with one seed)."""
    table = pd.DataFrame(records)
    if table.empty or "seed" not in table or not (table["section"] == "seed").any():
        return pd.DataFrame()
    seeded = table[table["section"] == "seed"]
    stats = seeded.groupby("name", sort=False)[list(BOOTSTRAP_METRICS)].agg(["mean", "std"])
    stats.columns = [f"{m}_{s}" for m, s in stats.columns]
    return stats.assign(seeds=seeded.groupby("name", sort=False)["seed"].nunique()).reset_index()


def format_seeds(records: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`seed_summary`: AUC, P@K and log loss as mean ± sd over the seeds."""
    stats = seed_summary(records)
    if stats.empty:
        return ""
    lines = [f"meta_oof over {int(stats['seeds'].max())} seeds (fusion.seeds): mean ± sd",
             "| name | P@K | AUC | LogLoss |", "|---|---|---|---|"]
    for r in stats.to_dict("records"):
        lines.append(f"| {r['name']} | {100 * r['precision_at_k_mean']:.2f}% ± {100 * r['precision_at_k_std']:.2f} "
                     f"| {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['logloss_mean']:.5f} ± {r['logloss_std']:.5f} |")
    return "\n".join(lines)


def format_teacher(decision: dict[str, Any]) -> str:
    """One paragraph: which strategy is the teacher, chosen how, and the guard's verdict."""
    text = (f"teacher: {decision['chosen']} (fusion.teacher: {decision['mode']}; best base model on meta-OOF log loss: "
            f"{decision['best_base_model']})")
    if decision["weak"]:
        text += f"\n  WEAK TEACHER ({decision['action']}): " + "; ".join(decision["reasons"])
    return text


def format_results(records: list[dict[str, Any]], evaluation: str = "user_split") -> str:
    """Markdown table of one evaluation: P@K, AUC and LogLoss with their intervals per row;
    a difference whose interval contains 0 is marked "no difference"."""
    table = pd.DataFrame(records)
    table = table[(table["evaluation"] == evaluation) & (table["section"] != "seed")]
    if table.empty:
        return f"{evaluation}: no rows"
    level = int(round(100 * table["ci_level"].iloc[0]))
    lines = [f"{evaluation}: {int(table['rows'].iloc[0]):,} rows, {int(table['positives'].iloc[0]):,} positives, "
             f"K = {int(table['k'].iloc[0]):,}; [{level}% interval, paired bootstrap over owners]",
             "| section | name | P@K | AUC | LogLoss |", "|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        cells = [f"{100 * r['precision_at_k']:.2f}% [{100 * r['precision_at_k_ci_low']:.2f}, "
                 f"{100 * r['precision_at_k_ci_high']:.2f}]",
                 f"{r['auc']:.4f} [{r['auc_ci_low']:.4f}, {r['auc_ci_high']:.4f}]",
                 f"{r['logloss']:.5f} [{r['logloss_ci_low']:.5f}, {r['logloss_ci_high']:.5f}]"]
        if r["section"] == "difference":
            cells = [c + (" no difference" if lo <= 0 <= hi else "") for c, lo, hi in zip(
                cells, (r["precision_at_k_ci_low"], r["auc_ci_low"], r["logloss_ci_low"]),
                (r["precision_at_k_ci_high"], r["auc_ci_high"], r["logloss_ci_high"]))]
        name = f"**{r['name']}** (teacher)" if r.get("teacher") else r["name"]
        lines.append(f"| {r['section']} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
