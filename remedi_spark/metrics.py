"""Lead-list metrics (REMEDI §3.2) on arrays of labels and scores.

* Precision@K = buyers among the top K / K.
* Business Recall@K = buyers among the top K / (all buyers / 3): the denominator is the average
  number of buyers per month of the three-month window.
* Lift@K = Precision@K / base rate. AUC and LogLoss come from scikit-learn.

K defaults to ``k_fraction`` (7.5%, i.e. 60,000 of 800,000) of the population. Ties at the
cut-off are broken by a stable sort on the score (the first-listed row wins), so results are
deterministic. A K larger than the population means the whole population is contacted: the
list holds ``min(K, n)`` owners and precision is taken over those.

The curve functions (:func:`ranked_curves`) give the same numbers at many K at once, for the
report's cumulative gains, lift and precision/recall-at-K plots.

:func:`bootstrap` puts percentile intervals on these metrics and on differences between scorers by
resampling owners, not rows: an owner's rows (several vehicles, several months) are correlated, so
they are drawn together, and a row-level bootstrap would make the intervals too narrow. It is paired:
one set of replicate weights (:func:`owner_resample_weights`, seeded, drawn chunk by chunk to bound
memory) is shared by all scorers, so a difference between two scorers is taken replicate by replicate
and the owners' common luck cancels. Each replicate is evaluated without materializing the resample:
:func:`weighted_lead_metrics` gives exactly :func:`lead_metrics` of the sample in which every row is
repeated as often as it was drawn, from a single sort per scorer.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import log_loss, roc_auc_score


def lead_count(k: int | float, owners: int) -> int:
    """``lead_list.k`` as a number of leads: a count as given, a fraction of ``owners`` rounded (at least 1)."""
    return k if isinstance(k, int) else max(1, int(round(k * owners)))


def _cumulative_hits(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Positives among the top 1, 2, ..., n scores (stable sort: ties keep the input order)."""
    order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
    return np.cumsum(np.asarray(y, dtype=np.int64)[order])


def top_k_hits(y: np.ndarray, score: np.ndarray, k: int) -> int:
    """Number of positives among the ``k`` highest scores (``k`` larger than the population: all)."""
    k = min(max(int(k), 0), len(y))
    return int(_cumulative_hits(y, score)[k - 1]) if k else 0


def precision_at_k(y: np.ndarray, score: np.ndarray, k: int) -> float:
    """Positives among the top ``k`` / the list length ``min(k, n)``."""
    n = min(max(int(k), 0), len(y))
    return top_k_hits(y, score, k) / n if n else float("nan")


def business_recall_at_k(y: np.ndarray, score: np.ndarray, k: int) -> float:
    """Positives among the top ``k`` / (all positives / 3): REMEDI's monthly-normalized recall."""
    positives = int(np.asarray(y).sum())
    return top_k_hits(y, score, k) / (positives / 3.0) if positives else float("nan")


def curve_ks(n_rows: int, points: int, extra: tuple[int, ...] = ()) -> np.ndarray:
    """About ``points`` list lengths from 1 to ``n_rows`` (half evenly, half log spaced so the top
    of the list, where lead lists live, is resolved too), plus any ``extra`` K."""
    half = max(2, points // 2)
    grid = np.concatenate([np.linspace(1, n_rows, num=half), np.geomspace(1, max(n_rows, 1), num=half)])
    ks = np.unique(grid.round().astype(np.int64))
    extra_ks = [min(max(int(k), 1), n_rows) for k in extra]
    return np.unique(np.concatenate([ks, np.asarray(extra_ks, dtype=np.int64)]))


def ranked_curves(y: np.ndarray, score: np.ndarray, ks: np.ndarray) -> dict[str, np.ndarray]:
    """At each list length K in ``ks`` (1..n): hits, precision, business recall, the cumulative
    gain (share of all positives in the list), the contacted share, and lift (precision / base rate)."""
    y = np.asarray(y, dtype=np.int64)
    n, positives = len(y), int(y.sum())
    ks = np.asarray(ks, dtype=np.int64)
    if n == 0 or ks.min() < 1 or ks.max() > n:
        raise ValueError(f"list lengths must lie in 1..{n}, got {ks.min() if len(ks) else None}..{ks.max() if len(ks) else None}")
    hits = _cumulative_hits(y, score)[ks - 1].astype(float)
    precision = hits / ks
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"k": ks, "hits": hits, "precision": precision,
                "business_recall": hits / (positives / 3.0) if positives else np.full(len(ks), np.nan),
                "gain": hits / positives if positives else np.full(len(ks), np.nan),
                "contacted": ks / n,
                "lift": precision / (positives / n) if positives else np.full(len(ks), np.nan)}


def k_for(n_rows: int, k_fraction: float) -> int:
    """K scaled to the population: ``round(k_fraction * n_rows)``, at least 1."""
    return max(1, int(round(k_fraction * n_rows)))


def lead_metrics(y: np.ndarray, p: np.ndarray, k: int) -> dict[str, float]:
    """P@K, Business Recall@K, Lift@K, AUC and LogLoss of probabilities ``p`` for labels ``y``."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    positives = int(y.sum())
    precision = precision_at_k(y, p, k)
    base_rate = positives / len(y) if len(y) else 0.0
    both = positives > 0 and positives < len(y)
    return {
        "rows": float(len(y)), "positives": float(positives), "k": float(k), "hits_at_k": float(top_k_hits(y, p, k)),
        "precision_at_k": precision,
        "business_recall_at_k": business_recall_at_k(y, p, k),
        "lift_at_k": precision / base_rate if base_rate else float("nan"),
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
    }


# --- Paired owner-level bootstrap ---------------------------------------------------------------

BOOTSTRAP_METRICS = ("precision_at_k", "business_recall_at_k", "lift_at_k", "auc", "logloss")

_CHUNK_BYTES = 256 * 2**20  # one chunk of replicate weights stays under this
_CACHE_BYTES = 16 * 2**20   # bootstrap's owner counts per chunk (read at random) stay about this size
_BLOCK = 64                  # rows per block when locating the top-K boundary


def _owners(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Each row's owner as an index into the sorted unique ``groups`` values, and the number of owners."""
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) == 0:
        raise ValueError(f"groups must be a non-empty 1-d array, got shape {groups.shape}")
    _, owner = np.unique(groups, return_inverse=True)
    owner = owner.reshape(-1)
    return owner, int(owner.max()) + 1


def _owner_counts(owners: int, replicates: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """How often each owner is drawn in each replicate: ``(owners, r)`` float64 matrices, ``chunk``
    replicates at a time. Replicate ``b`` draws ``owners`` owners with replacement from its own child
    ``b`` of ``SeedSequence(seed)``, so the counts depend on ``owners``, ``replicates`` and ``seed`` only,
    not on the chunk size."""
    if replicates < 1 or chunk < 1:
        raise ValueError(f"replicates and chunk must be at least 1, got {replicates} and {chunk}")
    children = np.random.SeedSequence(seed).spawn(replicates)
    for start in range(0, replicates, chunk):
        block = children[start:start + chunk]
        # filled a replicate per row, then transposed once: writing columns of (owners, r) one at a
        # time touches every cache line of it per replicate
        counts = np.empty((len(block), owners))
        for j, child in enumerate(block):
            counts[j] = np.bincount(np.random.default_rng(child).integers(0, owners, size=owners), minlength=owners)
        yield np.ascontiguousarray(counts.T)


def owner_resample_weights(groups: np.ndarray, replicates: int, seed: int,
                           chunk: int | None = None) -> Iterator[np.ndarray]:
    """Bootstrap weights for resampling owners with replacement, ``chunk`` replicates at a time.

    ``groups`` names the owner of each row. Each replicate draws as many owners as there are unique
    ``groups`` values, with replacement; every row of an owner gets that owner's draw count, so an
    owner's rows always move together. Yields ``(r, n)`` float64 matrices (column-major: the transpose,
    ``(n, r)``, is C-contiguous) whose ``r`` sum to ``replicates``. ``chunk`` (replicates per matrix)
    defaults to what keeps one matrix under 256 MB. Deterministic: the weights depend only on
    ``groups``, ``replicates`` and ``seed`` (not on ``chunk``).
    """
    owner, owners = _owners(groups)
    chunk = max(1, _CHUNK_BYTES // (8 * len(owner))) if chunk is None else chunk
    for counts in _owner_counts(owners, replicates, seed, chunk):
        yield counts[owner].T


@dataclass(frozen=True)
class _Ranking:
    """One score vector, sorted once, with what the weighted metrics of any replicate need.

    Weights are given per *unit*, and row ``i`` carries the weight of unit ``unit[i]``: a unit is a row
    (:func:`weighted_lead_metrics`) or an owner, all of whose rows share one draw count (:func:`bootstrap`).
    """
    top_units: np.ndarray        # unit of each row, rows in the stable descending order of the clipped scores
    y_sorted: np.ndarray         # labels in that order, float
    loss: np.ndarray             # (units,): summed log loss of each unit's rows
    segments: sp.csr_matrix      # (2 or 3 groups, units): per-segment weight sums for the AUC, see _ranking
    groups: int                  # tie groups that hold a positive
    ties: bool                   # whether one of them also holds a negative (the third block of segments)


def _ranking(y: np.ndarray, p: np.ndarray, unit: np.ndarray, units: int) -> _Ranking:
    """Sort ``p`` (clipped as in :func:`lead_metrics`) once and lay out the AUC's segments.

    Walking the descending order, the tie groups that hold positives (``g = 0, 1, ...``) are separated
    by gaps of negatives. Segment sums of a replicate's weights give, per group, the negative weight in
    the gap before it, the positive weight in it and the negative weight in it; the weighted
    Mann-Whitney count of mis-ordered pairs (ties counting one half) is then
    ``sum_g pos_g * (neg_above_g + neg_in_g / 2)`` with ``neg_above_g`` a cumulative sum over groups.
    The segment sums of all replicates are one sparse product (rows of the same unit in the same
    segment merge into one entry), so a replicate costs no sort.
    """
    n = len(y)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    if p.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {p.shape}")
    order = np.argsort(-p, kind="stable")
    y_sorted = y[order].astype(float)
    loss = np.bincount(unit, -np.where(y == 1, np.log(p), np.log1p(-p)), minlength=units)
    p_sorted = p[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = p_sorted[1:] != p_sorted[:-1]
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n) - 1
    positive = y_sorted == 1
    held = np.unique(np.cumsum(new_group)[positive] - 1)   # tie groups holding positives, in rank order
    groups = len(held)
    if groups == 0:
        return _Ranking(unit[order], y_sorted, loss, sp.csr_matrix((0, units)), 0, False)
    a, b = starts[held], ends[held]
    x = np.arange(n)
    last = np.searchsorted(a, x, side="right") - 1            # the last held group starting at or before x
    inside = (last >= 0) & (x <= b[np.maximum(last, 0)])
    segment = np.where(inside, np.where(positive, groups + last, 2 * groups + last), last + 1)  # else: gap last + 1
    keep = inside | (last + 1 < groups)                      # rows below the last held group never matter
    ties = bool(np.any(inside & ~positive))
    segments = sp.csr_matrix((np.ones(int(keep.sum())), (segment[keep], unit[order][keep])),
                             shape=((3 if ties else 2) * groups, units))   # duplicate entries are summed
    return _Ranking(unit[order], y_sorted, loss, segments, groups, ties)


def _top_k_hits(rk: _Ranking, weights: np.ndarray, length: np.ndarray, k_fraction: float) -> np.ndarray:
    """Positive weight among the first ``length[j]`` units of weight of the ranking, per replicate ``j``:
    whole rows while they fit, then the part of the boundary row's (adjacent) copies that fits.

    Only the top of the ranking is read (widened until every replicate's list fits), and without a
    cumulative sum over it: block sums locate each replicate's boundary block, and only that block is
    accumulated row by row.
    """
    n, r, b = len(rk.top_units), weights.shape[1], _BLOCK
    cols = np.arange(r)
    m = min(n, int(np.ceil(1.25 * k_fraction * n)) + 4 * b)  # usually enough rows to reach K
    while True:
        blocks = -(-m // b)
        top = np.zeros((blocks * b, r))
        np.take(weights, rk.top_units[:m], axis=0, out=top[:m])   # weights of the m highest-scored rows
        top = top.reshape(blocks, b, r)
        y_top = np.zeros(blocks * b)
        y_top[:m] = rk.y_sorted[:m]
        y_top = y_top.reshape(blocks, b)
        reached = np.cumsum(top.sum(axis=1), axis=0)              # (blocks, r): weight through each block
        if m == n or np.all(reached[-1] >= length):
            break
        m = min(n, 2 * m)
    hit = np.cumsum(np.einsum("kbr,kb->kr", top, y_top), axis=0)  # positive weight through each block
    block = np.minimum((reached < length).sum(axis=0), blocks - 1)  # the block where each list ends
    first = block > 0
    weight_before = np.where(first, reached[block - 1, cols], 0.0)
    hits_before = np.where(first, hit[block - 1, cols], 0.0)
    inside = top[block, :, cols]                                   # (r, b): the rows of that block
    y_inside = y_top[block]
    through = weight_before[:, None] + np.cumsum(inside, axis=1)
    row = np.minimum((through < length[:, None]).sum(axis=1), b - 1)  # the row whose copies reach the length
    weight_before = np.where(row > 0, through[cols, row - 1], weight_before)
    hits_before += np.where(row > 0, np.cumsum(inside * y_inside, axis=1)[cols, np.maximum(row - 1, 0)], 0.0)
    return hits_before + (length - weight_before) * y_inside[cols, row]


def _weighted_metrics(rk: _Ranking, weights: np.ndarray, total: np.ndarray, positives: np.ndarray,
                      k_fraction: float) -> dict[str, np.ndarray]:
    """:data:`BOOTSTRAP_METRICS` of the replicates whose unit weights are the columns of ``weights``
    (``(units, r)``), given each replicate's total and positive row weight."""
    negatives = total - positives
    length = np.minimum(np.maximum(1.0, np.rint(k_fraction * total)), total)  # k_for, capped at the sample
    hits = _top_k_hits(rk, weights, length, k_fraction)
    g = rk.groups
    sums = rk.segments @ weights          # per held group: negatives in the gap before it, its positives, its negatives
    neg_above = sums[:g] + sums[2 * g:] if rk.ties else sums[:g]
    np.cumsum(neg_above, axis=0, out=neg_above)  # negatives down to the group's end (with ties: in it too) ...
    if rk.ties:
        neg_above -= sums[2 * g:] / 2            # ... of which those tied with its positives count one half
    wrong = np.einsum("gr,gr->r", sums[g:2 * g], neg_above)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(length > 0, hits / length, np.nan)
        has_pos = positives > 0
        return {
            "precision_at_k": precision,
            "business_recall_at_k": np.where(has_pos, hits / (positives / 3.0), np.nan),
            "lift_at_k": np.where(has_pos, precision / (positives / total), np.nan),
            "auc": np.where(has_pos & (negatives > 0), 1.0 - wrong / (positives * negatives), np.nan),
            "logloss": np.where(total > 0, (rk.loss @ weights) / total, np.nan),
        }


def _unit_rows(y: np.ndarray, unit: np.ndarray, units: int) -> np.ndarray:
    """``(2, units)``: each unit's rows and positive rows (what :func:`_totals` weighs)."""
    return np.stack([np.bincount(unit, minlength=units), np.bincount(unit, y, minlength=units)]).astype(float)


def _totals(unit_rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each replicate's total and positive row weight, from :func:`_unit_rows` and unit weights ``(units, r)``."""
    both = unit_rows @ weights
    return both[0], both[1]


def weighted_lead_metrics(y: np.ndarray, p: np.ndarray, w: np.ndarray, k_fraction: float) -> dict[str, np.ndarray]:
    """:data:`BOOTSTRAP_METRICS` for every row of the weight matrix ``w`` (``(r, n)``, or ``(n,)`` for one).

    Entry ``j`` of each returned ``(r,)`` array is what :func:`lead_metrics` gives on the expanded sample
    in which row ``i`` appears ``w[j, i]`` times (copies adjacent, so they stay together in the stable
    sort), with ``K = k_for(w[j].sum(), k_fraction)``. Top-K walks the stable descending order of ``p``
    by cumulative weight and takes part of the boundary row's copies. AUC is the weighted
    Mann-Whitney statistic with ties counting one half: the scores are sorted once and each replicate
    costs a sparse product over the rows, with no per-replicate sort. NaN where a replicate has no
    positive (AUC: or no negative), and everywhere for an all-zero weight row.
    """
    y = np.asarray(y).astype(np.int64)
    w = np.asarray(w, dtype=float)
    w = w[None, :] if w.ndim == 1 else w
    if y.ndim != 1 or w.ndim != 2 or w.shape[1] != len(y):
        raise ValueError(f"weights must have shape (r, {len(y)}), got {w.shape}")
    unit = np.arange(len(y))
    weights = np.ascontiguousarray(w.T)
    total, positives = _totals(_unit_rows(y, unit, len(y)), weights)
    return _weighted_metrics(_ranking(y, p, unit, len(y)), weights, total, positives, k_fraction)


@dataclass(frozen=True)
class Interval:
    """A metric's value on the original sample and its bootstrap percentile interval at ``level``."""
    estimate: float   # the metric on the original sample (lead_metrics), not the bootstrap mean
    low: float
    high: float
    level: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a NaN interval excludes nothing)."""
        return bool(self.low > 0 or self.high < 0)


def _interval(estimate: float, values: np.ndarray, level: float) -> Interval:
    """Percentile interval of the non-NaN ``values``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles."""
    finite = values[~np.isnan(values)]
    if not len(finite):
        return Interval(float(estimate), float("nan"), float("nan"), level)
    low, high = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return Interval(float(estimate), float(low), float(high), level)


def bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], groups: np.ndarray, k_fraction: float, *,
              replicates: int = 1000, seed: int = 7, level: float = 0.9,
              pairs: Sequence[tuple[str, str]] = ()) -> dict:
    """Paired owner-level bootstrap of :data:`BOOTSTRAP_METRICS` for several scorers of the same rows.

    Owners (unique ``groups`` values) are drawn with replacement (:func:`owner_resample_weights`); one
    set of weights is shared by every scorer and metric, so the differences are paired. Returns
    ``{"intervals": {name: {metric: Interval}}, "differences": {(a, b): {metric: Interval}}}``: a
    difference is ``metric(a) - metric(b)`` per replicate. Intervals are percentile intervals at
    ``level`` (0.9: the 5th and 95th percentiles), ignoring NaN replicates. Estimates are
    :func:`lead_metrics` on the original rows at ``K = k_for(len(y), k_fraction)`` (a difference's:
    ``estimate(a) - estimate(b)``). The order of ``scores`` and ``pairs`` changes nothing.
    """
    y = np.asarray(y).astype(np.int64)
    if y.ndim != 1 or len(np.asarray(groups)) != len(y):
        raise ValueError(f"y and groups must be 1-d of the same length, got {y.shape} and {np.shape(groups)}")
    if not 0 < level < 1 or replicates < 1:
        raise ValueError(f"level must lie in (0, 1) and replicates be at least 1, got {level} and {replicates}")
    pairs = [(a, b) for a, b in pairs]
    unknown = sorted({name for pair in pairs for name in pair} - set(scores))
    if unknown:
        raise KeyError(f"pairs name unknown scorers: {unknown}")
    owner, owners = _owners(groups)
    rankings = {name: _ranking(y, p, owner, owners) for name, p in scores.items()}
    # Owner counts, not row weights, are what the metrics read (at random, per row and scorer): chunks of
    # them sized to stay in the CPU cache, and the n-sized intermediates within the 256 MB budget.
    chunk = max(1, min(_CHUNK_BYTES // (8 * len(y)), max(8, _CACHE_BYTES // (8 * owners))))
    values = {name: {m: np.empty(replicates) for m in BOOTSTRAP_METRICS} for name in scores}
    done = 0
    unit_rows = _unit_rows(y, owner, owners)
    for counts in _owner_counts(owners, replicates, seed, chunk):
        total, positives = _totals(unit_rows, counts)
        for name, rk in rankings.items():
            for metric, v in _weighted_metrics(rk, counts, total, positives, k_fraction).items():
                values[name][metric][done:done + counts.shape[1]] = v
        done += counts.shape[1]
    k = k_for(len(y), k_fraction)
    estimates = {name: lead_metrics(y, p, k) for name, p in scores.items()}
    return {
        "intervals": {name: {m: _interval(estimates[name][m], values[name][m], level) for m in BOOTSTRAP_METRICS}
                      for name in scores},
        "differences": {(a, b): {m: _interval(estimates[a][m] - estimates[b][m], values[a][m] - values[b][m], level)
                                 for m in BOOTSTRAP_METRICS}
                        for a, b in pairs},
    }


def difference_verdict(iv: Interval, lower_is_better: bool = False) -> str:
    """Reading of a difference interval ``metric(a) - metric(b)`` for the first scorer ``a``:
    'no difference' when it contains 0, else 'better' or 'worse' (``lower_is_better`` for LogLoss)."""
    if not iv.excludes_zero():
        return "no difference"
    return "better" if (iv.low > 0) != lower_is_better else "worse"
