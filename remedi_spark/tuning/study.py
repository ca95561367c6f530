"""One model's study: Optuna TPE (seeded) asks a batch of trials, the batch is scored fold by fold,
each trial reports its running metric after every inner fold (median pruning), finished trials are
told. Budgets: ``tuning.max_trials`` and ``tuning.timeout_minutes`` (no new batch after it; the
first batch always runs)."""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ParamRange, TuningSettings
from .lgbm import FoldJob
from .space import suggest

LOWER_IS_BETTER = {"logloss": True, "precision_at_k": False}


@dataclass
class TrialRecord:
    """A finished trial: its values, per-fold metrics, state (complete | pruned | fail) and time."""

    trial: int
    params: dict[str, Any]
    state: str
    values: list[float] = field(default_factory=list)
    best_iterations: list[int] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    @property
    def value(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None


def fold_interval(values: list[float], level: float) -> tuple[float | None, float | None]:
    """Student-t interval of the mean over the inner folds (``level``, e.g. 0.9); None for one fold."""
    if len(values) < 2:
        return None, None
    from scipy.stats import t

    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def progress(model: str, r: TrialRecord, budget: int, metric: str, level: float, best: TrialRecord | None) -> str:
    """The progress line of one finished trial (stderr)."""
    if r.state == "fail":
        text = f"failed: {r.error}"
    else:
        low, high = fold_interval(r.values, level)
        ci = f" [{low:.5f}, {high:.5f}]" if low is not None else ""
        text = f"{r.state} {metric} {r.value:.5f}{ci} over {len(r.values)} fold(s)"
    tail = f"; best {best.value:.5f} (trial {best.trial})" if best is not None else ""
    return f"[remedi] tune {model}: trial {r.trial + 1}/{budget} {text}, {r.seconds:.1f} s{tail}"


def run_study(model: str, space: list[ParamRange], settings: TuningSettings, folds: list[int],
              make_job: Callable[[int, int, dict[str, Any]], FoldJob], run_jobs: Callable[[list[FoldJob]], list[dict]],
              slots: int, level: float) -> tuple[Any, list[TrialRecord]]:
    """Search ``space`` for ``model``: ``make_job(trial, fold, values)`` builds a fold job,
    ``run_jobs`` runs a list of them (in parallel when it can); ``slots`` trials per batch. Returns
    the Optuna study and the finished trials in trial order."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lower = LOWER_IS_BETTER[settings.metric]
    study = optuna.create_study(direction="minimize" if lower else "maximize",
                                sampler=optuna.samplers.TPESampler(seed=settings.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup_trials,
                                                                   n_warmup_steps=settings.prune_warmup_folds))
    deadline = None if settings.timeout_minutes is None else time.monotonic() + 60 * settings.timeout_minutes
    records: list[TrialRecord] = []
    best: TrialRecord | None = None
    # the first batch always runs (a study with no trial has no best params)
    while len(records) < settings.max_trials and (not records or deadline is None or time.monotonic() < deadline):
        batch = [study.ask() for _ in range(min(slots, settings.max_trials - len(records)))]
        live = {t.number: (t, TrialRecord(t.number, suggest(t, space), "running")) for t in batch}
        for step, k in enumerate(folds):
            results = run_jobs([make_job(n, k, r.params) for n, (_, r) in sorted(live.items())])
            for res in sorted(results, key=lambda x: x["trial"]):
                trial, r = live[res["trial"]]
                r.seconds += res["seconds"]
                if res["error"] is not None:
                    r.state, r.error = "fail", res["error"]
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                r.values.append(res["value"])
                r.best_iterations.append(res["best_iteration"])
                trial.report(float(np.mean(r.values)), step)
                if step < len(folds) - 1 and trial.should_prune():
                    r.state = "pruned"
                    study.tell(trial, state=TrialState.PRUNED)
            finished = [n for n, (_, r) in live.items() if r.state in ("fail", "pruned")]
            for n in finished:
                records.append(live.pop(n)[1])
            if not live:
                break
        for n, (trial, r) in sorted(live.items()):
            r.state = "complete"
            study.tell(trial, r.value)
            records.append(r)
        records.sort(key=lambda r: r.trial)
        for r in records[-len(batch):]:
            if r.state == "complete" and (best is None or (r.value < best.value if lower else r.value > best.value)):
                best = r
            print(progress(model, r, settings.max_trials, settings.metric, level, best), file=sys.stderr, flush=True)
    return study, records


def best_trial(records: list[TrialRecord], metric: str) -> TrialRecord | None:
    """The complete trial with the best mean metric (the first one on ties)."""
    done = [r for r in records if r.state == "complete"]
    if not done:
        return None
    sign = 1 if LOWER_IS_BETTER[metric] else -1
    return min(done, key=lambda r: (sign * r.value, r.trial))


def params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
