"""Conformal p-values, thresholds and Benjamini–Hochberg: known answers and simulated
guarantees (vectorised; the whole file runs in about a second).

The simulations draw in-distribution scores from a known continuous law (standard
normal), so the false-alarm rate of a threshold t given the calibration draw is known
exactly: P(S > t) = norm.sf(t). That is the quantity the calibration-conditional
guarantee is about.
"""

import math

import numpy as np
import pytest
from scipy import stats

from vaeood.decisions.conformal import (CalibrationError, benjamini_hochberg, conditional_rank, count_at_least,
                                        decide, describe_guarantee, marginal_rank, p_values, threshold)
from vaeood.decisions.conformal_rates import binomial_upper, clopper_pearson, operating_points, realised_fpr_upper


def _batched_p(cal, test):
    """p-values of test[r, j] against cal[r, :] (R repetitions at once)."""
    cal = np.sort(cal, axis=1)
    n = cal.shape[1]
    counts = np.stack([n - np.searchsorted(c, t, side="left") for c, t in zip(cal, test, strict=True)])
    return (1 + counts) / (n + 1)


# ---------------------------------------------------------------- known answers

def test_p_values_by_hand():
    cal = [1.0, 2.0, 3.0, 4.0]
    # counts of calibration scores >= s: 4, 2, 1, 1 (a tie counts against the image), 0
    np.testing.assert_allclose(p_values(cal, [0.0, 2.5, 4.0, 3.5, 5.0]), [5 / 5, 3 / 5, 2 / 5, 2 / 5, 1 / 5])
    np.testing.assert_array_equal(count_at_least([3, 1, 2, 2], [2, 2.1, 0, 9]), [3, 1, 4, 0])


def test_marginal_rank_is_the_ceil_quantile_and_matches_p_le_alpha():
    for n in (19, 20, 99, 100, 999, 1234):
        for alpha in (0.01, 0.05, 0.1, 0.29):
            if n < 1 / alpha - 1:
                continue
            k = marginal_rank(n, alpha)
            assert k == n + 1 - math.floor(round(alpha * (n + 1), 9))
    rng = np.random.default_rng(0)
    cal = rng.integers(0, 30, 200).astype(float)  # many ties
    s = rng.integers(0, 35, 5000).astype(float)
    for alpha in (0.01, 0.05, 0.1, 0.29):
        t = threshold(cal, alpha)
        p = p_values(cal, s)
        np.testing.assert_array_equal(t.flag(s), p <= alpha + 1e-12)
        np.testing.assert_array_equal(t.flag(s), p <= t.p_cutoff + 1e-12)
        np.testing.assert_array_equal(decide(cal, s, alpha).flagged, t.flag(s))


def test_threshold_by_hand():
    cal = np.arange(100.0)[::-1]  # unsorted on purpose
    t = threshold(cal, 0.1)  # floor(0.1 * 101) = 10 -> k = 91 -> c_(91) = 90
    assert (t.rank, t.value, t.max_count) == (91, 90.0, 9)
    assert threshold(cal, 0.01).value == 99.0  # floor(1.01) = 1 -> k = 100
    # conditional: smallest k with P(Binom(100, 0.9) <= k - 1) >= 0.9
    k = conditional_rank(100, 0.1, 0.1)
    assert stats.binom.cdf(k - 1, 100, 0.9) >= 0.9 > stats.binom.cdf(k - 2, 100, 0.9)
    assert k == 95
    assert threshold(cal, 0.1, delta=0.1).value == 94.0


def test_benjamini_hochberg_by_hand():
    # cutoffs r q / m = 0.025, 0.05, 0.075, 0.1: p_(3) = 0.03 <= 0.075, p_(4) = 0.5 > 0.1
    np.testing.assert_array_equal(benjamini_hochberg([0.5, 0.01, 0.03, 0.02], 0.1), [False, True, True, True])
    # step-up: p_(1) = 0.03 > 0.025 but p_(2) = 0.04 <= 0.05 rejects both
    np.testing.assert_array_equal(benjamini_hochberg([0.04, 0.03], 0.05), [True, True])
    np.testing.assert_array_equal(benjamini_hochberg([0.9, 0.06], 0.05), [False, False])
    assert benjamini_hochberg([], 0.1).shape == (0,)


def test_too_little_calibration_data_is_refused_with_the_number_needed():
    # marginal: n >= 1/alpha - 1 = 19 at alpha = 0.05
    threshold(np.arange(19.0), 0.05)
    with pytest.raises(CalibrationError, match="at least 19"):
        threshold(np.arange(18.0), 0.05)
    with pytest.raises(CalibrationError, match="nothing could ever be flagged"):
        decide(np.arange(18.0), [100.0], 0.05, fdr=True)
    # conditional: (1 - alpha)^n <= delta needs n >= 45 at alpha = 0.05, delta = 0.1
    assert threshold(np.arange(45.0), 0.05, delta=0.1).rank == 45
    with pytest.raises(CalibrationError, match="at least 45"):
        threshold(np.arange(44.0), 0.05, delta=0.1)
    with pytest.raises(CalibrationError, match="no calibration scores"):
        p_values([], [1.0])


def test_bad_inputs_are_refused():
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        p_values([1.0, np.nan, 2.0], [1.0])
    with pytest.raises(CalibrationError, match="test scores"):
        p_values([1.0, 2.0], [np.inf])
    with pytest.raises(ValueError, match="alpha must be in"):
        threshold(np.arange(100.0), 1.5)
    with pytest.raises(ValueError, match="choose one guarantee"):
        decide(np.arange(100.0), [1.0], 0.1, delta=0.1, fdr=True)
    with pytest.raises(ValueError, match="p-values must lie"):
        benjamini_hochberg([0.1, 1.2], 0.1)


def test_guarantee_descriptions_say_what_they_assume_and_do_not_promise():
    for g, delta in (("marginal", None), ("conditional", 0.1), ("fdr", None)):
        text = describe_guarantee(g, 0.05, delta, 500)
        assert "exchangeable" in text and "power" in text and "500 calibration" in text
    assert "0.9 over the calibration draw" in describe_guarantee("conditional", 0.05, 0.1, 500)


def test_operating_points_by_hand():
    cal = np.arange(100.0)
    out = operating_points(cal, np.arange(100.0) + 0.5, {"far": np.full(50, 1e3), "near": np.arange(100.0) + 0.5},
                           alphas=(0.001, 0.01, 0.1))
    a = out["alphas"]
    assert "at least 999" in a["0.001"]["error"]
    assert (a["0.01"]["fpr"], a["0.01"]["false_alarms"]) == (0.01, 1)  # only 99.5 > c_(100) = 99
    assert a["0.1"]["fpr"] == 0.1 and a["0.1"]["threshold"] == 90.0
    assert a["0.1"]["tpr"]["far"]["tpr"] == 1.0 and a["0.1"]["tpr"]["near"]["tpr"] == 0.1
    lo, hi = a["0.1"]["fpr_ci95"]
    assert lo < 0.1 < hi
    assert out["guarantee"] == "marginal" and out["n_calibration"] == 100


def test_binomial_helpers():
    assert binomial_upper(0.05, 500) == stats.binom.ppf(0.95, 500, 0.05) / 500
    assert 0.05 < binomial_upper(0.05, 500) < 0.075
    lo, hi = clopper_pearson(0, 20)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 20))


# ---------------------------------------------------------------- simulated guarantees

def test_p_values_of_exchangeable_draws_are_uniform_and_of_outliers_are_not():
    """KS test of 4000 p-values, each from its own calibration draw (n = 999, so the
    discreteness 1/(n + 1) = 0.001 is far below the KS critical value 0.021)."""
    rng = np.random.default_rng(1)
    reps, n = 4000, 999
    cal = rng.standard_normal((reps, n))
    p_in = _batched_p(cal, rng.standard_normal((reps, 1)))[:, 0]
    assert stats.kstest(p_in, "uniform").pvalue > 0.001
    # exactly uniform on {1, ..., n + 1}/(n + 1): mean 1/2 + 1/(2(n + 1))
    assert abs(p_in.mean() - (0.5 + 0.5 / (n + 1))) < 4 * math.sqrt(1 / 12 / reps)
    p_out = _batched_p(cal, rng.standard_normal((reps, 1)) + 0.5)[:, 0]
    assert stats.kstest(p_out, "uniform").pvalue < 1e-6  # the check can fail


def test_p_values_with_ties_stay_valid():
    """Discrete scores (5 levels): P(p ≤ u) ≤ u still holds (ties count against the image)."""
    rng = np.random.default_rng(2)
    reps, n = 20000, 49
    cal = rng.integers(0, 5, (reps, n)).astype(float)
    p = _batched_p(cal, rng.integers(0, 5, (reps, 1)).astype(float))[:, 0]
    for u in (0.02, 0.1, 0.2, 0.5):
        assert (p <= u).mean() <= u + 3 * math.sqrt(u * (1 - u) / reps)


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_marginal_fpr_over_200_random_splits(alpha):
    """200 random calibration/test splits of one pool of 2,000 in-distribution scores:
    the mean realised FPR is ≤ α within Monte-Carlo error, and equals the exact
    ⌊α(n + 1)⌋/(n + 1) (n = 99 here, so an off-by-one rank would be 6 standard errors off)."""
    rng = np.random.default_rng(3)
    pool = rng.standard_normal(2000)
    n, splits = 99, 200
    perms = np.argsort(rng.random((splits, len(pool))), axis=1)
    cal, test = pool[perms[:, :n]], pool[perms[:, n:]]
    fpr = np.array([threshold(c, alpha).flag(t).mean() for c, t in zip(cal, test, strict=True)])
    se = fpr.std(ddof=1) / math.sqrt(splits)
    assert fpr.mean() <= alpha + 3 * se
    assert abs(fpr.mean() - math.floor(round(alpha * (n + 1), 9)) / (n + 1)) < 3 * se
    # the same through the p-values
    flagged_p = np.array([(p_values(c, t) <= alpha).mean() for c, t in zip(cal, test, strict=True)])
    np.testing.assert_allclose(flagged_p, fpr)


@pytest.mark.parametrize("n,alpha,delta", [(200, 0.05, 0.1), (500, 0.02, 0.05), (60, 0.1, 0.2)])
def test_conditional_threshold_keeps_fpr_below_alpha_in_1_minus_delta_of_splits(n, alpha, delta):
    """200 calibration draws: the exact FPR of each threshold (normal scores) is ≤ α in
    ≥ 1 − δ of them (within Monte-Carlo error); over 20,000 draws the fraction equals
    the binomial probability the rank was chosen for, and one rank lower falls below
    1 − δ (the bound is tight). The marginal threshold does not give this guarantee."""
    rng = np.random.default_rng(4)
    cal = rng.standard_normal((200, n))
    fpr = np.array([stats.norm.sf(threshold(c, alpha, delta).value) for c in cal])
    covered = (fpr <= alpha).mean()
    assert covered >= 1 - delta - 3 * math.sqrt(delta * (1 - delta) / 200)

    reps = 20000
    sorted_cal = np.sort(rng.standard_normal((reps, n)), axis=1)
    k = conditional_rank(n, alpha, delta)
    exact = stats.binom.cdf(k - 1, n, 1 - alpha)
    frac = (stats.norm.sf(sorted_cal[:, k - 1]) <= alpha).mean()
    assert exact >= 1 - delta > stats.binom.cdf(k - 2, n, 1 - alpha)
    assert abs(frac - exact) < 4 * math.sqrt(exact * (1 - exact) / reps)
    marginal = (stats.norm.sf(sorted_cal[:, marginal_rank(n, alpha) - 1]) <= alpha).mean()
    assert marginal < 1 - delta


def test_benjamini_hochberg_controls_fdr_on_a_mixture_with_known_truth():
    """500 repetitions of 200 test images (10% OOD, shifted by 3 sd) sharing a calibration
    set of 500: the mean false-discovery proportion is ≤ q within Monte-Carlo error,
    BH finds most OOD images, and flagging p ≤ q per image (no BH) exceeds the FDR."""
    rng = np.random.default_rng(5)
    reps, n, m, m1, q = 500, 500, 200, 20, 0.1
    cal = rng.standard_normal((reps, n))
    test = rng.standard_normal((reps, m))
    test[:, :m1] += 3.0
    truth = np.zeros(m, dtype=bool)
    truth[:m1] = True
    p = _batched_p(cal, test)
    fdp, power, fdp_naive = [], [], []
    for row in p:
        flagged = benjamini_hochberg(row, q)
        fdp.append((flagged & ~truth).sum() / max(flagged.sum(), 1))
        power.append((flagged & truth).sum() / m1)
        naive = row <= q
        fdp_naive.append((naive & ~truth).sum() / max(naive.sum(), 1))
    fdp = np.array(fdp)
    assert fdp.mean() <= q + 3 * fdp.std(ddof=1) / math.sqrt(reps)
    assert np.mean(power) > 0.5
    assert np.mean(fdp_naive) > q  # without BH the proportion of false flags is not controlled
    # decide(fdr=True) is the same procedure
    d = decide(cal[0], test[0], q, fdr=True)
    np.testing.assert_array_equal(d.flagged, benjamini_hochberg(p[0], q))
    assert d.guarantee == "fdr" and d.threshold is None


@pytest.mark.parametrize("delta", [None, 0.1])
def test_realised_fpr_over_calibration_and_test_draws_is_beta_binomial(delta):
    """4,000 draws of 200 calibration and 500 test scores: the realised FPR exceeds the
    Beta-Binomial 95% quantile in ≤ 5% of draws (within Monte-Carlo error), while the
    plain binomial bound, which ignores the calibration draw, is exceeded far more often."""
    rng = np.random.default_rng(6)
    reps, n, m, alpha = 4000, 200, 500, 0.1
    cal = np.sort(rng.standard_normal((reps, n)), axis=1)
    t = threshold(cal[0], alpha, delta)
    fpr = (rng.standard_normal((reps, m)) > cal[:, t.rank - 1][:, None]).mean(axis=1)
    se = math.sqrt(0.05 * 0.95 / reps)
    assert (fpr > realised_fpr_upper(t, m)).mean() <= 0.05 + 3 * se
    assert (fpr > realised_fpr_upper(t, m, level=0.5)).mean() > 0.3  # not trivially wide
    assert abs(fpr.mean() - (n + 1 - t.rank) / (n + 1)) < 4 * fpr.std() / math.sqrt(reps)
    if delta is None:
        assert (fpr > binomial_upper(alpha, m)).mean() > 0.1
