"""What the in-process model studies (``kdef-study``, ``kaml-study``, ``hm3-study``) share: the
configured model they ablate, and its training, early-stopping and held-out rows as arrays.

Each study trains its variants in one process on the same rows the configured base model would
see (its feature group, its numeric encoding), the training split for fitting and early stopping,
the held-out split for the table's metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..config import BootstrapSettings, Config, ConfigError, ModelSpec
from ..interval_text import difference_cell, interval_cell
from ..metrics import bootstrap
from ..models.base import LABEL, FeatureSpec, keyed_pandas
from ..models.neural.base import build_config
from ..models.neural.feature_map import FeatureMap
from ..models.neural.model import TorchTrainParams
from .oof import ES

# dense, cat_ids, y, targets (one column per extra target, NaN = unknown; (n, 0) when none)
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def study_model(cfg: Config, section: str, name: str, family: str) -> tuple[ModelSpec, TorchTrainParams]:
    """The base model ``name`` (of ``family``) that the study in conf section ``section`` ablates,
    and its torch training parameters; a ConfigError naming ``<section>.model`` if there is none."""
    spec = next((s for s in cfg.base_models.models if s.name == name), None)
    if spec is None or spec.family != family:
        raise ConfigError(f"{section}.model: {name!r} is not a configured base model of family {family}")
    return spec, build_config(TorchTrainParams, spec.params)


@dataclass(frozen=True)
class StudyRows:
    """The encoded rows of a study (``split``: train/test and any other split of ``data``; ``ES``
    marks the early-stopping users) and the feature map fitted on the training rows."""

    encoded: DataFrame
    fmap: FeatureMap
    targets: tuple[str, ...]

    def arrays(self, rows: DataFrame) -> Arrays:
        """``rows`` (a filter of ``encoded``) as arrays, in (user_id, month) order."""
        pdf = keyed_pandas(rows, *self.fmap.columns, LABEL, *self.targets)
        dense, ids = self.fmap.transform(pdf)
        return (dense, ids, pdf[LABEL].astype("float64").to_numpy(dtype=np.float32),
                pdf[list(self.targets)].astype("float64").to_numpy(dtype=np.float32).reshape(len(pdf), -1))

    def split(self, split: str, early_stopping: bool | None = None) -> DataFrame:
        """The rows of ``split``; with ``early_stopping`` only those in (True) or out of (False) the
        early-stopping users."""
        rows = self.encoded.filter(F.col("split") == split)
        return rows if early_stopping is None else rows.filter(F.col(ES) if early_stopping else ~F.col(ES))

    def owners(self, rows: DataFrame) -> np.ndarray:
        """The ``user_id`` of each row of ``rows``, in the order of :meth:`arrays` (the bootstrap's groups)."""
        return keyed_pandas(rows, "user_id")["user_id"].to_numpy()


def study_rows(cfg: Config, spec: ModelSpec, params: TorchTrainParams, data: DataFrame,
               targets: tuple[str, ...] = (), max_train_rows: int | None = None) -> StudyRows:
    """``data`` (a training frame: features + ``fold, split, ES``) encoded with ``spec``'s features,
    keeping ``LABEL`` and ``targets``; at most about ``max_train_rows`` training rows (a seeded
    sample at one rate for every split but the held-out ``test``, which is kept whole); the feature map fitted on the training rows outside early
    stopping. Checkpointed, so every array is cut from the same sample."""
    members = cfg.base_models.feature_groups[spec.feature_group] if spec.feature_group else None
    features = FeatureSpec.from_frame(data.filter(F.col("split") == "train").drop("fold", "split", ES), members)
    encoded = features.encode(data, extra=(LABEL, *targets, "split", ES))
    if max_train_rows:
        share = max_train_rows / max(1, encoded.filter(F.col("split") == "train").count())
        encoded = encoded.filter((F.col("split") == "test") | (F.rand(seed=params.seed) < share))
    encoded = encoded.localCheckpoint()
    fit_rows = encoded.filter((F.col("split") == "train") & ~F.col(ES))
    fmap = FeatureMap.fit(fit_rows, features.columns, vocab=features.categorical,
                          numeric_encoding=params.numeric_encoding, n_buckets=params.n_buckets)
    return StudyRows(encoded, fmap, tuple(targets))


def cell(value: Any, fmt: str) -> str:
    """A study table's markdown cell: ``value`` formatted, "–" for a missing (None/NaN) one."""
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, fmt)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A study's markdown table: the ``header`` line, the separator and one line per row of cell
    texts (formatted by the caller, e.g. with :func:`cell` and :func:`interval_cell`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


ABLATION_HEADER = ("AUC", "LogLoss", "P@K", "AUC − full", "LogLoss − full")


def ablation_cells(row: dict[str, Any]) -> list[str]:
    """The cells of :data:`ABLATION_HEADER` for one variant of an ablation table (kaml, hm3): AUC,
    LogLoss and P@K with their intervals, the AUC and LogLoss difference to the reference (``full``)."""
    return [interval_cell(row["auc"], row.get("auc_ci_low"), row.get("auc_ci_high"), ".4f"),
            interval_cell(row["logloss"], row.get("logloss_ci_low"), row.get("logloss_ci_high"), ".5f"),
            interval_cell(row["precision_at_k"], row.get("precision_at_k_ci_low"), row.get("precision_at_k_ci_high"),
                          ".4f"),
            difference_cell(row, "auc", "+.4f"), difference_cell(row, "logloss", "+.5f", lower_is_better=True)]


STUDY_DIFFERENCES = ("auc", "logloss")  # a variant minus its reference, with the paired interval


def study_intervals(y: np.ndarray, scores: dict[str, np.ndarray], owners: np.ndarray | None, k_fraction: float,
                    settings: BootstrapSettings, references: dict[str, str],
                    metrics: tuple[str, ...] = ("auc", "logloss", "precision_at_k")) -> dict[str, dict[str, Any]]:
    """Interval columns of a study's rows, one dict per scorer of ``scores`` (probabilities on the same
    held-out rows): ``positives``, ``ci_level``, ``<metric>_ci_low/high`` for ``metrics``, and, for a
    scorer listed in ``references``, ``reference`` and ``<metric>_diff`` (scorer − reference) with its
    interval for :data:`STUDY_DIFFERENCES`. A paired bootstrap over ``owners`` (each row its own owner
    when None: rows of in-memory arrays without keys), :func:`remedi_spark.metrics.bootstrap`."""
    y = np.asarray(y).astype(np.int64)
    groups = np.arange(len(y)) if owners is None else np.asarray(owners)
    boot = bootstrap(y, scores, groups, k_fraction, replicates=settings.replicates, seed=settings.seed,
                     level=settings.level, pairs=list(references.items()))
    out: dict[str, dict[str, Any]] = {}
    for name in scores:
        ivs = boot["intervals"][name]
        row: dict[str, Any] = {"positives": int(y.sum()), "ci_level": float(settings.level)}
        for metric in metrics:
            row.update({f"{metric}_ci_low": ivs[metric].low, f"{metric}_ci_high": ivs[metric].high})
        reference = references.get(name)
        row["reference"] = reference
        for metric in STUDY_DIFFERENCES:
            iv = boot["differences"][(name, reference)][metric] if reference else None
            row.update({f"{metric}_diff": iv.estimate if iv else None, f"{metric}_diff_ci_low": iv.low if iv else None,
                        f"{metric}_diff_ci_high": iv.high if iv else None})
        out[name] = row
    return out
