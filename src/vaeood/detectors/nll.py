"""``nll``: the likelihood test, −log p(x) in nats.

    S(x) = −log p(x)    (ELBO or IWAE-K estimate)

Bishop (1994), "Novelty detection and neural network validation"; Nalisnick et al.
(ICLR 2019), "Do deep generative models know what they don't know?", showed that it can
rank OOD images (SVHN under a CIFAR-10 model, MNIST under a Fashion-MNIST model) as
*more* likely than in-distribution ones (AUROC well below 0.5).
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector, estimate_need


@DETECTORS.register("nll")
class NLL(Detector):
    name = "nll"
    paper = "Bishop 1994; Nalisnick et al. ICLR 2019"

    def __init__(self, *, estimator: str = "elbo", estimator_options: dict | None = None):
        super().__init__(estimator=estimator, estimator_options=dict(estimator_options or {}))

    @property
    def needs(self):
        return {"log_px": estimate_need(self.options["estimator"], self.options["estimator_options"])}

    def _score(self, features):
        return -np.asarray(features["log_px_nats"], dtype=np.float64)
