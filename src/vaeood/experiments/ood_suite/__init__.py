"""The OOD detector suite (``vaeood reproduce ood-suite``): every detector on every pair.

For each in-distribution dataset (Fashion-MNIST, MNIST, CIFAR-10 where it exists, Tiny
ImageNet's 64×64 photos where a ``tinyimagenet64/`` folder is in the data dir: :mod:`.photos`)
and each seed it trains what the detectors need, as each detector class declares it
(``runs_on`` and ``companions``, :class:`vaeood.detectors.base.ModelSpec`; read by
:mod:`.planning`, so a new detector needs no edit here). With the suite's detectors:

- ``main``: the conv VAE with the discretised-logistic decoder (the model of Fig. 2a);
  every single-model detector (``nll``, ``bpd``, ``complexity``, ``typicality``,
  ``dose``, ``lpath``, ...) runs on it;
- ``background``: the same VAE trained on the same images with each pixel replaced by
  uniform noise at rate μ and an L2 penalty on the weights (Ren et al. 2019), for
  ``likelihood_ratio``;
- ``wide`` and ``small``: the same VAE with a very wide and a very small latent, for
  LPath's two-model variant ``lpath_2m`` (Huang et al. 2024);
- ``hvae``: a three-layer hierarchical VAE on the same budget, for ``llr`` (Havtorn et
  al. 2021),

then scores the in-distribution test set against every OOD set: the other grey-scale
dataset (MNIST ↔ Fashion-MNIST); for CIFAR-10, MNIST padded to 32×32 RGB (``conform="pad"``),
Tiny ImageNet and SVHN where they are on disk; and, for every model, uniform-noise and
constant images, generated deterministically (seed :data:`SYNTHETIC_SEED`, the same
images for every model seed), and the family's own test images rotated by 90°, written as
datasets in ``OUT/runs/data/``. The Tiny ImageNet photo family is tested on the validation
photos of its classes against those of the other classes, noise and constant images; it
trains no model beside ``main`` (no detector that declares one). The rotated images and
natural images of other classes are *near*-OOD (typical pixel statistics, wrong content),
the rest *far*-OOD; the verdict names the best detector for each kind, and the report gives
the default detector ``fused_content`` (pixels and an ImageNet-pretrained backbone's
content view; the report says the backbone saw ImageNet, whose classes overlap CIFAR-10's
and Tiny ImageNet's) and its pixel view ``fused`` with their intervals on every pair.
Detectors that fit are
fitted on a held-out slice of the training split (the images after ``data.limit``),
recorded in ``metrics.json`` and the report.

For each detector the conformal decisions of :mod:`vaeood.decisions` are calibrated on
held-out training images after its fitting slice, and the report gives the realised
false-alarm rate and the TPR at α = 0.01, 0.05, 0.1 beside the AUROC.

The report gives AUROC, AUPRC and FPR@95%TPR as mean ± sd over the seeds, ROC curves
and score histograms per detector, the time each detector costs (its features, fit and
scoring, plus the training of any extra model it needs), and a closing "which detector
to use" summary computed from the numbers.
"""

from __future__ import annotations

from ..common import EXPERIMENTS
from .presets import (BACKBONE_DETECTORS, DEFAULT_DETECTOR, PIXEL_DETECTOR, SUITE_DETECTORS, FAMILIES, PRESETS,
                      SYNTHETIC, SYNTHETIC_SEED, Family, SuitePreset)
from .suite import OODSuite
from .summary import aggregate, decision_summary, verdict
from .paths import scrub_paths
from .synthetic import synthetic_images, write_rotated, write_synthetic

EXPERIMENTS.register("ood-suite")(OODSuite(
    name="ood-suite",
    title="OOD detector suite: every detector on every pair",
    families=FAMILIES,
    presets=PRESETS,
))


__all__ = ["BACKBONE_DETECTORS", "DEFAULT_DETECTOR", "PIXEL_DETECTOR", "SUITE_DETECTORS", "FAMILIES", "PRESETS",
           "SYNTHETIC", "SYNTHETIC_SEED", "Family", "OODSuite", "SuitePreset", "aggregate", "decision_summary",
           "scrub_paths", "synthetic_images", "verdict", "write_rotated", "write_synthetic"]
