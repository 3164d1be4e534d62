"""``llr``: the likelihood ratio LLR>k of a hierarchical VAE.

    S(x) = LLR>k(x) = L(x) − L>k(x)

with L the ELBO and L>k the bound with the k lowest latent layers drawn from the
conditional prior instead of the posterior (:mod:`vaeood.inference.llr`). Havtorn, Frellsen,
Hauberg & Maaløe (ICML 2021), "Hierarchical VAEs Know What They Don't Know": the lowest
layers model low-level statistics any natural image shares, so removing their
posterior information costs in-distribution images more (their semantics sit in the
higher layers the model knows) than OOD images. The paper's k: 1 for Fashion-MNIST →
MNIST, 2 for CIFAR-10 → SVHN; k is set by the user (default 1) and must be below the
number of latent layers. Applies to hierarchical runs only (``model.arch=hvae``).
"""

from __future__ import annotations

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS, Detector, ModelSpec


@DETECTORS.register("llr")
class LLR(Detector):
    name = "llr"
    paper = "Havtorn et al., ICML 2021"
    # three latent layers (z1 spatial), KL warm-up and free nats, as in experiments/hvae_llr.py
    runs_on = ModelSpec("hvae", {
        "model.arch": "hvae",
        "model.arch_options": '{"latent_dims": [8, 16, 8], "widths": [256, 256], "bottom": "spatial"}',
        "train.objective": "elbo_warmup",
        "train.objective_options": '{"warmup_epochs": 2, "free_nats": 2.0, "free_nats_epochs": 4}'})

    def __init__(self, *, k: int = 1, samples: int = 1, prior_mean: bool = False):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"llr: k must be an integer >= 1 (the number of lowest layers taken from the prior), "
                              f"got {k!r}")
        super().__init__(k=k, samples=samples, prior_mean=prior_mean)

    @property
    def needs(self):
        return {"llr": {"samples": self.options["samples"], "prior_mean": self.options["prior_mean"]}}

    def _score(self, features):
        key = f"llr_gt_{self.options['k']}_nats"
        if key not in features:
            layers = sorted(k for k in features if k.startswith("llr_gt_"))
            raise ConfigError(f"llr: k = {self.options['k']} needs a model with more than {self.options['k']} latent "
                              f"layers; this one gives {', '.join(layers) or 'none'}")
        return np.asarray(features[key], dtype=np.float64)

    def why_not(self, info):
        if not info.get("hierarchical", False):
            return "needs a hierarchical VAE (model.arch=hvae)"
        return super().why_not(info)
