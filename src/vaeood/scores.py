"""OOD scores: functions of an image's per-image estimates where higher = more
out-of-distribution. A name → function registry; each takes the arrays that
:func:`vaeood.scoring.score` returns and gives one number per image.
"""

from __future__ import annotations

import numpy as np

from .registry import Registry

SCORES = Registry("score")


@SCORES.register("nll")
def negative_log_likelihood(scores: dict[str, np.ndarray]) -> np.ndarray:
    """−log p(x) in nats (from the ELBO or IWAE estimate): the likelihood test of
    Bishop (1994) that Nalisnick et al. (2019) showed can rank SVHN as *more* likely
    than CIFAR-10 under a CIFAR-10 model. Bits/dim would give the same ranking."""
    return -np.asarray(scores["log_px_nats"], dtype=np.float64)
