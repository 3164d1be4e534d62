"""``likelihood_ratio``: the model against a background model.

    R(x) = log p_θ(x) − log p_θ₀(x),        S(x) = −R(x) = log p_θ₀(x) − log p_θ(x)

R is the *background ratio* (the paper writes it LLR; in vaeood ``llr`` is only Havtorn
et al.'s hierarchical LLR>k, :mod:`vaeood.detectors.llr`).

Ren, Liu, Fertig, Snoek, Poplin, DePristo, Dillon & Lakshminarayanan (NeurIPS 2019),
"Likelihood ratios for out-of-distribution detection". p_θ₀ is a *background* model
trained on the same training images with each pixel replaced, with probability μ
(0.1–0.3 in the paper), by a uniform random value, and an L2 penalty on the weights:
it learns the population-level background statistics, so the ratio cancels them and
keeps the semantic part. Train one with ``vaeood train BG --data.noise_rate=0.2
--train.weight_decay=1e-4`` (the other settings as the model's) and pass
``background_run="BG"``. When the background is the model itself, S(x) = 0 exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS, Detector, ModelSpec, estimate_need


@DETECTORS.register("likelihood_ratio")
class LikelihoodRatio(Detector):
    name = "likelihood_ratio"
    required = ("background_run",)
    # the background: the same VAE on the same images with each pixel replaced by uniform noise
    # at rate μ = 0.2 and an L2 penalty on the weights (Ren et al. 2019, μ in 0.1–0.3)
    companions = {"background_run": ModelSpec("background", {"data.noise_rate": "0.2",
                                                             "train.weight_decay": "0.0001"})}
    paper = "Ren et al., NeurIPS 2019"

    def companion_warnings(self, option, companion, run):
        """The ratio needs both models to give log-likelihoods of the same kind (the same
        decoder likelihood): refused otherwise. The paper's background is trained with pixel
        noise μ = 0.1–0.3 and an L2 penalty; without them (an ablation the paper reports) the
        ratio cancels little: said, not refused."""
        if companion.model.likelihood != run.model.likelihood:
            raise ConfigError(f"detector 'likelihood_ratio': background_run has a {companion.model.likelihood} "
                              f"decoder and the run a {run.model.likelihood} one; their log-likelihoods are not "
                              f"comparable: train the background with --model.likelihood={run.model.likelihood}")
        out = []
        if not companion.data.noise_rate:
            out.append("background_run was trained without pixel noise (data.noise_rate = 0); Ren et al. train "
                       "the background with noise at μ = 0.1–0.3 (--data.noise_rate=0.2), without which it "
                       "learns the same statistics as the model and the ratio is close to 0")
        if not companion.train.weight_decay:
            out.append("background_run was trained without an L2 penalty (train.weight_decay = 0); Ren et al. "
                       "use one (--train.weight_decay=1e-4)")
        return out

    def __init__(self, *, background_run=None, estimator: str = "elbo", estimator_options: dict | None = None):
        if isinstance(background_run, Path):
            background_run = str(background_run)
        super().__init__(background_run=background_run, estimator=estimator,
                         estimator_options=dict(estimator_options or {}))

    @property
    def needs(self):
        est = estimate_need(self.options["estimator"], self.options["estimator_options"])
        return {"log_px": est, "background": {"feature": "log_px", "run": self.options["background_run"], **est}}

    def _score(self, features):
        return (np.asarray(features["background/log_px_nats"], dtype=np.float64)
                - np.asarray(features["log_px_nats"], dtype=np.float64))
