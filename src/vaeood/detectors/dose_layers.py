r"""``dose_layers``: DoSE on the per-layer statistics of a hierarchical VAE.

    T(x) = (R_1(x), …, R_L(x), LLR>1(x), …, LLR>L−1(x))
    t(x) = (T(x) − mean_fit) / sd_fit                (standardised on the fit images)
    S(x) = −Σ_i log q̂_i(t_i(x))                     (a 1-D Gaussian KDE q̂_i per statistic)

with ``R_i`` the rate of layer i, ``KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1}))`` on the image's
sampled path (the ``layer_stats`` feature, :mod:`vaeood.features.layers`), and ``LLR>k`` =
ELBO − L>k, the bound lost when the k lowest layers are drawn from the prior (the ``llr``
feature, :mod:`vaeood.inference.llr`); both on the same noise.

Morningstar et al. (AISTATS 2021), "Density of States Estimation for Out-of-Distribution
Detection", estimate the density of a model's summary statistics on held-out training
images; Havtorn et al. (ICML 2021), "Hierarchical VAEs Know What They Don't Know", show that
a hierarchical VAE's evidence is layered (the lowest layers hold pixel statistics every
natural image shares) but score one ``LLR>k`` with a k chosen per dataset pair. This detector
uses every layer and every k at once, so no k is chosen by looking at OOD data; the density
is fitted on held-out in-distribution images only. ``stats`` may name other outputs of the two
features (e.g. add ``elbo_nats``, or ``l_gt_{k}_nats``); the KDE and SVM options are DoSE's
(:mod:`vaeood.detectors.dose`). Applies to hierarchical runs only (``model.arch=hvae``).
"""

from __future__ import annotations

import re

from ..training.config import ConfigError
from .base import DETECTORS
from .dose import DoSE

_RATE = re.compile(r"rate_layer(\d+)_nats")
_LLR = re.compile(r"llr_gt_(\d+)_nats")


def layer_stat_names(features) -> list[str]:
    """Every ``rate_layer{i}_nats`` (by i) then every ``llr_gt_{k}_nats`` (by k) in ``features``."""
    found = []
    for pattern in (_RATE, _LLR):
        hits = sorted((int(m.group(1)), name) for name in features if (m := pattern.fullmatch(name)))
        found += [name for _, name in hits]
    return found


@DETECTORS.register("dose_layers")
class DoSELayers(DoSE):
    name = "dose_layers"
    paper = "Morningstar et al., AISTATS 2021 on the per-layer statistics of Havtorn et al., ICML 2021"

    def __init__(self, *, method: str | None = None, stats: tuple | list | None = None,
                 bandwidth: str | float = "scott", kde: str = "independent", nu: float = 0.1, samples: int = 1):
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"dose_layers: samples must be an integer >= 1, got {samples!r}")
        super().__init__(method=method, stats=stats, bandwidth=bandwidth, kde=kde, nu=nu)
        self.options["stats"] = list(stats) if stats else None  # None: every rate and LLR>k the model gives
        self.options["samples"] = samples

    @property
    def needs(self):
        s = self.options["samples"]
        return {"layer_stats": {"samples": s}, "llr": {"samples": s, "prior_mean": False}}

    def stat_names(self, features) -> list[str]:
        if self.options["stats"] is not None:
            return list(self.options["stats"])
        names = layer_stat_names(features)
        if not any(_RATE.fullmatch(n) for n in names):
            raise KeyError("dose_layers: the features hold no rate_layer{i}_nats (the 'layer_stats' feature of a "
                           "hierarchical VAE gives them)")
        return names

    def _fit(self, features):
        super()._fit(features)
        return {"stats": self.stats_}

    def frozen_options(self):
        return {**self.options, "stats": list(self.stats_)} if hasattr(self, "stats_") else dict(self.options)

    def why_not(self, info):
        if not info.get("hierarchical", False):
            return "needs a hierarchical VAE (model.arch=hvae)"
        return super().why_not(info)
