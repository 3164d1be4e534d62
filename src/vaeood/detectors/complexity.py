"""``complexity`` / ``complexity_jxl``: likelihood corrected by input complexity.

    S(x) = −log₂ p(x) / D − L(x) / D          (bits/dim on both sides)

with L(x) the size in bits of x compressed by a lossless codec: PNG (``complexity``)
or JPEG-XL, FLIF's successor (``complexity_jxl``). Serrà, Álvarez, Gómez, Slizovskaia,
Núñez & Luque (ICLR 2020), "Input complexity and out-of-distribution detection with
likelihood-based generative models": simple images get high likelihood because they
are simple; subtracting a generic compressor's code length leaves the part of the
likelihood the model explains beyond generic simplicity (a likelihood ratio against a
universal model). Needs bits/dim (a normalised decoder).
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector, estimate_need


@DETECTORS.register("complexity")
class Complexity(Detector):
    name = "complexity"
    normalised_only = True
    paper = "Serrà et al., ICLR 2020"
    default_codec = "png"

    def __init__(self, *, estimator: str = "elbo", estimator_options: dict | None = None, codec: str | None = None):
        codec = codec or self.default_codec
        if codec not in ("png", "jxl"):
            raise ValueError(f"complexity: codec must be 'png' or 'jxl', got {codec!r}")
        super().__init__(estimator=estimator, estimator_options=dict(estimator_options or {}), codec=codec)

    @property
    def needs(self):
        return {"log_px": estimate_need(self.options["estimator"], self.options["estimator_options"]),
                "compressed": {"codec": self.options["codec"]}}

    def _score(self, features):
        codec = self.options["codec"]
        return np.asarray(features["bpd"], dtype=np.float64) - np.asarray(features[f"{codec}_bpd"], dtype=np.float64)


@DETECTORS.register("complexity_jxl")
class ComplexityJXL(Complexity):
    """``complexity`` with the lossless JPEG-XL code length."""

    name = "complexity_jxl"
    default_codec = "jxl"
