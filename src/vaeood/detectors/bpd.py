"""``bpd``: bits per dimension, −log₂ p(x) / D.

    S(x) = −log p(x) / (D ln 2)

The likelihood test in the unit of the compression literature (Theis et al. 2016); the
same ranking as ``nll`` within one model, comparable across image sizes. Defined only
for decoders that are a normalised pmf over 8-bit values.
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS
from .nll import NLL


@DETECTORS.register("bpd")
class BitsPerDim(NLL):
    """``nll`` in bits per dimension: the same ranking, in the unit of the literature."""

    name = "bpd"
    normalised_only = True
    paper = "Theis, van den Oord & Bethge, ICLR 2016"

    def _score(self, features):
        return np.asarray(features["bpd"], dtype=np.float64)
