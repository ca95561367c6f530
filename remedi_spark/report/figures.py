"""The report's figures (matplotlib, Agg backend): each function takes plain frames/arrays and
returns PNG bytes, so figures can be tested and written anywhere."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"student": "#1f77b4", "teacher": "#ff7f0e", "best_base": "#2ca02c", "oracle": "#7f7f7f"}


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _mark_k(ax: plt.Axes, x: float, label: str) -> None:
    ax.axvline(x, color="crimson", linestyle="--", linewidth=1)
    ax.annotate(label, xy=(x, ax.get_ylim()[1]), xytext=(4, -14), textcoords="offset points", color="crimson",
                fontsize=8)


def gains_chart(curves: dict[str, dict[str, np.ndarray]], k_share: float, k: int) -> bytes:
    """Cumulative gains: share of buyers reached vs share of owners contacted."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, c in curves.items():
        ax.plot(c["contacted"], c["gain"], label=name, color=COLORS.get(name))
    ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="random")
    ax.set(xlabel="share of owners contacted", ylabel="share of buyers reached", title="Cumulative gains",
           xlim=(0, 1), ylim=(0, 1.02))
    _mark_k(ax, k_share, f"K = {k:,}")
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def lift_chart(curves: dict[str, dict[str, np.ndarray]], k_share: float, k: int) -> bytes:
    """Lift (precision / base rate) vs share of owners contacted."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, c in curves.items():
        ax.plot(c["contacted"], c["lift"], label=name, color=COLORS.get(name))
    ax.axhline(1.0, color="black", linestyle=":", linewidth=1, label="random")
    ax.set_xscale("log")  # the top 0.5% is a handful of owners: its lift is noise, so start there
    ax.set(xlabel="share of owners contacted (log scale)", ylabel="lift", title="Lift", xlim=(0.005, 1))
    _mark_k(ax, k_share, f"K = {k:,}")
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def at_k_chart(curves: dict[str, dict[str, np.ndarray]], key: str, ylabel: str, k: int) -> bytes:
    """Precision or business recall as a function of the list length K."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, c in curves.items():
        ax.plot(c["k"], c[key], label=name, color=COLORS.get(name))
    ax.set(xlabel="K (owners in the list)", ylabel=ylabel, title=f"{ylabel} at K")
    ax.set_xscale("log")
    _mark_k(ax, k, f"K = {k:,}")
    ax.legend(fontsize=8)
    return _png(fig)


def score_histogram(scores: np.ndarray, labels: np.ndarray, name: str) -> bytes:
    """Score distribution of buyers and non-buyers (each normalized to density)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    # purchase probabilities span orders of magnitude: log-spaced bins, log x axis
    low = max(float(np.quantile(scores[scores > 0], 0.001)) if (scores > 0).any() else 1e-6, 1e-6)
    bins = np.geomspace(low, max(float(np.max(scores)), low * 10), 50)
    scores = np.clip(scores, low, None)
    for value, text, color in ((0, "no purchase", "#9ecae1"), (1, "purchase in T+1..T+3", "#d62728")):
        part = scores[labels == value]
        if len(part):
            ax.hist(part, bins=bins, weights=np.full(len(part), 1 / len(part)), alpha=0.6, label=f"{text} ({len(part):,})", color=color)
    ax.set(xlabel=f"{name} score (log scale)", ylabel="share of the group per bin",
           title="Score distribution by label")
    ax.set_xscale("log")
    ax.legend(fontsize=8)
    return _png(fig)


def calibration_chart(calibration: dict[str, dict[str, list[float]]], bins: int) -> bytes:
    """Reliability curve: mean predicted vs observed purchase rate per quantile bin, from the
    ``{scorer: {"predicted": [...], "observed": [...]}}`` points the report already computed."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    top = 0.0
    for name, points in calibration.items():
        predicted, observed = np.asarray(points["predicted"]), np.asarray(points["observed"])
        ax.plot(predicted, observed, marker="o", markersize=3, label=name, color=COLORS.get(name))
        top = max(top, float(predicted.max()), float(observed.max()))
    ax.plot([0, top], [0, top], color="black", linestyle=":", linewidth=1, label="perfectly calibrated")
    ax.set(xlabel="mean predicted probability", ylabel="observed purchase rate",
           title=f"Calibration ({bins} quantile bins, symlog axes)")
    ax.set_xscale("symlog", linthresh=1e-3)  # most owners sit below 0.5%: a linear axis hides them
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=8)
    return _png(fig)


def importance_chart(importance: pd.DataFrame, top: int) -> bytes:
    """The student's top features by total gain, coloured by feature group."""
    head = importance.head(top).iloc[::-1]
    groups = sorted(importance["group"].unique())
    palette = dict(zip(groups, plt.cm.tab10.colors))
    fig, ax = plt.subplots(figsize=(7, max(3.0, 0.22 * len(head) + 1)))
    ax.barh(head["feature"], head["share"], color=[palette[g] for g in head["group"]])
    ax.set(xlabel="share of total gain", title=f"Student feature importance (gain), top {len(head)}")
    ax.tick_params(axis="y", labelsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[g]) for g in groups]
    ax.legend(handles, groups, fontsize=7, loc="lower right")
    return _png(fig)


def monthly_chart(monthly: pd.DataFrame, k_fraction: float) -> bytes:
    """Precision at K and AUC per month and scorer (held-out owners)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, part in monthly.groupby("scorer", sort=False):
        left.plot(part["month"], part["precision_at_k"], marker="o", label=name, color=COLORS.get(name))
        right.plot(part["month"], part["auc"], marker="o", label=name, color=COLORS.get(name))
    left.set(title=f"Precision at K ({100 * k_fraction:.1f}% of owners)", ylabel="P@K")
    right.set(title="AUC", ylabel="AUC")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    left.legend(fontsize=8)
    return _png(fig)


def monitoring_chart(months: pd.DataFrame, realized: pd.DataFrame) -> bytes:
    """Realized lead-list precision per closed month; max feature PSI and score PSI per monitored
    month with the 0.1 / 0.25 bands."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for column, marker, label in (("lead_list.precision", "o", "lead list"), ("ranking.precision_at_k", "s", "ranking P@K")):
        if column not in realized:
            continue
        values = realized[column].astype(float)
        if f"{column}_ci_low" in realized:  # bootstrap interval over the month's owners as an error bar
            low, high = realized[f"{column}_ci_low"].astype(float), realized[f"{column}_ci_high"].astype(float)
            left.errorbar(realized["evaluated_month"], values, yerr=[values - low, high - values], marker=marker,
                          capsize=3, label=label)
        else:
            left.plot(realized["evaluated_month"], values, marker=marker, label=label)
    left.set(title="Realized precision (closed windows)", ylabel="precision")
    left.legend(fontsize=8)
    right.plot(months["month"], months["max_feature_psi"], marker="o", label="max feature PSI")
    right.plot(months["month"], months["score_psi"], marker="s", label="score PSI")
    for level, color in ((0.1, "#f0a030"), (0.25, "crimson")):
        right.axhline(level, color=color, linestyle="--", linewidth=1)
    right.set(title="Drift vs the training months", ylabel="PSI")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    return _png(fig)


def diversity_heatmaps(models: list[str], spearman: list[list[float]], overlap: list[list[float]], k: int) -> bytes:
    """Two model × model heat maps, each cell annotated: the Spearman rank correlation between the
    base models' predictions (on a −1..1 scale) and the overlap of their top-K lists (0..1)."""
    n = len(models)
    side = max(4.0, 0.5 * n + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    panels = ((np.asarray(spearman, dtype=float), "Spearman rank correlation", "RdBu_r", -1.0),
              (np.asarray(overlap, dtype=float), f"Top-K overlap |A ∩ B| / K (K = {k:,})", "viridis", 0.0))
    for ax, (values, title, cmap, low) in zip(axes, panels):
        image = ax.imshow(values, cmap=cmap, vmin=low, vmax=1.0)
        ax.set_xticks(range(n), models, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), models, fontsize=7)
        for i in range(n):
            for j in range(n):
                if np.isfinite(values[i, j]):
                    dark = abs(values[i, j]) > 0.6 if low < 0 else values[i, j] < 0.5
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _png(fig)
