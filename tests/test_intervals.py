"""The interval machinery (``vaeood.evaluation.intervals``) on hand-made scores with known answers."""

import math

import numpy as np
import pytest
from scipy.stats import norm, spearmanr
from sklearn.metrics import roc_auc_score

from vaeood.evaluation.intervals import (_Pair, auroc, bootstrap_auroc, class_mean_summary, seed_summary, trend,
                                         trend_text, verdict)


def sk_auroc(a, b):
    return roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b])


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 20, 300).astype(float), rng.integers(3, 25, 200).astype(float)
    assert auroc(a, b) == pytest.approx(sk_auroc(a, b), abs=1e-12)


def test_weighted_auroc_is_the_auroc_of_the_resample():
    """A replicate's weights (multiplicities) give exactly sklearn's AUROC of the repeated data."""
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 10, 50).astype(float), rng.integers(2, 12, 40).astype(float)
    u, v = rng.integers(0, 4, (3, 50)).astype(float), rng.integers(0, 4, (3, 40)).astype(float)
    got = _Pair(a, b).auroc(u, v)
    for r in range(3):
        want = sk_auroc(np.repeat(a, u[r].astype(int)), np.repeat(b, v[r].astype(int)))
        assert got[r] == pytest.approx(want, abs=1e-12)


def test_perfect_separation_gives_an_interval_at_one():
    a, b = np.arange(100.0), np.arange(100.0) + 1000
    assert bootstrap_auroc(a, b, n_boot=200) == (1.0, 1.0)
    assert verdict(bootstrap_auroc(a, b, n_boot=200)) == "separates"
    assert bootstrap_auroc(b, a, n_boot=200) == (0.0, 0.0)
    assert verdict(bootstrap_auroc(b, a, n_boot=200)) == "inverted"


def test_identical_distributions_cover_one_half():
    rng = np.random.default_rng(2)
    same = rng.normal(size=500)
    lo, hi = bootstrap_auroc(same, same.copy(), n_boot=500)
    assert lo < 0.5 < hi and verdict((lo, hi)) == "indistinguishable"
    lo, hi = bootstrap_auroc(rng.normal(size=2000), rng.normal(size=2000), n_boot=500, seed=3)
    assert lo < 0.5 < hi and hi - lo < 0.08


def test_verdict_words_from_the_interval():
    assert verdict((0.51, 0.6)) == "separates"
    assert verdict((0.4, 0.49)) == "inverted"
    assert verdict((0.5, 0.6)) == "indistinguishable"  # touching 0.5 covers it
    assert verdict((0.4, 0.5)) == "indistinguishable"
    assert verdict((0.1, 0.9)) == "indistinguishable"
    assert verdict((math.nan, math.nan)) == "indistinguishable"


def test_bootstrap_spread_matches_delong_and_covers_the_true_auroc():
    """Normal scores shifted by d: true AUROC Φ(d/√2). The bootstrap interval's width
    matches DeLong's standard error, and it covers the true value about 95% of the time."""
    d = 0.8
    true = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=3000), rng.normal(d, size=2000)
    # DeLong et al. (1988): structural components of the Mann-Whitney statistic
    v10 = (b[:, None] > a[None, :]).mean(axis=1)
    v01 = (b[:, None] > a[None, :]).mean(axis=0)
    se = math.sqrt(v10.var(ddof=1) / len(b) + v01.var(ddof=1) / len(a))
    lo, hi = bootstrap_auroc(a, b, n_boot=2000)
    assert (hi - lo) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.08)
    covered = 0
    for rep in range(200):
        a, b = rng.normal(size=120), rng.normal(d, size=80)
        lo, hi = bootstrap_auroc(a, b, n_boot=400, seed=rep)
        covered += lo <= true <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_seed_summary_of_identical_seeds_is_the_image_bootstrap():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=400), rng.normal(0.3, size=300)
    s = seed_summary([(a, b)] * 3, n_boot=300, seed=7)
    assert s.values == [pytest.approx(sk_auroc(a, b))] * 3 and s.sd == 0.0
    assert s.interval == bootstrap_auroc(a, b, n_boot=300, seed=7)
    assert s.per_seed_intervals == [s.interval] * 3
    assert s.verdict == verdict(s.interval) == "separates"
    assert "separates: AUROC" in s.text() and "over 3 seeds" in s.text()


def test_seed_spread_widens_the_interval():
    """Two seeds separate perfectly, one inverts perfectly: each seed alone is decisive,
    the seed-level resampling is not."""
    a, b = np.arange(50.0), np.arange(50.0) + 100
    s = seed_summary([(a, b), (b, a), (a, b)], n_boot=500)
    assert s.values == [1.0, 0.0, 1.0] and s.mean == pytest.approx(2 / 3)
    assert s.sd == pytest.approx(np.std([1, 0, 1], ddof=1))
    assert s.per_seed_verdicts == ["separates", "inverted", "separates"]
    assert s.interval == (0.0, 1.0) and s.verdict == "indistinguishable"


def test_seed_summary_refuses_different_test_sets():
    with pytest.raises(ValueError, match="same test images"):
        seed_summary([(np.zeros(5), np.ones(5)), (np.zeros(6), np.ones(5))], n_boot=20)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_auroc(np.array([0.0, np.nan]), np.ones(3), n_boot=20)


def test_trend_known_spearman_values():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    tr = trend(x, y, n_boot=500)
    assert tr["spearman_rho"] == pytest.approx(0.8) == pytest.approx(spearmanr(x, y).statistic)
    # y rises with x: ρ = 1 in every replicate where x varies; the slope on log2 x is exact
    x = [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]
    y = [0.1 + 0.05 * math.log2(v) for v in x]
    tr = trend(x, y, n_boot=500)
    assert tr["spearman_rho"] == pytest.approx(1.0) and tr["spearman_interval"] == [1.0, 1.0]
    assert tr["word"] == "rises" and tr["slope"] == pytest.approx(0.05) and tr["slope_se"] == pytest.approx(0, abs=1e-8)
    tr = trend(x, [-v for v in y], n_boot=500)
    assert tr["spearman_rho"] == pytest.approx(-1.0) and tr["word"] == "falls"
    tr = trend([1, 2, 3, 4, 5, 6], [1, -1, 1, -1, 1, -1], n_boot=500)
    lo, hi = tr["spearman_interval"]
    assert lo < 0 < hi and tr["word"] == "no detectable trend"
    assert "no detectable trend" in trend_text(tr)


def test_trend_slope_interval_is_linregress():
    from scipy.stats import linregress, t

    rng = np.random.default_rng(6)
    x = np.repeat([1.0, 2.0, 4.0, 8.0], 3)
    y = 0.3 + 0.01 * np.log2(x) + rng.normal(0, 0.01, len(x))
    tr = trend(x, y, n_boot=200)
    fit = linregress(np.log2(x), y)
    half = t.ppf(0.975, len(x) - 2) * fit.stderr
    assert tr["slope"] == pytest.approx(fit.slope) and tr["slope_se"] == pytest.approx(fit.stderr)
    assert tr["slope_interval"] == pytest.approx([fit.slope - half, fit.slope + half])


def test_trend_of_a_constant_is_undefined_not_a_trend():
    tr = trend([1, 2, 4, 1, 2, 4], [0.0] * 6, n_boot=100)
    assert math.isnan(tr["spearman_rho"]) and tr["word"] == "no detectable trend"
    assert tr["slope"] == 0.0 and "ρ undefined" in trend_text(tr)


def test_experiments_pass_the_detectors_asked_for_to_evaluate(monkeypatch):
    """``nll`` unless asked, else the detectors given (as a tuple), under ``detectors=``."""
    from vaeood.experiments import common

    calls = []

    def evaluate(run_dir, in_dataset, ood_datasets, *, detectors=("nll",), **kwargs):
        calls.append((ood_datasets, detectors))
        return {}

    monkeypatch.setattr(common, "evaluate", evaluate)
    common.run_evaluate("run", "fashion_mnist", ("mnist",))
    common.run_evaluate("run", "fashion_mnist", ["mnist"], detectors=["nll", "other"])
    assert calls == [(["mnist"], ("nll",)), (["mnist"], ("nll", "other"))]


def test_spearman_matches_scipy_with_ties_and_of_every_resample():
    """A replicate's multiplicities give exactly scipy's ρ of the repeated data (midranks)."""
    from vaeood.evaluation.rank_correlation import _Midranks, _weighted_pearson, spearman

    rng = np.random.default_rng(20)
    x = rng.integers(0, 15, 200).astype(float)
    y = 0.5 * x + rng.integers(0, 10, 200)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    w = rng.integers(0, 4, (4, 200)).astype(float)
    got = _weighted_pearson(_Midranks(x).ranks(w), _Midranks(y).ranks(w), w)
    for r in range(4):
        want = spearmanr(np.repeat(x, w[r].astype(int)), np.repeat(y, w[r].astype(int)))[0]
        assert got[r] == pytest.approx(want, abs=1e-12)
    assert math.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_seed_spearman_known_answers():
    from vaeood.evaluation.rank_correlation import correlation_word, seed_spearman

    x = np.arange(100.0)
    exact = seed_spearman(x, [-x, -2 * x - 1], n_boot=200)
    assert exact["values"] == pytest.approx([-1, -1]) and exact["interval"] == pytest.approx([-1, -1])
    assert exact["word"] == "negative" and exact["n_seeds"] == 2 and exact["sd"] == 0
    rng = np.random.default_rng(21)
    a, b = rng.normal(size=1000), rng.normal(size=1000)
    none = seed_spearman(a, b, n_boot=300)  # one seed, as one array
    assert none["interval"][0] < 0 < none["interval"][1] and none["word"] == "no detectable correlation"
    # pooled over two strata: each resampled to its own size, so both are in every replicate
    pooled = seed_spearman(np.r_[np.zeros(50), np.ones(50)], [np.r_[np.zeros(50), np.ones(50)]],
                           strata=(50, 50), n_boot=100)
    assert pooled["interval"] == pytest.approx([1, 1]) and pooled["boot_undefined"] == 0
    assert correlation_word((0.0, 0.3)) == "no detectable correlation" and correlation_word((0.01, 0.3)) == "positive"
    with pytest.raises(ValueError, match="strata"):
        seed_spearman(x, [-x], strata=(50, 40))


def test_class_mean_summary_known_answers():
    labels = np.repeat(np.arange(3), 20)
    perfect = [(labels != c).astype(float) for c in range(3)]  # every OOD image above every in-distribution one
    s = class_mean_summary(perfect, labels, [0, 1, 2], n_boot=100)
    assert s["auroc"] == [1.0, 1.0, 1.0] and s["mean"] == 1.0 and s["interval"] == [1.0, 1.0]
    inverted = [-x for x in perfect]
    assert class_mean_summary(inverted, labels, [0, 1, 2], n_boot=100)["interval"] == [0.0, 0.0]
    rng = np.random.default_rng(0)
    noisy = [(labels != c) + rng.normal(0, 1, len(labels)) for c in range(3)]
    s = class_mean_summary(noisy, labels, [0, 1, 2], n_boot=500)
    for c, a, (lo, hi) in zip(range(3), s["auroc"], s["intervals"], strict=True):
        assert a == pytest.approx(auroc(noisy[c][labels == c], noisy[c][labels != c]))
        assert lo < a < hi
    assert s["mean"] == pytest.approx(np.mean(s["auroc"])) and s["interval"][0] < s["mean"] < s["interval"][1]
    # the mean's interval is narrower than one class's: three classes' noise averages out
    assert s["interval"][1] - s["interval"][0] < min(hi - lo for lo, hi in s["intervals"])
    with pytest.raises(ValueError, match="one score array per class"):
        class_mean_summary(noisy[:2], labels, [0, 1, 2])
