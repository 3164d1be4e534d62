"""``joint_knn``: one density over both views, the alternative to combining two p-values.

The distance to the nearest held-out training images in the joint space of what an image
shows (the backbone's features) and how its pixels are made (the pixel VAE's statistics):

    u(x) = f(x) / ‖f(x)‖₂                         content: unit pooled backbone features (D = 1280)
    t(x) = (T(x) − mean_fit) / sd_fit             pixels: ``dose_plus``'s statistics T(x) =
                                                  (log p(x) [ELBO], L_PNG(x)/D, log ‖x − x̂(x)‖₂)
    d(x, i)² = ‖u(x) − u_i‖² / s_u² + ‖t(x) − t_i‖² / s_t²
    S(x) = (1/k) Σ_{the k nearest fit images i} d(x, i)        (k = 2)

A kNN distance is a density estimate (Loftsgaarden & Quesenberry 1965): S is one density over
both views, so no weight between them is chosen, only the unit each block is measured in.
``s_u`` and ``s_t`` are the median pairwise distances of each block among the fit images: the
size of the in-distribution cloud in that block. Why that unit, fixed before any OOD set was
scored: nearest-neighbour distances shrink with the number of images much faster in the
3 pixel statistics than in 1,280 feature dimensions, so scaling each block by its own
nearest-neighbour distance would let the low-dimensional block choose the neighbours; the
pairwise spread does not depend on the blocks' dimensions that way.

Kirichenko, Izmailov & Wilson (NeurIPS 2020) fit one density to pretrained features; Bergman,
Cohen & Hoshen (2020) the kNN on them; Morningstar et al. (AISTATS 2021) the density of a
VAE's statistics. Measured against ``fused_content``'s rules in docs/findings.md.
"""

from __future__ import annotations

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS, stack, standardise_fit
from .dose_plus import DOSE_PLUS_STATS, DoSEPlus
from .feature_base import FeatureDetector
from .feature_knn import check_k, mean_knn_distance, unit_rows


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]`` squared Euclidean distances, never below 0 (rounding)."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def median_pairwise_distance(x: np.ndarray) -> float:
    """The median Euclidean distance over the distinct pairs of rows of ``x``."""
    d = squared_distances(x, x)[np.triu_indices(len(x), k=1)]
    return float(np.sqrt(np.median(d)))


@DETECTORS.register("joint_knn")
class JointKNN(FeatureDetector):
    name = "joint_knn"
    paper = "kNN density over backbone features and the VAE's statistics (Bergman et al. 2020; Morningstar et al. 2021)"

    def __init__(self, *, k: int = 2, backbone: str | None = None, size: int | None = None):
        super().__init__(k=check_k(self.name, k), backbone=backbone, size=size)

    @property
    def needs(self):
        return {**DoSEPlus().needs, **super().needs}

    def _blocks(self, features) -> tuple[np.ndarray, np.ndarray]:
        return unit_rows(self.rows(features)), (stack(features, DOSE_PLUS_STATS) - self.mean) / self.std

    def _fit(self, features):
        if self.options["k"] >= len(self.rows(features)):
            raise ConfigError(f"joint_knn: k = {self.options['k']} needs more fit images than that, "
                              f"got {len(self.rows(features))}")
        self.mean, self.std = standardise_fit(stack(features, DOSE_PLUS_STATS))
        u, t = self._blocks(features)
        self.scale_ = (max(median_pairwise_distance(u), 1e-12), max(median_pairwise_distance(t), 1e-12))
        self.reference = self._joint(u, t)
        return {"scale_content": self.scale_[0], "scale_pixels": self.scale_[1]}

    def _score(self, features):
        return mean_knn_distance(self._joint(*self._blocks(features)), self.reference, self.options["k"],
                                 lambda a, b: np.sqrt(squared_distances(a, b)))

    def _joint(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The rows of the joint space: each block in units of its fit images' pairwise spread."""
        return np.hstack([u / self.scale_[0], t / self.scale_[1]])
