"""``feature_gaussian``: the likelihood of an image's content under one Gaussian of the
backbone's features.

With f(x) the pooled features of a frozen ImageNet-pretrained backbone
(:mod:`vaeood.features.backbone`), m their mean on the fit images and Σ̂ the Ledoit–Wolf
shrinkage estimate of their covariance (Ledoit & Wolf 2004, "A well-conditioned estimator
for large-dimensional covariance matrices": Σ̂ = (1 − δ) S + δ μ I with the shrinkage δ that
minimises the expected Frobenius loss, needed since D = 1280 features are fitted on a few
thousand images),

    S(x) = (f(x) − m)ᵀ Σ̂⁻¹ (f(x) − m)        (the squared Mahalanobis distance: −2 log N(f; m, Σ̂) + const)

and the log density itself, in nats of R^D (:meth:`FeatureGaussian.log_density_nats`),

    log N(f(x); m, Σ̂) = −½ (S(x) + log det Σ̂ + D log 2π)

Lee, Lee, Lee & Shin (NeurIPS 2018) with one class; Rippel, Mertens & Merhof (ICPR 2020),
"Modeling the distribution of normal data in pre-trained deep features for anomaly
detection", with this estimator. It is the likelihood test of the study asked in feature
space, and it meets the study's phenomenon again: uniform noise and constant images get a
*smaller* distance than the training photos (docs/findings.md). Use it to measure, not to
decide: ``feature_knn`` is the feature-space detector of the recommended default.
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS
from .feature_base import FeatureDetector


@DETECTORS.register("feature_gaussian")
class FeatureGaussian(FeatureDetector):
    name = "feature_gaussian"
    paper = "Lee et al. 2018; Rippel et al. 2020 (Gaussian of pretrained features, Ledoit–Wolf)"

    def __init__(self, *, backbone: str | None = None, size: int | None = None):
        super().__init__(backbone=backbone, size=size)

    def _fit(self, features):
        from sklearn.covariance import LedoitWolf

        # the covariance only (sklearn's precision_ is a pseudo-inverse: an SVD, 10x the time of an inverse of
        # this shrunk, well-conditioned matrix)
        estimate = LedoitWolf(store_precision=False).fit(self.rows(features))
        self.mean, self.precision = estimate.location_, np.linalg.inv(estimate.covariance_)
        return {"shrinkage": float(estimate.shrinkage_)}

    def _score(self, features):
        t = self.rows(features) - self.mean
        return ((t @ self.precision) * t).sum(axis=1)

    def log_density_nats(self, features) -> np.ndarray:
        """log N(f(x); m, Σ̂) ``[N]`` in nats (module docstring): the score S(x) with its constant."""
        log_det = -np.linalg.slogdet(self.precision)[1]  # log det Σ̂ = −log det Σ̂⁻¹
        return -0.5 * (self.score(features) + log_det + len(self.mean) * np.log(2 * np.pi))
