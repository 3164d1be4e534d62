"""How conformal thresholds do on test scores, for reports: the realised false-alarm rate
with its exact interval, the bounds within which it may scatter by chance, and the
detection rate on OOD sets (:func:`operating_points`).

Binomial and Beta-Binomial bounds of a realised fraction (:func:`binomial_upper`,
:func:`realised_fpr_upper`) and the exact Clopper–Pearson interval of a proportion
(Clopper & Pearson, Biometrika 26(4), 1934) read the rates of
:mod:`vaeood.decisions.conformal`'s thresholds.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .conformal import CalibrationError, Threshold, check_scores, threshold


def binomial_upper(rate: float, n: int, level: float = 0.95) -> float:
    """The ``level`` quantile of Binomial(n, rate) / n: how high a realised fraction of
    n independent events of probability ``rate`` may go by chance (α + this bound's
    excess is what "realised FPR ≤ α within binomial error" means)."""
    if n < 1:
        raise ValueError("binomial_upper needs n ≥ 1")
    return float(stats.binom.ppf(level, n, rate)) / n


def realised_fpr_upper(t: Threshold, m: int, level: float = 0.95) -> float:
    """The ``level`` quantile of the realised false-alarm fraction of threshold ``t`` on
    ``m`` in-distribution test images, over the calibration draw *and* the test draw.

    Given the calibration set, the false-alarm rate of "flag iff s > c_(k)" is
    1 − F(c_(k)) ~ Beta(n + 1 − k, k) for i.i.d. continuous scores, and the number of
    false alarms among m test images is Binomial(m, that rate): so the count is
    Beta-Binomial(m, n + 1 − k, k) (exact; with ties it is stochastically smaller).
    This is wider than :func:`binomial_upper` (which ignores that one calibration set
    gives one threshold, whose own rate scatters around α with sd ≈ √(α(1 − α)/n)).
    """
    if m < 1:
        raise ValueError("realised_fpr_upper needs m ≥ 1")
    return float(stats.betabinom.ppf(level, m, t.n + 1 - t.rank, t.rank)) / m


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided confidence interval of a proportion k/n."""
    if n < 1:
        return (float("nan"), float("nan"))
    a = 1 - level
    lo = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def operating_points(calibration, in_scores, ood_scores: dict[str, np.ndarray] | None = None, *,
                     alphas=(0.01, 0.05, 0.1), delta: float | None = None) -> dict:
    """Realised false-alarm and detection rates of conformal thresholds, for reports.

    For each α in ``alphas``: the threshold from ``calibration`` (marginal, or
    calibration-conditional when ``delta`` is given), the realised FPR on the
    in-distribution test scores ``in_scores`` with its exact 95% interval, the
    binomial 95% upper bound for a true rate of α (``fpr_binomial_upper95``) and the
    95% quantile of the realised FPR over calibration and test draws
    (``fpr_upper95``, :func:`realised_fpr_upper`), and the TPR on each OOD set of
    ``ood_scores`` (name → scores). An α that the number of calibration scores cannot
    support gives ``{"error": message}`` instead of numbers.

    Returns ``{"n_calibration", "guarantee", "delta", "alphas": {str(α): {...}}}``.
    """
    cal = check_scores(calibration, "calibration scores")
    s_in = check_scores(in_scores, "in-distribution test scores")
    oods = {name: check_scores(v, f"OOD scores {name}") for name, v in (ood_scores or {}).items()}
    out = {"n_calibration": len(cal), "n_in": len(s_in), "guarantee": "marginal" if delta is None else "conditional",
           "delta": delta, "alphas": {}}
    for alpha in alphas:
        try:
            t = threshold(cal, alpha, delta)
        except CalibrationError as err:
            out["alphas"][f"{alpha:g}"] = {"alpha": float(alpha), "error": str(err)}
            continue
        false = int(t.flag(s_in).sum())
        entry = {"alpha": float(alpha), "threshold": t.value, "rank": t.rank,
                 "fpr": false / len(s_in) if len(s_in) else float("nan"), "false_alarms": false,
                 "fpr_ci95": list(clopper_pearson(false, len(s_in))),
                 "fpr_binomial_upper95": binomial_upper(alpha, len(s_in)) if len(s_in) else float("nan"),
                 "fpr_upper95": realised_fpr_upper(t, len(s_in)) if len(s_in) else float("nan"),
                 "tpr": {}}
        for name, s in oods.items():
            hits = int(t.flag(s).sum())
            entry["tpr"][name] = {"tpr": hits / len(s) if len(s) else float("nan"), "detected": hits, "n": len(s),
                                  "tpr_ci95": list(clopper_pearson(hits, len(s)))}
        out["alphas"][f"{alpha:g}"] = entry
    return out
