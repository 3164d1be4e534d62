"""``fused_content``: one score that sees what is broken (pixels) and what is different
(content), the detector a user gets by default.

Two views, each made of detectors fitted on the held-out training images:

- pixels: ``fused`` (:mod:`vaeood.detectors.fused`), the VAE's evidence: far-OOD images
  (noise, constant, another domain) and, on small grey images, near-OOD;
- content, in the features of an ImageNet-pretrained backbone, which sees objects where a VAE
  trained by the ELBO on pixels sees textures (one-class CIFAR-10 and Tiny ImageNet's
  held-out classes are at chance for the pixel view): ``feature_knn``
  (:mod:`vaeood.detectors.feature_knn`), the distance to the nearest fit images, and, where the
  fit images carry two or more classes, ``feature_energy`` (:mod:`vaeood.detectors.feature_energy`),
  how weakly a linear classifier of those classes claims the image. Without labels (one class,
  a flat folder), or with labels a classifier cannot predict better than chance from the
  features (out-of-fold, :meth:`FeatureEnergy.chance_level`), the content view is
  ``feature_knn`` alone: the fit drops ``feature_energy``, says so in ``fit_info``, and scores
  exactly as the two-view detector did before it.

Each detector's score becomes a p-value against its own out-of-fold reference, as inside
``fused`` (K folds of the fit images, an exponential tail beyond the ``tail`` quantile). With
p_px the pixel view's and p_1, …, p_m the content detectors', ``rule`` combines them:

    truncated:  S = −Σ_j log p_j + max(0, log τ − log p_px)   (default; τ = ``pixel_tail`` = 0.05)
    fisher:     S = −2 (Σ_j log p_j + log p_px)                (Fisher 1932)
    min_p:      S = max(−log p_1, …, −log p_m, −log p_px)      (Tippett 1931)

``truncated`` is the truncated product of Zaykin, Zhivotovsky, Westfall & Weir (2002),
"Truncated product method for combining p-values", applied to the pixel view alone: the
content view counts everywhere (its detectors by Fisher's sum), the pixel view only where it
is rarer than τ among in-distribution images. Why this rule, fixed before it was measured on
any OOD set: a symmetric rule adds the pixel view's in-distribution spread to every content
decision, and on photos that view is at chance for a change of content (0.49–0.60 AUROC,
measured before this detector existed), so Fisher and min-p lose part of the content view
there; what the pixel view must add — a broken image — lies in its tail, where the
exponential tail p-value keeps growing without bound, so no fixed weight can cap it. On τ:
0.05 is the level the toolkit decides at by default; nothing was tuned. Fisher's sum inside
the content view was chosen over the smaller p-value on in-distribution images alone (held-out
classes, docs/findings.md). The guarantee of ``vaeood detect`` is untouched: the score is one
fixed function of the image after ``fit``, and the conformal threshold is taken on other
held-out images.
"""

from __future__ import annotations

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS
from .feature_energy import usable_classes
from .fused import Fused

RULES = ("truncated", "fisher", "min_p")
#: the pixel view, then the content view's detectors
COMPONENTS = ("fused", "feature_knn", "feature_energy")
#: the content detector that needs the fit images' class labels (dropped at fit without them)
LABELLED = "feature_energy"


@DETECTORS.register("fused_content")
class FusedContent(Fused):
    name = "fused_content"
    paper = ("pixel fused and feature kNN (Bergman et al. 2020) with a classifier's energy (Liu et al. 2020), "
             "truncated product of p-values (Zaykin et al. 2002)")

    def __init__(self, *, components: tuple | list = COMPONENTS, rule: str = "truncated",
                 pixel_tail: float = 0.05, folds: int = 5, tail: float = 0.9, component_options: dict | None = None):
        if len(list(components)) < 2:
            raise ConfigError(f"fused_content: components are the pixel view's detector then one or more of the "
                              f"content view's, got {components!r}")
        if rule not in RULES:
            raise ConfigError(f"fused_content: rule must be one of {', '.join(RULES)}, got {rule!r}")
        if not 0.0 < float(pixel_tail) <= 1.0:
            raise ConfigError(f"fused_content: pixel_tail must be a probability in (0, 1], got {pixel_tail!r}")
        super().__init__(components=components, folds=folds, tail=tail, component_options=component_options)
        self.options.update(rule=rule, pixel_tail=float(pixel_tail))
        # one feature request per name: two content detectors reading different backbones would collide
        read = {c: d.needs["backbone"] for c, d in self.parts.items() if "backbone" in d.needs}
        if len({repr(sorted(r.items())) for r in read.values()}) > 1:
            raise ConfigError(f"fused_content: its content detectors must read the same backbone at the same size "
                              f"(give both the same component_options), got {read}")

    def why_not(self, info):
        # feature_energy's lack of classes is not the detector's: its fit drops it (below)
        return next((r for c, d in self.parts.items() if c != LABELLED and (r := d.why_not(info))), None)

    def _fit(self, features):
        # without two or more labelled classes the content view is feature_knn alone: the fit drops
        # feature_energy from its parts (the folds and a saved fit use the parts; the options stay as
        # asked, so that a calibration recognises this fit as the one it asked for)
        why = usable_classes(features.get("labels")) if LABELLED in self.parts else None
        if LABELLED in self.parts and not why:  # labels that do not follow the content would add noise
            why = self.parts[LABELLED].chance_level(features)
        if why:
            if len(self.parts) <= 2:
                raise ConfigError(f"fused_content: its content view is {LABELLED} alone, and {why}")
            del self.parts[LABELLED]
        chosen = super()._fit(features)
        return {**chosen, **({"content_without": {LABELLED: why}} if why else {})}

    def frozen_options(self):
        """Fused's, with the components the fit kept (a refit on other images repeats the drop)."""
        return {**super().frozen_options(), "components": list(self.parts)}

    def _score(self, features):
        log_p_pixel, *log_p_content = self.component_log_p(features).values()
        rule = self.options["rule"]
        if rule == "fisher":
            return -2.0 * (log_p_pixel + sum(log_p_content))
        if rule == "min_p":
            return np.maximum(-log_p_pixel, np.max([-p for p in log_p_content], axis=0))
        return -sum(log_p_content) + np.maximum(0.0, np.log(self.options["pixel_tail"]) - log_p_pixel)


# the two symmetric rules under names of their own, so that an experiment can measure them
# beside the default on the same run (docs/findings.md); options as fused_content's
@DETECTORS.register("fused_content_fisher")
class FusedContentFisher(FusedContent):
    name = "fused_content_fisher"
    paper = "pixel fused and feature kNN, Fisher's combination of p-values (Fisher 1932)"

    def __init__(self, **options):
        super().__init__(**{"rule": "fisher", **options})


@DETECTORS.register("fused_content_min_p")
class FusedContentMinP(FusedContent):
    name = "fused_content_min_p"
    paper = "pixel fused and feature kNN, the smaller p-value (Tippett 1931)"

    def __init__(self, **options):
        super().__init__(**{"rule": "min_p", **options})
