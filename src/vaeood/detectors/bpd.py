"""``bpd``: bits per dimension, −log₂ p(x) / D.

    S(x) = −log p(x) / (D ln 2)

The likelihood test in the unit of the compression literature (Theis et al. 2016); the
same ranking as ``nll`` within one model, comparable across image sizes. Defined only
for decoders that are a normalised pmf over 8-bit values.
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector, estimate_need


@DETECTORS.register("bpd")
class BitsPerDim(Detector):
    name = "bpd"
    normalised_only = True
    paper = "Theis, van den Oord & Bethge, ICLR 2016"

    def __init__(self, *, estimator: str = "elbo", estimator_options: dict | None = None):
        super().__init__(estimator=estimator, estimator_options=dict(estimator_options or {}))

    @property
    def needs(self):
        return {"log_px": estimate_need(self.options["estimator"], self.options["estimator_options"])}

    def _score(self, features):
        return np.asarray(features["bpd"], dtype=np.float64)
