"""``feature_knn``: how far an image's content lies from the nearest held-out training images.

With f(x) the pooled features of a frozen ImageNet-pretrained backbone
(:mod:`vaeood.features.backbone`), unit-normalised, f̄ = f / ‖f‖₂, and f̄_(1), …, f̄_(k) the k
nearest fit images' features by cosine distance,

    S(x) = (1/k) Σ_{i=1..k} (1 − f̄(x) · f̄_(i)(x))        (mean cosine distance, k = 2)

Bergman, Cohen & Hoshen (2020), "Deep nearest neighbor anomaly detection": kNN on the
features of an ImageNet-pretrained network, k = 2, beats one-class methods trained from
scratch; Sun, Ming, Zhu & Li (ICML 2022) the same with normalised features. The backbone saw
ImageNet's 1,000 classes: results say so.

Unlike a density of the features (``feature_gaussian``), a distance keeps images the
backbone maps to an unusual place — uniform noise, constant images — far from every
training image (the feature-space likelihood ranks them *most* likely: docs/findings.md).
"""

from __future__ import annotations

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS
from .feature_base import FeatureDetector

#: fit rows compared at a time with a block of images (bounds a block's distance matrix)
BLOCK = 1024


def unit_rows(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` cosine distances of unit rows."""
    return 1.0 - a @ b.T


def mean_knn_distance(queries: np.ndarray, reference: np.ndarray, k: int, distances=cosine_distances) -> np.ndarray:
    """``[N]``: the mean ``distances`` of each row of ``queries`` to its ``k`` nearest rows of
    ``reference`` (exact, in blocks of :data:`BLOCK` queries)."""
    out = np.empty(len(queries))
    for start in range(0, len(queries), BLOCK):
        nearest = np.partition(distances(queries[start:start + BLOCK], reference), k - 1, axis=1)[:, :k]
        out[start:start + BLOCK] = nearest.mean(axis=1)
    return out


def check_k(detector: str, k) -> int:
    """``k`` of a kNN detector: an integer ≥ 1, else a :class:`ConfigError` naming ``detector``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{detector}: k must be an integer >= 1, got {k!r}")
    return k


@DETECTORS.register("feature_knn")
class FeatureKNN(FeatureDetector):
    name = "feature_knn"
    paper = "Bergman, Cohen & Hoshen 2020 (deep nearest-neighbour anomaly detection)"

    def __init__(self, *, k: int = 2, backbone: str | None = None, size: int | None = None):
        super().__init__(k=check_k(self.name, k), backbone=backbone, size=size)

    def _fit(self, features):
        self.reference = unit_rows(self.rows(features))
        if self.options["k"] > len(self.reference):
            raise ConfigError(f"feature_knn: k = {self.options['k']} but only {len(self.reference)} fit images")

    def _score(self, features):
        return mean_knn_distance(unit_rows(self.rows(features)), self.reference, self.options["k"])

