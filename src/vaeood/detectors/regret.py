"""``likelihood_regret``: how much an image's bound on log p(x) improves when the
inference for that image alone is optimised, the decoder fixed.

    S(x) = B(x; φ*_x) − B(x; φ),    φ*_x ≈ argmax_φ' ELBO(x; φ')

with B the IWAE-K bound before and after (see :mod:`vaeood.inference.regret` for the variants and
the measured defaults). Xiao, Yan & Amit (NeurIPS 2020), "Likelihood Regret: An
Out-of-Distribution Detection Score for Variational Auto-encoder": the amortised encoder
fits in-distribution images already, so they gain little; OOD images gain more. Needs no
fitting. The paper's own per-image procedure (a deep copy of the whole encoder, 100 Adam
steps, IWAE-1000) is ``variant="encoder"``; the default is the batched per-image head
that measured faster and better separating in ``benchmarks/regret_speed.py``.
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector


@DETECTORS.register("likelihood_regret")
class LikelihoodRegret(Detector):
    name = "likelihood_regret"
    paper = "Xiao, Yan & Amit, NeurIPS 2020"

    def __init__(self, *, variant: str = "head", steps: int | None = None, lr: float | None = None,
                 bound: str = "iwae", k: int | None = None):
        super().__init__(variant=variant, steps=steps, lr=lr, bound=bound, k=k)

    @property
    def needs(self):
        # only the options set: the feature's own defaults (measured in regret.py) fill the rest
        return {"regret": {k: v for k, v in self.options.items() if v is not None}}

    def _score(self, features):
        return np.asarray(features["regret_nats"], dtype=np.float64)
