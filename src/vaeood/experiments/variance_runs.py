"""The variance check of :mod:`vaeood.evaluation.variance` on an experiment's trained runs: for each
(in-distribution, OOD) pair, the per-image log p(x) the experiment already scored (read
from the runs' caches), the same test images, and each seed's model scoring the
contrast-matched OOD images on the side (uncached; nothing of the runs changes); with the
record written into ``metrics.json`` and the report's "Is it the variance?" section."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..features import features_of, images_digest
from ..evaluation.fitdata import run_config
from ..evaluation.intervals import N_BOOT
from ..evaluation.report import markdown_table
from ..training.run import load_model
from ..evaluation.log_px import log_px, log_px_meta
from ..evaluation.variance import REACH_TOLERANCE, REMAINING_MARGIN, VERDICT_RULE, variance_check

METHOD = ("per-image pixel mean and variance over all pixels and channels on the [0, 1] scale; Spearman ρ with "
          "log p(x) as the seed mean with the two-level bootstrap interval (pooled: the two sets resampled "
          "separately); each OOD image's contrast rescaled about its own mean (clipped to 0–255, rounded to "
          "uint8) to the in-distribution set's mean per-image variance and scored again by the same model with "
          "the same estimator and noise seed; remaining fraction r = gap(matched) / gap(original), gap = mean "
          "log p(OOD) − mean log p(in); the same again with each image's mean kept")


def scored_images(run_dir: Path, dataset: str, scores: dict, score_kwargs: dict) -> np.ndarray:
    """The test images that ``scores`` (a :func:`vaeood.evaluation.log_px.log_px` result) were computed
    on, loaded again and checked against the digest saved with them, so that the analysis
    pairs every log p(x) with its own image."""
    meta = log_px_meta(scores)
    if meta.get("conform"):  # the scorer gets the images as they are: padded or resized ones would need it too
        raise ValueError(f"{dataset}: its scores were made of images conformed to the model "
                         f"({meta['conform']['description']}); the variance check takes sets of the model's own shape")
    data_dir = score_kwargs.get("data_dir") or run_config(run_dir).data.data_dir
    data = load_dataset(dataset, score_kwargs.get("split", "test"), data_dir=data_dir,
                        allow_sample=score_kwargs.get("allow_sample", False))
    images = data.images[meta["start"]:meta["stop"]]
    if images_digest(images) != meta["data_sha256"]:
        raise ValueError(f"{dataset}: the images loaded now (SHA-256 {images_digest(images)[:12]}…) are not the "
                         f"ones scored in {run_dir} (data_sha256 {meta['data_sha256'][:12]}…); re-score them")
    return images


def model_scorer(run_dir: Path, score_kwargs: dict):
    """log p(x) [nats] of uint8 images under ``run_dir``'s model, by the estimator (and
    options) of ``score_kwargs``, with log_px()'s noise seed and batches, so a rescaled
    image draws the noise its original drew (a paired comparison)."""
    model = load_model(run_dir, score_kwargs.get("device", "cpu"))[0]
    options = {"estimator": score_kwargs.get("estimator", "elbo"),
               "estimator_options": dict(score_kwargs.get("estimator_options") or {})}

    def log_px_of(images: np.ndarray) -> np.ndarray:
        return features_of(model, images, "log_px", options, seed=0, progress=False)["log_px_nats"]
    return log_px_of


def variance_pairs(in_dataset: str, ood_datasets, run_dirs: list[Path], score_kwargs: dict, *,
                   n_boot: int = N_BOOT) -> dict:
    """``{ood: variance_check result}`` for one model variant trained with several seeds
    (``run_dirs``, one per seed), on the test sets the experiment scored."""
    kw = {k: v for k, v in score_kwargs.items() if k != "split"}
    split = score_kwargs.get("split", "test")
    scores_in = [log_px(r, in_dataset, split, **kw) for r in run_dirs]
    in_images = scored_images(run_dirs[0], in_dataset, scores_in[0], score_kwargs)
    scorers = [model_scorer(r, score_kwargs) for r in run_dirs]
    out = {}
    for ood in ood_datasets:
        scores_ood = [log_px(r, ood, split, **kw) for r in run_dirs]
        out[ood] = variance_check(in_images, scored_images(run_dirs[0], ood, scores_ood[0], score_kwargs), scorers,
                                  log_px_in=[s["log_px_nats"] for s in scores_in],
                                  log_px_ood=[s["log_px_nats"] for s in scores_ood], n_boot=n_boot)
    return out


def variance_record(checks: dict) -> dict:
    """What ``metrics.json`` holds of the checks ``{variant: {ood: result}}``."""
    return {"method": METHOD, "rule": VERDICT_RULE, "remaining_margin": REMAINING_MARGIN,
            "reach_tolerance": REACH_TOLERANCE,
            "verdict": {f"{v}/{o}": f"{r['verdict']}: {r['reason']}"
                        for v, by in checks.items() for o, r in by.items()},
            "pairs": checks}


def _rho(s: dict) -> str:
    lo, hi = s["interval"]
    if not math.isfinite(s["mean"]):
        return "undefined (a constant)"
    return f"{s['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _auroc(s: dict) -> str:
    lo, hi = s["interval"]
    return f"{s['mean']:.3f} [{lo:.3f}–{hi:.3f}] {s['verdict']}"


def _stats_rows(pairs: dict) -> list[list]:
    """One row per test set (the same images for every variant): from the first variant."""
    first = next(iter(pairs.values()))
    rows = []
    for ood, r in first.items():
        labels = (("in-distribution", "in"), (f"OOD: {ood}", "ood"), (f"OOD: {ood}, contrast-matched", "matched"),
                  (f"OOD: {ood}, contrast-matched, mean kept", "mean_kept"))
        for label, key in labels:
            s = r["mean_kept"]["set"] if key == "mean_kept" else r["sets"][key]
            rows.append([label, s["n"], f"{s['pixel_mean']:.4f}", f"{s['pixel_var']:.4f}",
                         f"{s['per_image_mean']['mean']:.4f} ± {s['per_image_mean']['sd']:.4f}",
                         f"{s['per_image_var']['mean']:.4f} ± {s['per_image_var']['sd']:.4f}",
                         f"{s['spearman_mean_var']:+.3f}" if math.isfinite(s["spearman_mean_var"]) else "undefined"])
    return rows


def variance_section(record: dict, level: str = "95%") -> list[str]:
    """The report's "Is it the variance?" section."""
    pairs = record["pairs"]
    cells = [(v, o, r) for v, by in pairs.items() for o, r in by.items()]
    lines = ["## Is it the variance?", "",
             "The study explains a higher likelihood of an OOD set by its similar mean and smaller variance (after "
             "Nalisnick et al. 2019). Tested here for every pair: " + METHOD + ".", "",
             f"Verdict rule ({level} intervals): {record['rule']}.", "",
             markdown_table(["set", "images", "pixel mean", "pixel variance", "per-image mean (mean ± sd)",
                             "per-image variance (mean ± sd)", "ρ(mean, variance) of its images"],
                            _stats_rows(pairs)), "",
             f"Spearman ρ with log p(x), seed mean [{level} interval]:", "",
             markdown_table(["model", "OOD", *[f"ρ({w}, log p) {where}" for w in ("variance", "mean")
                                               for where in ("in", "OOD", "pooled")]],
                            [[v, o, *[_rho(r["spearman"][stat][k]) for stat in ("pixel_var", "pixel_mean")
                                      for k in ("in", "ood", "pooled")]] for v, o, r in cells]), "",
             f"Contrast-matched OOD images (target: the in-distribution mean per-image variance; 'reached': within "
             f"{record['reach_tolerance']:.0%} of it; gaps in nats, mean ± sd over seeds):", "",
             markdown_table(["model", "OOD", "target variance", "reached", "gap before", "gap after",
                             f"remaining r [{level}]", "AUROC before", "AUROC after", "verdict"],
                            [[v, o, f"{r['contrast_match']['target_pixel_var']:.4f}",
                              f"{r['contrast_match']['reached_fraction']:.1%}",
                              f"{r['gap_nats']['mean']:+.1f} ± {r['gap_nats']['sd']:.1f}",
                              f"{r['gap_matched_nats']['mean']:+.1f} ± {r['gap_matched_nats']['sd']:.1f}",
                              _rho(r["remaining"]), _auroc(r["auroc"]["before"]), _auroc(r["auroc"]["after"]),
                              f"**{r['verdict']}**: {r['reason']}"] for v, o, r in cells]), "",
             "The same with each image's mean kept (a shift b brings back the mean that clipping moved; "
             "'reached': variance within the tolerance and mean within one grey level). Beside the verdict, "
             "not used by it: where it differs from the table above, part of that change was the mean's.", "",
             markdown_table(["model", "OOD", "reached", "gap after", f"remaining r [{level}]", "AUROC after"],
                            [[v, o, f"{r['mean_kept']['contrast_match']['reached_fraction']:.1%}",
                              f"{r['mean_kept']['gap_matched_nats']['mean']:+.1f} ± "
                              f"{r['mean_kept']['gap_matched_nats']['sd']:.1f}",
                              _rho(r["mean_kept"]["remaining"]), _auroc(r["mean_kept"]["auroc_after"])]
                             for v, o, r in cells]), ""]
    return lines
