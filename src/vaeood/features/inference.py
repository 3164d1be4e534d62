"""Features that revisit each image's inference: likelihood regret (the bound's gain when
the inference for one image is optimised, :mod:`vaeood.inference.regret`) and the hierarchical
bounds L>k of a hierarchical VAE (:mod:`vaeood.inference.llr`). Registered here so that the
feature cache, the detectors and ``vaeood evaluate`` reach them like any other feature."""

from __future__ import annotations

from ..inference.llr import llr_bounds
from ..inference.regret import likelihood_regret
from .core import FEATURES

FEATURES.register("regret")(likelihood_regret)  # needs_grad: it optimises per-image parameters
FEATURES.register("llr")(llr_bounds)
