"""Is it the variance? The study's explanation of a higher likelihood for an OOD set, tested.

Nalisnick et al. (2019, "Do deep generative models know what they don't know?", ICLR;
§5) explain why a CIFAR-10 model gives SVHN a higher likelihood: the two sets have about
the same pixel mean while SVHN has the smaller variance, and a second-order expansion of
log p(x) around the training mean makes lower-variance inputs more likely. The study
repeats this explanation for its Figure 2. This module measures it for one pair of test
sets (in-distribution, OOD) under one model (trained with one or several seeds):

1. **Pixel statistics.** Per set, :func:`vaeood.features.pixel_stats` (mean and variance
   over all pixels on the [0, 1] scale) and the per-image statistics of
   :func:`image_stats`: for image x with D values x_d ∈ [0, 1] (pixels × channels),
   ``pixel_mean`` m(x) = (1/D) Σ_d x_d and ``pixel_var`` v(x) = (1/D) Σ_d (x_d − m(x))²,
   and Spearman ρ(m, v) over the set's images (near ±1 the two cannot be told apart).
2. **Rank correlations.** Spearman's ρ between v(x) and log p(x), within each set and
   pooled over both, and the same for m(x): :func:`vaeood.evaluation.rank_correlation.seed_spearman`, the
   seed-mean ρ with the two-level bootstrap interval (seeds and images resampled; a
   pooled ρ resamples the two sets separately, each to its own size). Variance explains
   the likelihood when ρ(v, log p) < 0: lower-variance images get higher likelihood.
3. **A check that controls for variance** (:func:`contrast_match`). Each OOD image's
   contrast is rescaled about its own mean,

       x' = clip(round(m(x) + s · (x − m(x))), 0, 255),

   with s ≥ 0 found per image by bisection so that v(x') equals the in-distribution
   set's mean per-image variance v̄_in (clipping and rounding make s differ from
   √(v̄_in / v(x)); an image that saturates before reaching it keeps the largest
   variance it can reach and counts as not reached). Clipping moves the mean of an image
   pushed against 0 or 255 (dark digits on a black ground: raising their contrast raises
   their mean); the ``matched`` set's statistics show by how much, and where ρ(m, log p)
   is not 0 part of the change in likelihood can be the mean's. So the check is made a
   second time with each image's mean kept (``keep_mean``: x' = clip(round(m + b + s(x − m)))
   with the shift b found by bisection too), reported beside the first (``mean_kept``; an
   image of 0/255 pixels with mean m has at most the variance m(1 − m), so near-binary
   dark digits reach the target less often); the verdict reads the first. The model scores the rescaled
   images again. With gap = mean log p(OOD) − mean log p(in) [nats], the fraction of the
   gap that **remains** is r = gap(matched) / gap(original) (1: variance explains none of
   it; 0: all of it), with its two-level bootstrap interval (the matched images resampled
   with their originals, paired); the AUROC of −log p(x) (OOD positive) is given before
   and after, each with the interval and verdict word of :func:`vaeood.evaluation.intervals.seed_summary`.

**Verdict** (:func:`variance_verdict`), decided by the 95% intervals, in this order:

- *not supported* when the original AUROC interval covers 0.5 (there is no likelihood gap
  between the sets to explain);
- *not supported* when the pooled ρ(v, log p) interval reaches 0 or above (lower-variance
  images do not get detectably higher likelihood);
- *supported* when the contrast-matched AUROC interval covers 0.5 or lies on the other side
  of it (matching the variance removes the separation or reverses it);
- *not supported* when the interval of r lies entirely above ``REMAINING_MARGIN`` = 0.75
  (matching the variance removes less than a quarter of the gap);
- *partly* otherwise: variance goes with likelihood and matching it removes a detectable
  share of the gap (r's interval reaches below 0.75), but the sets stay separated in the
  same direction.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np

from ..features import pixel_stats
from .intervals import LEVEL, N_BOOT, mean_sd, resample_counts, seed_summary
from .rank_correlation import seed_spearman, spearman

log = logging.getLogger(__name__)

WORDS = ("supported", "not supported", "partly")
REMAINING_MARGIN = 0.75  # r above this (its whole interval): variance removes < a quarter of the gap
REACH_TOLERANCE = 0.01  # a rescaled image reaches the target variance within 1% of it
MEAN_TOLERANCE = 1.0 / 255.0  # with keep_mean, and its own mean within one grey level
MEAN_ROUNDS, MEAN_ITERS = 4, 30  # keep_mean: alternations of the two bisections, steps of each
VERDICT_RULE = ("not supported when the original AUROC interval covers 0.5 (no gap to explain) or the pooled "
                "Spearman ρ(per-image variance, log p(x)) interval reaches 0 or above; supported when the "
                "contrast-matched OOD set's AUROC interval covers 0.5 or lies on the other side of it; not "
                f"supported when the interval of the gap's remaining fraction lies above {REMAINING_MARGIN}; "
                "partly otherwise")
_CHUNK = 1000  # images rescaled at once (memory: chunk × D float64 values, several copies)

Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 images [N, H, W, C] → log p(x) [N] in nats


def _flat(images: np.ndarray, name: str = "images") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"{name} must be non-empty uint8 [N, H, W] or [N, H, W, C] (values 0–255), got "
                         f"{images.dtype} {images.shape}")
    return images.reshape(len(images), -1)


def image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``pixel_mean`` m(x) and ``pixel_var`` v(x) [N] over every pixel and channel
    of each image, on the [0, 1] scale (float64)."""
    x = _flat(images).astype(np.float64) / 255.0
    return {"pixel_mean": x.mean(axis=1), "pixel_var": x.var(axis=1)}


def _rescaled(x: np.ndarray, mean: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(mean + shift[:, None] + scale[:, None] * (x - mean)), 0.0, 255.0)


def _bisect(f, lo: np.ndarray, hi: np.ndarray, target, iters: int) -> np.ndarray:
    """Per row, the end of the last bracket [lo, hi] of f(·) = target whose f is closer to it
    (f nondecreasing per row, up to rounding steps and the saturation of clipping)."""
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        low = f(mid) < target
        lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
    return np.where(np.abs(f(lo) - target) <= np.abs(f(hi) - target), lo, hi)


def _match_chunk(x: np.ndarray, target: float, max_scale: float, iters: int,
                 keep_mean: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-image contrast scales s ∈ [0, max_scale] (and shifts b, 0 unless ``keep_mean``)
    of the rows of ``x`` (0–255 values) whose rescaled variance is ``target`` (0–255 scale),
    by bisection; with ``keep_mean`` alternately on s (the variance) and on b ∈ ±255 (1 + s)
    (the mean, back to the image's own), since each moves the other through the clipping."""
    mean = x.mean(axis=1, keepdims=True)
    scale, shift = np.ones(len(x)), np.zeros(len(x))
    for _ in range(MEAN_ROUNDS if keep_mean else 1):
        # the lambdas run inside _bisect, within this iteration: they see this round's shift and scale
        scale = _bisect(lambda s: _rescaled(x, mean, s, shift).var(axis=1), np.zeros(len(x)),  # noqa: B023
                        np.full(len(x), float(max_scale)), target, iters)
        if keep_mean:  # |b| up to 255 (1 + s): at a large s, b moves the level the image is cut at
            reach = 255.0 * (1.0 + scale)
            shift = _bisect(lambda b: _rescaled(x, mean, scale, b).mean(axis=1),  # noqa: B023
                            -reach, reach, mean[:, 0], iters)
    return scale, shift


def contrast_match(images: np.ndarray, target_var: float, *, keep_mean: bool = False, max_scale: float = 64.0,
                   iters: int = 40) -> tuple[np.ndarray, dict]:
    """``images`` with each one's contrast rescaled about its own mean so that its per-image
    variance v(x') is ``target_var`` (on the [0, 1] scale), clipped to 0–255 and rounded to
    uint8 (the formula is in the module docstring). ``keep_mean``: also shift each image by
    b so that clipping leaves its mean where it was, x' = clip(round(m + b + s(x − m))).
    Returns the uint8 images (shape and dtype of the input) and ``{"target_pixel_var",
    "scale" [N], "shift" [N] (0–255 levels), "pixel_var" [N], "mean_shift" [N] (m(x') − m(x)),
    "reached" [N] (variance within ``REACH_TOLERANCE`` of the target and, with ``keep_mean``,
    mean within ``MEAN_TOLERANCE``), "reached_fraction"}``."""
    flat = _flat(images)
    if not (isinstance(target_var, (int, float, np.floating)) and 0.0 < float(target_var) < 0.25):
        raise ValueError(f"target_var must be a per-image pixel variance on the [0, 1] scale, in (0, 0.25), "
                         f"got {target_var!r}")
    target = float(target_var) * 255.0 ** 2
    out = np.empty(flat.shape, dtype=np.uint8)
    scales, shifts = np.empty(len(flat)), np.empty(len(flat))
    for start in range(0, len(flat), _CHUNK):
        x = flat[start:start + _CHUNK].astype(np.float64)
        s, b = _match_chunk(x, target, max_scale, iters if not keep_mean else MEAN_ITERS, keep_mean)
        out[start:start + _CHUNK] = _rescaled(x, x.mean(axis=1, keepdims=True), s, b).astype(np.uint8)
        scales[start:start + _CHUNK], shifts[start:start + _CHUNK] = s, b
    reached_var = out.astype(np.float64).var(axis=1) / 255.0 ** 2
    mean_shift = (out.astype(np.float64).mean(axis=1) - flat.astype(np.float64).mean(axis=1)) / 255.0
    reached = np.abs(reached_var - float(target_var)) <= REACH_TOLERANCE * float(target_var)
    if keep_mean:
        reached &= np.abs(mean_shift) <= MEAN_TOLERANCE
    return out.reshape(np.shape(images)), {"target_pixel_var": float(target_var), "scale": scales, "shift": shifts,
                                           "pixel_var": reached_var, "mean_shift": mean_shift, "reached": reached,
                                           "reached_fraction": float(reached.mean())}


def _seeds(values, name: str, n: int) -> list[np.ndarray]:
    """One float64 [n] array per seed, from one array or a list of them."""
    arrays = [values] if np.ndim(values[0]) == 0 else list(values)
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    for i, a in enumerate(arrays):
        if a.shape != (n,) or not np.isfinite(a).all():
            raise ValueError(f"{name}[{i}] must be {n} finite log p(x) values [nats], one per image, got shape "
                             f"{a.shape}" + ("" if a.shape != (n,) else " with NaN/inf"))
    return arrays


def _set_stats(images: np.ndarray, stats: dict[str, np.ndarray]) -> dict:
    """A set's pixel statistics, with Spearman ρ(m, v) of its images: near ±1, mean and
    variance cannot be told apart in that set (as for near-binary digits, v ≈ m(1 − m))."""
    return {"n": int(len(images)), **pixel_stats(np.asarray(images)),
            "per_image_var": {"mean": float(stats["pixel_var"].mean()), "sd": float(stats["pixel_var"].std())},
            "per_image_mean": {"mean": float(stats["pixel_mean"].mean()), "sd": float(stats["pixel_mean"].std())},
            "spearman_mean_var": spearman(stats["pixel_mean"], stats["pixel_var"])}


def _correlations(s_in: dict, s_ood: dict, lp_in: list, lp_ood: list, n_boot: int, seed: int, level: float) -> dict:
    """ρ of per-image variance and of per-image mean with log p(x): in, OOD, pooled."""
    out = {}
    for stat in ("pixel_var", "pixel_mean"):
        kw = dict(n_boot=n_boot, seed=seed, level=level)
        out[stat] = {"in": seed_spearman(s_in[stat], lp_in, **kw), "ood": seed_spearman(s_ood[stat], lp_ood, **kw),
                     "pooled": seed_spearman(np.concatenate([s_in[stat], s_ood[stat]]),
                                             [np.concatenate(p) for p in zip(lp_in, lp_ood, strict=True)],
                                             strata=(len(s_in[stat]), len(s_ood[stat])), **kw)}
    return out


def _remaining_replicates(lp_in: list, lp_ood: list, lp_matched: list, n_boot: int,
                          rng: np.random.Generator) -> np.ndarray:
    """[n_boot, S] remaining fractions r under shared resamples (in and OOD separately; a
    matched image is drawn with its original)."""
    n_in, n_ood = len(lp_in[0]), len(lp_ood[0])
    block = max(1, 4_000_000 // (n_in + n_ood))
    out = np.empty((n_boot, len(lp_in)))
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        u, v = resample_counts(rng, rows, n_in), resample_counts(rng, rows, n_ood)
        su, sv = u.sum(axis=1), v.sum(axis=1)
        for s, (a, b, c) in enumerate(zip(lp_in, lp_ood, lp_matched, strict=True)):
            mean_in = u @ a / su
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start:start + rows, s] = (v @ c / sv - mean_in) / (v @ b / sv - mean_in)
    return out


def remaining_gap(lp_in: list, lp_ood: list, lp_matched: list, *, n_boot: int = N_BOOT, seed: int = 0,
                  level: float = LEVEL) -> dict:
    """The likelihood gaps [nats] before and after contrast matching (mean ± sd over seeds)
    and r = gap(matched) / gap(original) per seed, with the percentile interval of the
    seed-mean r by the two-level bootstrap (seeds with replacement, shared image resamples)."""
    gaps = [float(b.mean() - a.mean()) for a, b in zip(lp_in, lp_ood, strict=True)]
    after = [float(c.mean() - a.mean()) for a, c in zip(lp_in, lp_matched, strict=True)]
    values = [g2 / g if g != 0 else math.nan for g, g2 in zip(gaps, after, strict=True)]
    rng = np.random.default_rng(seed)
    reps = _remaining_replicates(lp_in, lp_ood, lp_matched, n_boot, rng)
    drawn = resample_counts(rng, n_boot, len(lp_in)) if len(lp_in) > 1 else np.ones((n_boot, 1))
    pooled = (reps * drawn).sum(axis=1) / len(lp_in)
    finite = pooled[np.isfinite(pooled)]
    alpha = (1.0 - level) / 2.0
    interval = [float(q) for q in np.quantile(finite, [alpha, 1 - alpha])] if len(finite) >= 10 else [math.nan] * 2
    return {"gap_nats": mean_sd(gaps), "gap_matched_nats": mean_sd(after), "remaining": {
        **mean_sd(values), "interval": interval, "level": level, "n_boot": n_boot,
        "boot_undefined": int(len(pooled) - len(finite))}}


def variance_verdict(rho_var_pooled: Sequence[float], auroc_before: Sequence[float],
                     auroc_after: Sequence[float], remaining: Sequence[float]) -> tuple[str, str]:
    """The verdict word and its reason from four 95% intervals (the rule of the module
    docstring): the pooled ρ(variance, log p), the AUROC before and after contrast
    matching, and the remaining fraction r of the likelihood gap."""
    (r_lo, r_hi), (b_lo, b_hi), (a_lo, a_hi), (g_lo, g_hi) = rho_var_pooled, auroc_before, auroc_after, remaining
    if not (b_lo > 0.5 or b_hi < 0.5):
        return "not supported", "the sets are not separated (AUROC interval covers 0.5): there is no gap to explain"
    if not (math.isfinite(r_hi) and r_hi < 0):
        return "not supported", (f"lower-variance images do not get detectably higher likelihood (pooled ρ interval "
                                 f"{r_lo:.3f} to {r_hi:.3f} reaches 0)")
    other_side = a_hi < 0.5 if b_lo > 0.5 else a_lo > 0.5
    if other_side or not (a_lo > 0.5 or a_hi < 0.5):
        return "supported", (f"variance goes with likelihood (pooled ρ ≤ {r_hi:.3f}) and matching it "
                             + ("reverses the separation" if other_side else "removes the separation")
                             + f" (matched AUROC {a_lo:.3f}–{a_hi:.3f})")
    if math.isfinite(g_lo) and g_lo > REMAINING_MARGIN:
        return "not supported", (f"matching the variance leaves {g_lo:.2f}–{g_hi:.2f} of the likelihood gap "
                                 f"(more than {REMAINING_MARGIN})")
    return "partly", (f"variance goes with likelihood (pooled ρ ≤ {r_hi:.3f}); matching it leaves {g_lo:.2f}–"
                      f"{g_hi:.2f} of the gap and the sets stay separated (matched AUROC {a_lo:.3f}–{a_hi:.3f})")


def _aurocs(lp_in: list, lp_ood: list, n_boot: int, seed: int, level: float) -> dict:
    s = seed_summary([(-a, -b) for a, b in zip(lp_in, lp_ood, strict=True)], n_boot=n_boot, seed=seed, level=level)
    return {**s.as_dict(), "text": s.text()}


def _match_record(info: dict) -> dict:
    return {"target_pixel_var": info["target_pixel_var"], "reached_fraction": info["reached_fraction"],
            "tolerance": REACH_TOLERANCE, "scale_median": float(np.median(info["scale"])),
            "mean_shift_mean": float(np.mean(info["mean_shift"])),
            "mean_shift_max_abs": float(np.max(np.abs(info["mean_shift"])))}


def _mean_kept(ood_images: np.ndarray, target: float, scorers: Sequence[Scorer], lp_in: list, lp_ood: list,
               kw: dict) -> dict:
    """The contrast-matched check again with each image's mean kept (``keep_mean``): where
    raising the contrast also raised the mean, this tells the variance's part from the mean's.
    Reported beside the main check; the verdict does not use it."""
    matched, info = contrast_match(ood_images, target, keep_mean=True)
    lp_matched = _seeds([f(matched) for f in scorers], "scorer(mean-kept matched)", len(matched))
    return {"contrast_match": {**_match_record(info), "mean_tolerance": MEAN_TOLERANCE},
            "set": _set_stats(matched, image_stats(matched)),
            "log_px_nats": mean_sd([float(a.mean()) for a in lp_matched]),
            **remaining_gap(lp_in, lp_ood, lp_matched, **kw), "auroc_after": _aurocs(lp_in, lp_matched, **kw)}


def variance_check(in_images: np.ndarray, ood_images: np.ndarray, scorers: Sequence[Scorer], *,
                   log_px_in=None, log_px_ood=None, n_boot: int = N_BOOT, seed: int = 0,
                   level: float = LEVEL) -> dict:
    """The whole analysis of the module docstring for one (in-distribution, OOD) pair.

    ``scorers``: one function per training seed, uint8 images [N, H, W, C] → log p(x) [N]
    in nats, under that seed's model; it scores the contrast-matched OOD images (and the
    original sets unless their values, one array per seed, are given as ``log_px_in`` /
    ``log_px_ood``, e.g. from the cache). Returns a JSON-ready dict: ``sets`` (pixel
    statistics of ``in``, ``ood``, ``matched``), ``contrast_match``, ``spearman``
    (``pixel_var`` / ``pixel_mean`` → ``in`` / ``ood`` / ``pooled``), ``log_px_nats``,
    the gaps and ``remaining``, ``auroc`` (``before`` / ``after``), ``mean_kept`` (the matched
    check with each image's mean kept, beside it), ``verdict``, ``reason``, ``rule``."""
    if not scorers:
        raise ValueError("scorers must hold one log p(x) function per training seed, got none")
    s_in, s_ood = image_stats(in_images), image_stats(ood_images)
    # the original sets' values usually come from the cache: score them only when not given
    lp_in = _seeds(log_px_in if log_px_in is not None else [f(in_images) for f in scorers], "log_px_in",
                   len(s_in["pixel_var"]))
    lp_ood = _seeds(log_px_ood if log_px_ood is not None else [f(ood_images) for f in scorers], "log_px_ood",
                    len(s_ood["pixel_var"]))
    if not len(lp_in) == len(lp_ood) == len(scorers):
        raise ValueError(f"log_px_in, log_px_ood and scorers must have one entry per seed, got {len(lp_in)}, "
                         f"{len(lp_ood)} and {len(scorers)}")
    kw = dict(n_boot=n_boot, seed=seed, level=level)
    target = float(s_in["pixel_var"].mean())
    matched, info = contrast_match(ood_images, target)
    lp_matched = _seeds([f(matched) for f in scorers], "scorer(matched)", len(matched))
    log.debug("contrast-matched %d OOD images to variance %.4f (%.1f%% reached)", len(matched),
              info["target_pixel_var"], 100 * info["reached_fraction"])
    out = {"sets": {"in": _set_stats(in_images, s_in), "ood": _set_stats(ood_images, s_ood),
                    "matched": _set_stats(matched, image_stats(matched))},
           "contrast_match": _match_record(info),
           "spearman": _correlations(s_in, s_ood, lp_in, lp_ood, **kw),
           "log_px_nats": {k: mean_sd([float(a.mean()) for a in v])
                           for k, v in (("in", lp_in), ("ood", lp_ood), ("matched", lp_matched))},
           **remaining_gap(lp_in, lp_ood, lp_matched, **kw),
           "auroc": {"before": _aurocs(lp_in, lp_ood, **kw), "after": _aurocs(lp_in, lp_matched, **kw)},
           "mean_kept": _mean_kept(ood_images, target, scorers, lp_in, lp_ood, kw)}
    out["verdict"], out["reason"] = variance_verdict(
        out["spearman"]["pixel_var"]["pooled"]["interval"], out["auroc"]["before"]["interval"],
        out["auroc"]["after"]["interval"], out["remaining"]["interval"])
    out["rule"] = VERDICT_RULE
    return out


__all__ = ["MEAN_TOLERANCE", "REACH_TOLERANCE", "REMAINING_MARGIN", "VERDICT_RULE", "WORDS", "contrast_match",
           "image_stats", "remaining_gap", "variance_check", "variance_verdict"]
