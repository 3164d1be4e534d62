"""The study's question asked in feature space: Figure 2's panel beside the pixel one.

The pixel VAEs of :mod:`.fig2` give every test image a likelihood of its pixels. Here the same
question — does the in-distribution model give the OOD set a lower likelihood? — is asked of a
density of what the image shows: the pooled features f(x) of a frozen ImageNet-pretrained
backbone (:mod:`vaeood.features.backbone`, its default network and input size), computed of

- the in-distribution training images the pixel models trained on (the first N of the training
  split, N the most any variant trained on: every image any of them saw);
- the in-distribution test set and each OOD set, the same images the pixel panel scores. The
  backbone brings any image to its own input (grey repeated to RGB, bilinear resize), so every
  set is scored as it is: no padding (fig2b's pixel models score MNIST padded to 32×32 RGB).

Each density in :data:`DENSITIES` is fitted on the training features only (no OOD image is seen
before it is scored) and gives log p_feature(x) in nats of R^D:

- ``gaussian``: N(m, Σ̂) with the Ledoit–Wolf covariance (Ledoit & Wolf 2004;
  :mod:`vaeood.detectors.feature_gaussian`), log N = −½ (S(x) + log det Σ̂ + D log 2π), S the
  squared Mahalanobis distance. Deterministic: one fit, whose AUROC interval resamples the
  test images only.
- ``vae``: the project's VAE of the standardised features with a Gaussian decoder
  (:mod:`vaeood.detectors.feature_vae`, ``feature_vae_nll``), log p_feature(x) ≥ ELBO(f(x)),
  the standardisation's Jacobian −Σ_d log s_d included. Trained from a seed (``seeded``):
  one fit per training seed, summarised over seeds as the pixel panel is (Kirichenko et al.
  2020 fit a flow there).

The verdict is the pixel panel's (:func:`.common.auroc_summary`, :data:`.common.VERDICT_RULE`):
the AUROC of −log p_feature(x), OOD the positive class, its 95% interval and its word. The
backbone saw ImageNet's 1,000 classes, among them the classes of Tiny ImageNet; the report says so.
The panel only adds to ``metrics.json`` (key ``feature_space``) and to the report: every pixel
number is the same with or without it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..detectors import make_detector
from ..detectors.feature_base import FEATURE_KEY
from ..evaluation.intervals import mean_sd
from ..evaluation.report import histogram_panels, interval_text, markdown_table, pm
from ..features import compute_feature, feature_meta
from ..features.backbone import DEFAULT_BACKBONE, DEFAULT_SIZE
from ..models.backbones import get_backbone
from ..training.run_dir import Run
from .common import auroc_summary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureDensity:
    """A density of the backbone's features: ``fit(rows, seed)`` fits it on the training
    features ``[N, D]`` and returns the log density ``[nats]`` of feature rows and what the fit
    chose; ``seeded``: fitted once per training seed (else once: it draws nothing)."""

    description: str
    seeded: bool
    fit: Callable[[np.ndarray, int], tuple[Callable[[np.ndarray], np.ndarray], dict]]


def _gaussian(rows: np.ndarray, seed: int):
    gauss = make_detector("feature_gaussian").fit({FEATURE_KEY: rows})
    return (lambda r: gauss.log_density_nats({FEATURE_KEY: r})), gauss.fit_info


#: the feature VAE's gradient steps: 60 epochs of 1,600 rows at batch 128, the budget of
#: benchmarks/feature_vae.py, so that 10,000 training rows cost what 1,600 did there (12 epochs)
VAE_STEPS = 750


def _vae(rows: np.ndarray, seed: int):
    # epochs from the training rows alone (those feature_vae_nll does not hold out), at most its default
    defaults = make_detector("feature_vae_nll").options
    trained_rows = (1 - defaults["holdout"]) * len(rows)
    epochs = min(defaults["epochs"], math.ceil(VAE_STEPS * defaults["batch_size"] / trained_rows))
    vae = make_detector("feature_vae_nll", {"seed": seed, "epochs": epochs}).fit({FEATURE_KEY: rows})
    # its score is −ELBO(f) in nats of R^D, the standardisation's Jacobian included
    return (lambda r: -vae.score({FEATURE_KEY: r})), {**vae.fit_info, "epochs": epochs}


#: name → density of the features, each fitted on the in-distribution training features only
DENSITIES = {
    "gaussian": FeatureDensity("Gaussian, Ledoit–Wolf covariance (deterministic: one fit)", False, _gaussian),
    "vae": FeatureDensity("VAE of the standardised features, Gaussian decoder (`feature_vae_nll`: its ELBO, "
                          "a lower bound of log p_feature(x); one fit per seed)", True, _vae),
}


def feature_panel(exp, out_dir: Path, pre, score_kwargs: dict) -> dict:
    """The ``feature_space`` record of experiment ``exp`` (a :class:`.fig2.Fig2Experiment` whose
    runs are trained in ``out_dir/runs``) under preset ``pre``: the module docstring. The
    backbone's features are cached in ``out_dir/features``; without the backbone's weights the
    record says why and holds nothing else."""
    reason = get_backbone(DEFAULT_BACKBONE).why_unavailable()
    if reason:
        log.warning("%s: no feature-space panel: %s", exp.name, reason)
        return {"skipped": f"needs the pretrained backbone {DEFAULT_BACKBONE!r}: {reason}"}
    runs = [Run(out_dir / "runs" / f"{v}_seed{pre.seeds[0]}") for v in exp.models]
    trained = max(r.train_data["trained_range"][1] for r in runs)
    kw = {k: score_kwargs[k] for k in ("data_dir", "device", "allow_sample", "progress")}

    def rows(dataset: str, split: str, limit: int | None):
        f = compute_feature(runs[0].path, dataset, split, "backbone", {}, limit=limit,
                            shared_cache=out_dir / "features", **kw)
        meta = feature_meta(f)
        return np.asarray(f[FEATURE_KEY], dtype=np.float64), {k: meta[k] for k in ("n", "source", "is_sample")}

    # the preset may read fewer images than the pixel panel: the backbone's pass is the panel's cost
    n_train, n_test = pre.feature_limits
    train, train_meta = rows(exp.in_dataset, "train", min(trained, n_train or trained))
    limits = [n for n in (n_test, score_kwargs["limit"]) if n]  # the tighter of the panel's and the pixels'
    test = {name: rows(name, "test", min(limits, default=None)) for name in (exp.in_dataset, *exp.ood_datasets)}
    models, first = {}, {}
    for name, density in DENSITIES.items():
        seeds = pre.seeds if density.seeded else pre.seeds[:1]
        log_p, fits = [], []
        for seed in seeds:
            log_density, info = density.fit(train, seed)
            log_p.append({d: log_density(f) for d, (f, _) in test.items()})
            fits.append(info)
        first[name] = log_p[0]
        models[name] = {
            "description": density.description, "seeded": density.seeded, "fit": fits,
            "summary": {o: {"auroc": auroc_summary([(-p[exp.in_dataset], -p[o]) for p in log_p], n_boot=pre.n_boot)}
                        for o in exp.ood_datasets},
            "mean_log_p_nats": {d: mean_sd([float(p[d].mean()) for p in log_p]) for d in test}}
    figure = histogram_panels(
        out_dir / "figures" / f"{exp.name}_feature_log_p_histograms.png",
        {f"{name} density" + (f" (seed {pre.seeds[0]})" if DENSITIES[name].seeded else ""): p
         for name, p in first.items()},
        "log p_feature(x) [nats]", f"{exp.in_dataset}: backbone features of the test sets")
    backbone = get_backbone(DEFAULT_BACKBONE)
    return {"backbone": {"name": backbone.name, "size": DEFAULT_SIZE, "feature_dim": backbone.feature_dim,
                         "pretrained_on": backbone.pretrained_on},
            "train": {"dataset": exp.in_dataset, "split": "train", "range": [0, train_meta["n"]],
                      "pixel_models_trained_on": trained, **train_meta},
            "datasets": {d: meta for d, (_, meta) in test.items()},
            "verdict": {f"{name}/{o}": s["auroc"]["text"]
                        for name, m in models.items() for o, s in m["summary"].items()},
            "figure": f"figures/{figure.name}", "models": models}


def feature_section(out: dict, level: str) -> list[str]:
    """The report's section "The same question in feature space": the feature-space verdicts
    beside the pixel ones (score ``nll``), the mean log-likelihoods and the histogram figure."""
    fs = out["feature_space"]
    head = ["## The same question in feature space", ""]
    if "skipped" in fs:
        return [*head, f"Not asked here: {fs['skipped']}.", ""]
    b, train = fs["backbone"], fs["train"]
    rows = [["pixels", f"{v} ({m['likelihood']}), −log p(x)", o, *_auroc_cells(s["auroc"])]
            for v, m in out["models"].items() if "nll" in m["summary"] for o, s in m["summary"]["nll"].items()]
    rows += [["features", f"{name}, −log p_feature(x)", o, *_auroc_cells(s["auroc"])]
             for name, m in fs["models"].items() for o, s in m["summary"].items()]
    saw = ", Tiny ImageNet's classes among them" if "tinyimagenet" in fs["datasets"] else ""
    means = [[name, d, fs["datasets"][d]["n"], pm(stat, ".1f") if m["seeded"] else f"{stat['mean']:.1f}"]
             for name, m in fs["models"].items() for d, stat in m["mean_log_p_nats"].items()]
    return [*head,
            f"The study's likelihood test asked of what the images show: the pooled features of the pretrained "
            f"`{b['name']}` at {b['size']}×{b['size']} ({b['feature_dim']} features; its weights were trained on "
            f"{b['pretrained_on']}{saw}), of the first "
            f"{train['range'][1]:,} {train['dataset']} training images ("
            + ("every image the pixel models trained on" if train["range"][1] >= train["pixel_models_trained_on"]
               else f"of the {train['pixel_models_trained_on']:,} the pixel models trained on, to keep the backbone's "
                    "pass short")
            + "), the in-distribution test set and each OOD set (images a set: the table below). The backbone "
            "brings any image to its input itself (grey repeated to RGB, bilinear resize), so every set is scored "
            "as it is, without padding. A density fitted "
            "on the training features only gives log p_feature(x) in nats; the verdict is the pixel panel's rule on "
            "−log p_feature(x), OOD positive (pixel rows and the VAE: mean ± sd over the seeds). The Gaussian is "
            "deterministic: one fit, so its interval resamples the test images only.", "",
            markdown_table(["space", "density, score", "OOD", "AUROC mean ± sd", f"{level} interval", "verdict"],
                           rows), "",
            markdown_table(["density", "dataset", "images", "mean log p_feature(x) [nats]"], means), "",
            f"![feature-space log-likelihoods]({fs['figure']})", ""]


def _auroc_cells(auroc: dict) -> list[str]:
    """AUROC (mean ± sd over seeds, or the one fit's), interval, verdict: a table row's cells."""
    point = pm(auroc) if auroc["n_seeds"] > 1 else f"{auroc['mean']:.3f} (one fit)"
    return [point, interval_text(auroc["interval"]), f"**{auroc['verdict']}**"]
