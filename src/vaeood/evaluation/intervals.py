"""Intervals and the verdict words every experiment report uses: one implementation.

AUROC of a score (higher = more out-of-distribution, OOD positive) with a 95% interval
from the **stratified bootstrap over test images** (Efron & Tibshirani 1993, ch. 13;
the percentile interval): the in-distribution and the OOD test images are resampled
separately, each with replacement and to its own size, so every replicate has the
class sizes of the data.

Several training seeds score the *same* test images. :func:`seed_summary` gives their
mean ± sd and a **two-level (hierarchical) bootstrap** interval of the seed-mean AUROC
(Davison & Hinkley 1997, §3.8; Saravanan et al. 2020, "Application of the hierarchical
bootstrap to multi-level data"): each replicate draws the seeds with replacement and one
resample of the test images shared by every seed (they are one test set), and averages
the drawn seeds' AUROCs. So the interval widens both with test-image noise and with
seed-to-seed spread (with 3 seeds the seed level is resampled crudely: 10 distinct
multisets). Each seed's own image-bootstrap interval is reported beside it.

Verdict words come from the interval, never from the point (:func:`verdict`):
*separates* (the interval lies above 0.5: the OOD set gets lower likelihood),
*inverted* (below 0.5: the OOD set gets *higher* likelihood), *indistinguishable*
(it covers 0.5).

A trend over a sweep (capacity: parameters → AUROC) is :func:`trend`: Spearman's ρ with
a percentile bootstrap interval over the (x, y) points, and the least-squares slope of
y on log₂ x ± its standard error with the t interval (``scipy.stats.linregress``).

Spearman's ρ between a per-image quantity and each seed's log p(x), with the same
two-level bootstrap: :mod:`vaeood.evaluation.rank_correlation`.

One-class protocols (each class in turn in-distribution, the rest of one labelled test set
OOD, one model per class): :func:`class_mean_summary` gives each class's AUROC and their
mean with intervals from **one bootstrap over the test images shared by every class**: a
replicate resamples the images of each label with replacement to its own count (stratified
by label), and every class's AUROC and the mean are computed on that same replicate. The
classes are fixed (they are the benchmark), so the interval of the mean is over images, not
over a population of classes.

Weighted AUROC, exactly (ties count one half, as in ``sklearn.metrics.roc_auc_score``):
with multiplicities ``u_i`` of in-distribution images and ``v_j`` of OOD images,

    AUROC = Σ_j v_j [Σ_{i: a_i < b_j} u_i + ½ Σ_{i: a_i = b_j} u_i] / (Σ u · Σ v),

computed from cumulative sums of ``u`` in the order of the in-distribution scores ``a``,
so a replicate costs O(n), not a sort.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
N_BOOT = 2000
WORDS = ("separates", "inverted", "indistinguishable")
_BLOCK_ELEMENTS = 4_000_000  # replicates are drawn in blocks of at most this many weights


def verdict(interval: tuple[float, float], null: float = 0.5) -> str:
    """``separates`` when the whole interval is above ``null`` (AUROC 0.5), ``inverted``
    when it is below, ``indistinguishable`` when it covers it (an end at exactly 0.5
    counts as covering)."""
    lo, hi = interval
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "indistinguishable"
    if lo > null:
        return "separates"
    if hi < null:
        return "inverted"
    return "indistinguishable"


def _as_scores(s, name: str) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"{name} scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} scores contain {np.count_nonzero(~np.isfinite(s))} NaN/inf values")
    return s


class _Pair:
    """One (in, OOD) pair of score arrays, prepared for weighted AUROCs."""

    def __init__(self, s_in, s_out):
        a, b = _as_scores(s_in, "in-distribution"), _as_scores(s_out, "OOD")
        self.n_in, self.n_out = len(a), len(b)
        self.order = np.argsort(a, kind="stable")
        sorted_a = a[self.order]
        # in-distribution images strictly below / at most each OOD score, in sorted order
        self.below = np.searchsorted(sorted_a, b, side="left")
        self.upto = np.searchsorted(sorted_a, b, side="right")

    def auroc(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Weighted AUROCs for weight rows ``u`` [R, n_in] and ``v`` [R, n_out]."""
        cum = np.zeros((u.shape[0], self.n_in + 1))
        np.cumsum(u[:, self.order], axis=1, out=cum[:, 1:])
        lower = cum[:, self.below]
        count = lower + 0.5 * (cum[:, self.upto] - lower)
        return (count * v).sum(axis=1) / (u.sum(axis=1) * v.sum(axis=1))


def auroc(s_in, s_out) -> float:
    """AUROC with OOD positive (ties one half); equals ``roc_auc_score`` on the pooled scores."""
    pair = _Pair(s_in, s_out)
    return float(pair.auroc(np.ones((1, pair.n_in)), np.ones((1, pair.n_out)))[0])


def resample_counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Multiplicities of ``rows`` resamples of n items with replacement, [rows, n] (float):
    replicate r draws item i ``counts[r, i]`` times. Every bootstrap here draws through
    this, so a replicate is a weight row and costs O(n), not a copy of the data."""
    idx = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _replicates(pairs: list[_Pair], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, S] AUROCs of every seed's pair under shared resamples of the test images."""
    n_in, n_out = pairs[0].n_in, pairs[0].n_out
    if any(p.n_in != n_in or p.n_out != n_out for p in pairs):
        raise ValueError("every seed must score the same test images (the same number of each)")
    block = max(1, _BLOCK_ELEMENTS // (n_in + n_out))
    out = np.empty((n_boot, len(pairs)))
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        u, v = resample_counts(rng, rows, n_in), resample_counts(rng, rows, n_out)
        for s, pair in enumerate(pairs):
            out[start:start + rows, s] = pair.auroc(u, v)
    return out


def _percentile(values: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _check(n_boot: int, level: float) -> None:
    if not (isinstance(n_boot, int) and n_boot >= 10):
        raise ValueError(f"n_boot must be an integer ≥ 10, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def bootstrap_auroc(s_in, s_out, *, n_boot: int = N_BOOT, seed: int = 0,
                    level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the AUROC of ``s_out`` (OOD, positive) against ``s_in`` by
    the stratified bootstrap over test images (in and OOD resampled separately)."""
    _check(n_boot, level)
    reps = _replicates([_Pair(s_in, s_out)], n_boot, np.random.default_rng(seed))[:, 0]
    return _percentile(reps, level)


@dataclass(frozen=True)
class SeedSummary:
    """AUROCs of one (model, detector, OOD set) over training seeds, with intervals."""

    values: list[float]  # one AUROC per seed (all test images)
    mean: float
    sd: float  # sample sd over seeds (ddof 1; 0 for one seed)
    interval: tuple[float, float]  # hierarchical bootstrap interval of the seed mean
    per_seed_intervals: list[tuple[float, float]]  # each seed's image-bootstrap interval
    verdict: str  # from ``interval``
    per_seed_verdicts: list[str]
    level: float
    n_boot: int

    def as_dict(self) -> dict:
        return {"values": self.values, "mean": self.mean, "sd": self.sd, "n_seeds": len(self.values),
                "interval": list(self.interval), "per_seed_intervals": [list(i) for i in self.per_seed_intervals],
                "verdict": self.verdict, "per_seed_verdicts": self.per_seed_verdicts,
                "level": self.level, "n_boot": self.n_boot}

    def text(self, digits: int = 3) -> str:
        """``inverted: AUROC 0.308 ± 0.004 over 3 seeds, 95% interval 0.300–0.316``."""
        f = f".{digits}f"
        seeds = len(self.values)
        spread = f" ± {self.sd:{f}} (sd) over {seeds} seeds" if seeds > 1 else " (1 seed)"
        return (f"{self.verdict}: AUROC {self.mean:{f}}{spread}, {self.level:.0%} interval "
                f"{self.interval[0]:{f}}–{self.interval[1]:{f}}")


def seed_summary(pairs: list[tuple], *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> SeedSummary:
    """Summarise AUROCs over training seeds: ``pairs`` is one ``(s_in, s_out)`` per seed,
    all scoring the same test images (see the module docstring for the interval)."""
    _check(n_boot, level)
    if not pairs:
        raise ValueError("seed_summary needs at least one seed's scores")
    prepared = [_Pair(a, b) for a, b in pairs]
    points = [float(p.auroc(np.ones((1, p.n_in)), np.ones((1, p.n_out)))[0]) for p in prepared]
    rng = np.random.default_rng(seed)
    reps = _replicates(prepared, n_boot, rng)  # [n_boot, S]
    per_seed = [_percentile(reps[:, s], level) for s in range(len(prepared))]
    if len(prepared) > 1:
        drawn = resample_counts(rng, n_boot, len(prepared))  # seeds drawn with replacement per replicate
        pooled = _percentile((reps * drawn).sum(axis=1) / len(prepared), level)
    else:
        pooled = per_seed[0]
    values = np.asarray(points)
    return SeedSummary(values=points, mean=float(values.mean()),
                       sd=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                       interval=pooled, per_seed_intervals=per_seed, verdict=verdict(pooled),
                       per_seed_verdicts=[verdict(i) for i in per_seed], level=level, n_boot=n_boot)


def class_mean_summary(scores: list, labels, classes: list[int], *, n_boot: int = N_BOOT, seed: int = 0,
                       level: float = LEVEL) -> dict:
    """AUROCs of a one-class protocol on one labelled test set: ``scores[k]`` (``[N]``, higher =
    more OOD) are model k's scores of the test images, with the images labelled ``classes[k]``
    in-distribution and the rest OOD. Returns each class's AUROC and interval, their mean, sd
    and the interval of the mean, from one stratified bootstrap over the images (module
    docstring)."""
    _check(n_boot, level)
    labels = np.asarray(labels)
    if len(scores) != len(classes) or not classes:
        raise ValueError(f"one score array per class: got {len(scores)} arrays for {len(classes)} classes")
    inside = [labels == c for c in classes]
    pairs = []
    for s, mask, c in zip(scores, inside, classes, strict=True):
        s = _as_scores(s, f"class {c}")
        if len(s) != len(labels):
            raise ValueError(f"class {c}: {len(s)} scores for {len(labels)} test images")
        pairs.append(_Pair(s[mask], s[~mask]))
    points = [float(p.auroc(np.ones((1, p.n_in)), np.ones((1, p.n_out)))[0]) for p in pairs]
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, len(pairs)))
    block = max(1, _BLOCK_ELEMENTS // len(labels))
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        w = np.empty((rows, len(labels)))
        for g in groups:
            w[:, g] = resample_counts(rng, rows, len(g))
        for k, (pair, mask) in enumerate(zip(pairs, inside, strict=True)):
            reps[start:start + rows, k] = pair.auroc(w[:, mask], w[:, ~mask])
    values = np.asarray(points)
    interval = _percentile(reps.mean(axis=1), level)
    return {"classes": [int(c) for c in classes], "auroc": points,
            "intervals": [list(_percentile(reps[:, k], level)) for k in range(len(pairs))],
            "mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "interval": list(interval), "verdict": verdict(interval), "level": level, "n_boot": n_boot}


def mean_sd(values) -> dict:
    """Mean and sample sd (ddof 1; 0 for one value) of finite values, with the values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else math.nan, "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "n": int(len(v)), "values": [float(x) if x is not None else math.nan for x in values]}


def _ranks(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata  # on use: scipy.stats takes ~1 s to import

    return rankdata(a, axis=-1)


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def trend(x, y, *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL, log2_x: bool = True) -> dict:
    """How ``y`` moves with ``x`` over a sweep (points may repeat an x, e.g. seeds):

    - Spearman's ρ (Pearson correlation of midranks) with the percentile interval of the
      bootstrap over the points (pairs resampled with replacement; replicates where x or
      y is constant have no ρ and are left out, their number reported);
    - the least-squares slope of y on log₂ x (``log2_x``) or x, ± its standard error,
      with the two-sided t interval on n − 2 degrees of freedom;
    - ``word``: ``rises`` / ``falls`` when ρ's interval lies above / below 0, else
      ``no detectable trend``.
    """
    from scipy.stats import linregress, t

    _check(n_boot, level)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of one length, got {x.shape} and {y.shape}")
    n = len(x)
    rho = float(_row_pearson(_ranks(x), _ranks(y))) if n > 2 else math.nan
    out = {"n_points": n, "spearman_rho": rho, "spearman_interval": [math.nan, math.nan], "boot_undefined": 0,
           "slope": math.nan, "slope_se": math.nan, "slope_interval": [math.nan, math.nan],
           "slope_x": "log2" if log2_x else "linear", "level": level, "n_boot": n_boot, "word": "no detectable trend"}
    xs = np.log2(x) if log2_x else x
    if n > 2 and len(set(xs)) > 1:
        fit = linregress(xs, y)
        half = float(t.ppf(0.5 + level / 2, n - 2)) * fit.stderr
        out.update(slope=float(fit.slope), slope_se=float(fit.stderr),
                   slope_interval=[float(fit.slope - half), float(fit.slope + half)])
    if n < 3 or not math.isfinite(rho):
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    reps = _row_pearson(_ranks(x[idx]), _ranks(y[idx]))
    finite = reps[np.isfinite(reps)]
    out["boot_undefined"] = int(n_boot - len(finite))
    if len(finite) >= 10:
        out["spearman_interval"] = list(_percentile(finite, level))
    lo, hi = out["spearman_interval"]
    if math.isfinite(lo) and lo > 0:
        out["word"] = "rises"
    elif math.isfinite(hi) and hi < 0:
        out["word"] = "falls"
    return out


def trend_text(tr: dict, what: str = "AUROC", against: str = "parameters") -> str:
    """One sentence: ``AUROC shows no detectable trend with parameters (Spearman ρ = 0.20,
    95% interval −0.45–0.71; slope per doubling +0.004 ± 0.006)``."""
    lo, hi = tr["spearman_interval"]
    per = "per doubling" if tr["slope_x"] == "log2" else "per unit"
    word = {"rises": "rises", "falls": "falls", "no detectable trend": "shows no detectable trend"}[tr["word"]]
    rho = (f"Spearman ρ = {tr['spearman_rho']:.2f}, {tr['level']:.0%} interval {lo:.2f} to {hi:.2f}"
           if math.isfinite(tr["spearman_rho"]) else f"Spearman ρ undefined: {what} or {against} constant")
    slope = (f"; slope {per} {tr['slope']:+.4f} ± {tr['slope_se']:.4f}" if math.isfinite(tr["slope"]) else "")
    return f"{what} {word} with {against} ({rho}, {tr['n_points']} points{slope})"


__all__ = ["LEVEL", "N_BOOT", "WORDS", "SeedSummary", "auroc", "bootstrap_auroc", "class_mean_summary", "mean_sd",
           "resample_counts", "seed_summary", "trend", "trend_text", "verdict"]
