"""The variance check (``vaeood.evaluation.variance``) on synthetic images whose log p(x) is a known
function of their pixel variance or mean, so that ρ, the remaining gap and the verdict are
known in advance; and the contrast rescaling on its own."""

import numpy as np
import pytest

from vaeood.evaluation.variance import (MEAN_TOLERANCE, REACH_TOLERANCE, REMAINING_MARGIN, contrast_match, image_stats,
                             variance_check, variance_verdict)

N_BOOT = 300


def images(n: int, mean: float, sd_range: tuple[float, float], seed: int, size: int = 16,
           spread: float = 10.0) -> np.ndarray:
    """Grey uint8 images whose per-image mean is drawn from mean ± ``spread`` (0–255) and
    per-image sd from ``sd_range``, independently (both small enough that clipping is rare)."""
    rng = np.random.default_rng(seed)
    sd = rng.uniform(*sd_range, (n, 1, 1, 1))
    m = mean + rng.uniform(-spread, spread, (n, 1, 1, 1))
    z = rng.standard_normal((n, size, size, 1))
    z = (z - z.mean(axis=(1, 2, 3), keepdims=True)) / z.std(axis=(1, 2, 3), keepdims=True)
    return np.clip(np.rint(m + sd * z), 0, 255).astype(np.uint8)


def scorer(var_weight: float, mean_weight: float):
    """A fake model: log p(x) = −var_weight · v(x) − mean_weight · m(x) nats ([0, 1] scale)."""
    def log_px(x: np.ndarray) -> np.ndarray:
        s = image_stats(x)
        return -var_weight * s["pixel_var"] - mean_weight * s["pixel_mean"]
    return log_px


def test_variance_driven_likelihood_is_supported():
    """Same mean, OOD of smaller variance, log p(x) falls with variance: the OOD set is more
    likely (inverted), ρ(v, log p) = −1, and matching the variance removes the gap."""
    x_in, x_ood = images(300, 128, (25, 40), 0), images(300, 128, (8, 18), 1)
    out = variance_check(x_in, x_ood, [scorer(2000, 0)], n_boot=N_BOOT)
    rho = out["spearman"]["pixel_var"]
    assert rho["pooled"]["values"][0] == pytest.approx(-1) and rho["pooled"]["interval"] == pytest.approx([-1, -1])
    assert rho["in"]["word"] == rho["ood"]["word"] == rho["pooled"]["word"] == "negative"
    assert out["auroc"]["before"]["verdict"] == "inverted" and out["auroc"]["before"]["mean"] == 0.0
    lo, hi = out["auroc"]["after"]["interval"]
    assert lo <= 0.5 <= hi
    assert abs(out["remaining"]["mean"]) < 0.05 and out["contrast_match"]["reached_fraction"] == 1.0
    assert out["sets"]["matched"]["per_image_var"]["mean"] == pytest.approx(
        out["sets"]["in"]["per_image_var"]["mean"], rel=REACH_TOLERANCE)
    assert out["verdict"] == "supported", out["reason"]


def test_mean_driven_likelihood_with_equal_variances_is_not_supported():
    """Equal variance distributions, different means, log p(x) a function of the mean only:
    ρ(v, log p) pooled is 0 in expectation (its interval covers 0, as it would for 95% of
    the seeds of these images) and matching the variance leaves the gap whole."""
    x_in, x_ood = images(300, 100, (15, 30), 2), images(300, 150, (15, 30), 3)
    out = variance_check(x_in, x_ood, [scorer(0, 500)], n_boot=N_BOOT)
    lo, hi = out["spearman"]["pixel_var"]["pooled"]["interval"]
    assert lo < 0 < hi and out["spearman"]["pixel_var"]["pooled"]["word"] == "no detectable correlation"
    assert out["spearman"]["pixel_mean"]["pooled"]["values"][0] == pytest.approx(-1)
    assert out["auroc"]["before"]["verdict"] == "separates" and out["auroc"]["after"]["verdict"] == "separates"
    assert out["remaining"]["interval"][0] > REMAINING_MARGIN
    assert out["verdict"] == "not supported", out["reason"]


def test_variance_and_mean_together_is_partly():
    """log p(x) falls with variance and with mean; the OOD set has the smaller variance and
    the smaller mean: matching the variance removes about two thirds of the gap, not all."""
    x_in, x_ood = images(300, 100, (25, 40), 4), images(300, 80, (8, 18), 5)
    lp = scorer(2000, 200)
    out = variance_check(x_in, x_ood, [lp, lp], n_boot=N_BOOT)  # two "seeds" of one model
    assert out["spearman"]["pixel_var"]["pooled"]["word"] == "negative"
    assert out["auroc"]["before"]["verdict"] == out["auroc"]["after"]["verdict"] == "inverted"
    # known answer: gap(matched) / gap = 200 Δm / (2000 Δv + 200 Δm), measured on the images
    s_in, s_ood = out["sets"]["in"], out["sets"]["ood"]
    dm = s_ood["per_image_mean"]["mean"] - s_in["per_image_mean"]["mean"]
    dv = s_ood["per_image_var"]["mean"] - s_in["per_image_var"]["mean"]
    assert out["remaining"]["mean"] == pytest.approx(200 * dm / (2000 * dv + 200 * dm), abs=0.02)
    assert 0.2 < out["remaining"]["interval"][0] < out["remaining"]["interval"][1] < REMAINING_MARGIN
    assert out["remaining"]["n"] == 2 and out["auroc"]["before"]["n_seeds"] == 2
    assert out["verdict"] == "partly", out["reason"]


def test_given_log_px_values_are_used_and_checked():
    x_in, x_ood = images(50, 128, (25, 40), 6), images(40, 128, (8, 18), 7)
    lp = scorer(2000, 0)
    a = variance_check(x_in, x_ood, [lp], log_px_in=[lp(x_in)], log_px_ood=lp(x_ood), n_boot=50)
    b = variance_check(x_in, x_ood, [lp], n_boot=50)
    assert a == b
    with pytest.raises(ValueError, match=r"log_px_ood\[0\] must be 40 finite"):
        variance_check(x_in, x_ood, [lp], log_px_in=[lp(x_in)], log_px_ood=[lp(x_in)], n_boot=50)
    with pytest.raises(ValueError, match="one entry per seed"):
        variance_check(x_in, x_ood, [lp, lp], log_px_in=[lp(x_in)], log_px_ood=[lp(x_ood)], n_boot=50)


def test_contrast_rescaling_hits_the_target_and_keeps_uint8_range():
    rng = np.random.default_rng(8)
    x = np.concatenate([images(40, 128, (5, 60), 9), images(40, 60, (5, 30), 10)])
    for target in (0.005, 0.03, 0.06):
        out, info = contrast_match(x, target)
        assert out.dtype == np.uint8 and out.shape == x.shape
        assert info["reached"].all() and info["reached_fraction"] == 1.0
        v = image_stats(out)["pixel_var"]
        assert np.abs(v - target).max() <= REACH_TOLERANCE * target
        assert info["pixel_var"] == pytest.approx(v)
        # about each image's own mean: it moves only by rounding and clipping (clipping at 0
        # raises the mean of the darker images when their contrast is raised)
        shift = np.abs(image_stats(out)["pixel_mean"] - image_stats(x)["pixel_mean"])
        assert shift[:40].max() < 0.01 and shift.max() < 0.06
    colour = rng.integers(60, 200, (5, 8, 8, 3), dtype=np.uint8)
    out, info = contrast_match(colour, 0.02)
    assert out.shape == colour.shape and info["reached"].all()


def test_contrast_rescaling_says_when_an_image_cannot_reach_the_target():
    """A binary image of mean m has the largest variance m(1 − m) its mean allows, and a
    constant image has none to scale: both are returned as close as they get, flagged."""
    binary = np.zeros((1, 10, 10, 1), np.uint8)
    binary[0, :1] = 255  # mean 0.1, variance 0.09
    flat = np.full((1, 10, 10, 1), 77, np.uint8)
    x = np.concatenate([binary, flat, images(1, 128, (30, 30), 11, size=10, spread=0)])
    out, info = contrast_match(x, 0.12)
    assert info["reached"].tolist() == [False, False, True] and info["reached_fraction"] == pytest.approx(1 / 3)
    assert (out[1] == 77).all() and info["pixel_var"][0] == pytest.approx(0.09)
    with pytest.raises(ValueError, match="target_var must be a per-image pixel variance"):
        contrast_match(x, 3.0)
    with pytest.raises(ValueError, match="images must be non-empty uint8"):
        contrast_match(x.astype(np.float32), 0.1)


@pytest.mark.parametrize("rho, before, after, remaining, word", [
    ((-0.5, -0.3), (0.4, 0.6), (0.4, 0.6), (0.0, 0.1), "not supported"),  # no gap to explain
    ((-0.1, 0.05), (0.1, 0.2), (0.45, 0.55), (0.0, 0.1), "not supported"),  # ρ covers 0
    ((-0.5, -0.3), (0.1, 0.2), (0.45, 0.55), (0.0, 0.1), "supported"),  # the separation vanishes
    ((-0.5, -0.3), (0.1, 0.2), (0.6, 0.7), (-0.5, -0.2), "supported"),  # ... or reverses
    ((-0.5, -0.3), (0.8, 0.9), (0.2, 0.3), (-0.5, -0.2), "supported"),  # the same, OOD less likely
    ((-0.5, -0.3), (0.1, 0.2), (0.15, 0.25), (0.8, 0.95), "not supported"),  # the gap barely moves
    ((-0.5, -0.3), (0.1, 0.2), (0.2, 0.3), (0.5, 0.8), "partly"),
])
def test_verdict_rule(rho, before, after, remaining, word):
    assert variance_verdict(rho, before, after, remaining)[0] == word


def test_the_sets_statistics_say_when_mean_and_variance_go_together():
    """Near-binary images (v = m(1 − m) exactly for 0/255 pixels) have ρ(m, v) = 1 below m = ½;
    independent draws of mean and sd have ρ near 0."""
    rng = np.random.default_rng(12)
    binary = (rng.random((200, 8, 8, 1)) < rng.uniform(0.05, 0.4, (200, 1, 1, 1))).astype(np.uint8) * 255
    lp = scorer(1000, 0)
    out = variance_check(binary, images(200, 128, (10, 30), 13), [lp], n_boot=50)
    assert out["sets"]["in"]["spearman_mean_var"] == pytest.approx(1.0)
    assert abs(out["sets"]["ood"]["spearman_mean_var"]) < 0.2


def test_contrast_rescaling_can_keep_each_images_mean():
    """Dark images whose contrast is raised hit 0 and their mean rises; with keep_mean the
    shift b brings it back (within a grey level) at the same target variance."""
    x = images(60, 60, (5, 30), 14)
    plain, info = contrast_match(x, 0.03)
    kept, info_kept = contrast_match(x, 0.03, keep_mean=True)
    assert np.abs(info["mean_shift"]).max() > 0.01  # clipping moved the means
    assert info_kept["reached"].all() and np.abs(info_kept["mean_shift"]).max() <= MEAN_TOLERANCE
    assert np.abs(image_stats(kept)["pixel_var"] - 0.03).max() <= REACH_TOLERANCE * 0.03
    assert kept.dtype == np.uint8 and info_kept["shift"].min() < 0


def test_the_mean_kept_check_tells_variance_from_mean():
    """OOD images darker and of lower contrast; log p(x) depends on the mean only. Raising the
    contrast raises the mean (clipping), which alone moves log p; keeping the mean, it does not."""
    x_in, x_ood = images(200, 110, (40, 50), 15), images(200, 40, (10, 20), 16)
    out = variance_check(x_in, x_ood, [scorer(0, 500)], n_boot=100)
    kept = out["mean_kept"]
    assert out["sets"]["matched"]["pixel_mean"] > out["sets"]["ood"]["pixel_mean"] + 0.01
    assert kept["set"]["pixel_mean"] == pytest.approx(out["sets"]["ood"]["pixel_mean"], abs=MEAN_TOLERANCE)
    assert out["remaining"]["mean"] < 0.9 and kept["remaining"]["mean"] == pytest.approx(1.0, abs=0.02)
    assert kept["auroc_after"]["verdict"] == out["auroc"]["before"]["verdict"]
