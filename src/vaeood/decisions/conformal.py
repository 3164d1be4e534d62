"""From OOD scores to decisions with a guaranteed false-alarm rate: conformal p-values,
thresholds and the Benjamini–Hochberg procedure (pure NumPy/SciPy, on score arrays).

A detector gives each image a score, higher = more out-of-distribution. Scores alone
do not say where to draw the line. Conformal outlier testing (Vovk, Gammerman & Shafer,
*Algorithmic Learning in a Random World*, 2005; Bates, Candès, Lei, Romano & Sesia,
"Testing for outliers with conformal p-values", Ann. Statist. 51(1), 2023) turns any
score into a p-value with a finite-sample guarantee, using ``n`` *calibration* scores of
in-distribution images:

    p(s) = (1 + #{i : c_i ≥ s}) / (n + 1).

**What the guarantees assume.**

1. *Exchangeability*: the calibration images and an in-distribution test image are
   exchangeable (e.g. drawn i.i.d. from the same distribution). The calibration-
   conditional guarantee and Benjamini–Hochberg assume i.i.d. draws.
2. *A score function fixed before calibration*: the model and the detector were
   trained/fitted on data disjoint from the calibration images, and nothing about
   the score was chosen by looking at them (a detector fitted on its own calibration
   images gives too-low calibration scores and too many false alarms).

Under these, an in-distribution test image has P(p ≤ u) ≤ u for every u in [0, 1]
(Vovk et al. 2005, Prop. 2.4; exactly ⌊u(n+1)⌋/(n+1) when scores have no ties).

**What they do not promise.**

- *Power*: nothing bounds the rate of *missed* OOD images. A detector whose scores
  rank OOD images as more typical (the likelihood of a VAE trained on Fashion-MNIST
  and shown MNIST) keeps its false-alarm rate and flags almost nothing.
- *Per-image (conditional) coverage*: the rate holds on average over in-distribution
  images, not for every kind of image (one class may be flagged far more often
  than α and another never).
- *Behaviour under shift of the in-distribution* (new camera, new preprocessing,
  a padded/resized input): the in-distribution test images are then no longer
  exchangeable with the calibration images, and the false-alarm rate can be
  anything. Calibrate again on images of the new conditions.
- Where the test set is a batch, the marginal rate is an expectation: the realised
  fraction of false alarms in one batch scatters around it (binomially, and
  positively correlated across the batch because all share the calibration set).

The three decisions this module offers (:func:`threshold`, :func:`decide`):

- ``"marginal"`` — flag when p ≤ α; P(flag an in-distribution image) ≤ α, in
  expectation over the calibration draw and the test image.
- ``"conditional"`` — calibration-conditional (Vovk 2012; Bates et al. 2023, §3):
  with probability ≥ 1 − δ over the calibration draw, the false-alarm rate of the
  threshold obtained, P(flag | calibration set), is ≤ α. Exact order-statistic bound,
  see :func:`conditional_rank`.
- ``"fdr"`` — Benjamini–Hochberg at level q = α on the test images' p-values: the
  expected fraction of in-distribution images among the flagged ones is ≤ q
  (conformal p-values are PRDS, Bates et al. 2023, Thm. 2.4).

How the thresholds do on test scores (realised false-alarm and detection rates, for
reports): :mod:`vaeood.decisions.conformal_rates`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

GUARANTEES = ("marginal", "conditional", "fdr")

# α·(n + 1) is compared with integers; a binary float such as 0.29·100 = 28.999999999999996
# must count as 29 (the user meant 0.29), so counts are floored with this relative slack.
_EPS = 1e-12


class CalibrationError(ValueError):
    """The calibration scores cannot support the requested decision (too few of them
    for α/δ, non-finite values, or a level outside (0, 1))."""


def check_scores(values, what: str) -> np.ndarray:
    """``values`` as a float64 ``[N]`` array; :class:`CalibrationError` naming ``what`` when
    any is NaN or infinite."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a 1-D array of scores, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise CalibrationError(f"{what}: {int(bad.sum())} of {arr.size} scores are NaN or infinite "
                               f"(first at index {int(np.argmax(bad))}); a score must be a finite number")
    return arr


def _check_level(value: float, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CalibrationError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not 0.0 < value < 1.0:  # NaN fails too
        raise CalibrationError(f"{name} must be in (0, 1), got {value}")
    return value


def count_at_least(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """#{i : c_i ≥ s} for each s in ``scores`` (int64 ``[M]``), in O((n + M) log n)."""
    cal = np.sort(check_scores(calibration, "calibration scores"))
    s = check_scores(scores, "test scores")
    return (len(cal) - np.searchsorted(cal, s, side="left")).astype(np.int64)


def p_values(calibration, scores) -> np.ndarray:
    """Conformal p-values p = (1 + #{i : c_i ≥ s}) / (n + 1), one per test score.

    Higher score = more OOD, so a small p-value means "few in-distribution calibration
    images score as high": evidence against being in distribution. Valid (super-uniform,
    P(p ≤ u) ≤ u) for an in-distribution test image exchangeable with the calibration
    images (Vovk et al. 2005; Bates et al. 2023, eq. 2); ties count against the test
    image (≥), which keeps validity without randomisation.
    """
    cal = check_scores(calibration, "calibration scores")
    if len(cal) == 0:
        raise CalibrationError("no calibration scores: conformal p-values need in-distribution calibration images")
    return (1.0 + count_at_least(cal, scores)) / (len(cal) + 1.0)


def marginal_rank(n: int, alpha: float) -> int:
    """Rank k (1-based) of the calibration order statistic c_(k) whose strict exceedance
    is the marginal decision: flag iff s > c_(k) ⟺ p ≤ α, with
    k = ⌈(1 − α)(n + 1)⌉ = n + 1 − ⌊α(n + 1)⌋.

    Then P(flag) = ⌊α(n + 1)⌋ / (n + 1) ≤ α for continuous in-distribution scores.
    Raises :class:`CalibrationError` when ⌊α(n + 1)⌋ = 0, i.e. n < 1/α − 1: no
    p-value can then be ≤ α and nothing could ever be flagged.
    """
    alpha = _check_level(alpha, "alpha")
    flaggable = math.floor(alpha * (n + 1) * (1 + _EPS))
    if flaggable < 1:
        need = math.ceil(1 / alpha - 1 - _EPS)
        raise CalibrationError(
            f"{n} calibration scores are too few for alpha = {alpha:g}: the smallest conformal p-value is "
            f"1/(n+1) = {1 / (n + 1):.4g} > alpha, so nothing could ever be flagged; "
            f"at least {need} are needed (n ≥ 1/alpha − 1)")
    return n + 1 - flaggable


def conditional_rank(n: int, alpha: float, delta: float) -> int:
    """Rank k (1-based) of the calibration-conditional threshold c_(k).

    For i.i.d. continuous scores with distribution F, F(c_(k)) ~ Beta(k, n + 1 − k)
    (the k-th order statistic of n uniforms), and the false-alarm rate of the rule
    "flag iff s > c_(k)", conditional on the calibration set, is 1 − F(c_(k)). So

        P_cal(FPR ≤ α) = P(Beta(k, n + 1 − k) ≥ 1 − α) = P(Binomial(n, 1 − α) ≤ k − 1)

    (at most k − 1 of the n uniforms fall below 1 − α). k is the smallest rank with
    this probability ≥ 1 − δ: the exact order-statistic bound (Vovk 2012, "Conditional
    validity of inductive conformal predictors"; Bates et al. 2023, §3), tight for
    continuous scores (the probability is attained, up to the integer step in k),
    whereas the DKW/Simes adjustments of Bates et al. are conservative. With ties
    (discrete scores) the rule flags no more often, so the bound still holds.
    The marginal rank is the δ-free special case: E[1 − F(c_(k))] = (n + 1 − k)/(n + 1).

    Raises :class:`CalibrationError` when no k ≤ n works: that needs
    P(all n uniforms < 1 − α) = (1 − α)^n ≤ δ, i.e. n ≥ log δ / log(1 − α)
    (45 for α = 0.05, δ = 0.1).
    """
    alpha = _check_level(alpha, "alpha")
    delta = _check_level(delta, "delta")
    ranks = np.arange(1, n + 1)
    ok = stats.binom.cdf(ranks - 1, n, 1.0 - alpha) >= 1.0 - delta - 1e-12
    if n < 1 or not ok.any():
        need = math.ceil(math.log(delta) / math.log1p(-alpha))
        raise CalibrationError(
            f"{n} calibration scores are too few for a calibration-conditional threshold at alpha = {alpha:g}, "
            f"delta = {delta:g}: even the largest one exceeds the (1 − alpha) quantile with probability "
            f"{(1 - alpha) ** max(n, 0):.3g} > delta; at least {need} are needed "
            f"(n ≥ log(delta) / log(1 − alpha))")
    return int(ranks[np.argmax(ok)])


@dataclass(frozen=True)
class Threshold:
    """A decision rule "flag iff score > value", with the guarantee it carries.

    Attributes:
        value: the calibration order statistic c_(rank); strictly higher scores are flagged.
        rank: k, 1-based, among the n sorted calibration scores.
        n: number of calibration scores.
        alpha: the false-alarm rate asked for.
        delta: for ``"conditional"``, the allowed probability that the calibration draw
            gives a threshold whose false-alarm rate exceeds alpha; else None.
        guarantee: ``"marginal"`` or ``"conditional"``.
        max_count: the largest #{c_i ≥ s} that is flagged (n − rank); equivalently
            flag iff p ≤ (1 + max_count)/(n + 1).
    """

    value: float
    rank: int
    n: int
    alpha: float
    delta: float | None
    guarantee: str

    @property
    def max_count(self) -> int:
        return self.n - self.rank

    @property
    def p_cutoff(self) -> float:
        """Flag iff p ≤ this (the same rule written on the conformal p-values)."""
        return (1 + self.max_count) / (self.n + 1)

    def flag(self, scores) -> np.ndarray:
        return check_scores(scores, "test scores") > self.value

    def describe(self) -> str:
        return describe_guarantee(self.guarantee, self.alpha, self.delta, self.n)

    def to_dict(self) -> dict:
        return {**asdict(self), "p_cutoff": self.p_cutoff}


def threshold(calibration, alpha: float, delta: float | None = None) -> Threshold:
    """The score threshold at false-alarm rate ``alpha``.

    ``delta=None``: marginal guarantee (flag iff p ≤ α; P(false alarm) ≤ α in
    expectation over calibration and test draw), k = ⌈(1 − α)(n + 1)⌉.
    ``delta`` given: calibration-conditional guarantee (with probability ≥ 1 − δ over
    the calibration draw, P(false alarm | calibration) ≤ α), k from
    :func:`conditional_rank`. Both flag iff score > c_(k).
    """
    cal = np.sort(check_scores(calibration, "calibration scores"))
    n = len(cal)
    if delta is None:
        k, guarantee = marginal_rank(n, alpha), "marginal"
    else:
        k, guarantee = conditional_rank(n, alpha, delta), "conditional"
        delta = float(delta)
    return Threshold(value=float(cal[k - 1]), rank=k, n=n, alpha=float(alpha), delta=delta, guarantee=guarantee)


def benjamini_hochberg(p, q: float) -> np.ndarray:
    """Benjamini & Hochberg (1995) at level q: reject the hypotheses with the R smallest
    p-values, R = max{r : p_(r) ≤ r q / m} (0 if none). Returns a boolean mask.

    With conformal p-values of test images that share one calibration set, the
    in-distribution ("null") p-values are PRDS, so E[false flags / max(flags, 1)]
    ≤ q · m₀/m ≤ q (Bates et al. 2023, Thm. 2.4). It promises nothing about power.
    """
    q = _check_level(q, "q")
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p-values: expected a 1-D array, got shape {p.shape}")
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError("p-values must lie in [0, 1] and not be NaN")
    m = len(p)
    out = np.zeros(m, dtype=bool)
    if m == 0:
        return out
    order = np.argsort(p, kind="stable")
    below = p[order] <= q * np.arange(1, m + 1) / m * (1 + _EPS)
    if below.any():
        r = int(np.nonzero(below)[0][-1]) + 1
        out[order[:r]] = True
    return out


def describe_guarantee(guarantee: str, alpha: float, delta: float | None, n: int) -> str:
    """One paragraph, for summaries and reports, of what was guaranteed and under what."""
    assumes = (f"Assumes the {n} calibration images and the in-distribution test images are exchangeable "
               "(i.i.d. from the same distribution, same preprocessing) and the model and detector were "
               "fixed without seeing the calibration images. Promises nothing about how many OOD images "
               "are caught (power), nor per class or per image, nor under a shift of the in-distribution.")
    if guarantee == "marginal":
        what = (f"marginal: an in-distribution image is flagged with probability ≤ {alpha:g} "
                "(on average over calibration draws; flag iff conformal p ≤ alpha).")
    elif guarantee == "conditional":
        what = (f"calibration-conditional: with probability ≥ {1 - delta:g} over the calibration draw, "
                f"the threshold's false-alarm rate is ≤ {alpha:g} (exact beta/binomial order-statistic bound).")
    elif guarantee == "fdr":
        what = (f"false-discovery rate: Benjamini–Hochberg at q = {alpha:g} on the conformal p-values; "
                f"on average ≤ {alpha:g} of the flagged images are in-distribution.")
    else:
        raise ValueError(f"unknown guarantee {guarantee!r}; known: {', '.join(GUARANTEES)}")
    return f"Guarantee {what} {assumes}"


@dataclass(frozen=True)
class Decisions:
    """Per-image conformal decisions on a test set.

    Attributes:
        scores, p_values, flagged: ``[M]`` arrays (higher score = more OOD).
        guarantee: ``"marginal"``, ``"conditional"`` or ``"fdr"``.
        alpha, delta: the levels asked for (delta only for ``"conditional"``).
        n_calibration: number of calibration scores.
        threshold: the score threshold (flag iff score > it) for marginal/conditional;
            None for FDR, whose cutoff depends on the whole batch.
    """

    scores: np.ndarray
    p_values: np.ndarray
    flagged: np.ndarray
    guarantee: str
    alpha: float
    delta: float | None
    n_calibration: int
    threshold: float | None

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def describe(self) -> str:
        return describe_guarantee(self.guarantee, self.alpha, self.delta, self.n_calibration)


def decide(calibration, scores, alpha: float, *, delta: float | None = None, fdr: bool = False) -> Decisions:
    """Conformal p-values of ``scores`` and which images to flag at level ``alpha``.

    ``fdr=False, delta=None``: marginal false-alarm rate ≤ alpha (flag iff p ≤ alpha).
    ``delta``: calibration-conditional false-alarm rate ≤ alpha with prob. ≥ 1 − delta.
    ``fdr=True``: Benjamini–Hochberg at q = alpha over the whole batch of ``scores``.
    See the module docstring for what these assume and do not promise.
    """
    if fdr and delta is not None:
        raise ValueError("choose one guarantee: fdr=True (Benjamini–Hochberg) or delta (calibration-conditional), "
                         "not both")
    cal = check_scores(calibration, "calibration scores")
    s = check_scores(scores, "test scores")
    p = p_values(cal, s)
    if fdr:
        alpha = _check_level(alpha, "alpha")
        # BH's cutoffs r·alpha/m are all ≤ alpha: when no p-value can be ≤ alpha (n < 1/alpha − 1)
        # it can never flag anything, so it is refused the same way as the marginal rule
        marginal_rank(len(cal), alpha)
        flagged = benjamini_hochberg(p, alpha)
        return Decisions(s, p, flagged, "fdr", float(alpha), None, len(cal), None)
    t = threshold(cal, alpha, delta)
    return Decisions(s, p, t.flag(s), t.guarantee, t.alpha, t.delta, t.n, t.value)
