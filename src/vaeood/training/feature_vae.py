"""Training the feature VAE (:class:`vaeood.models.feature_vae.FeatureVAE`) on feature vectors.

The loss is the pixel VAE's: the negative ELBO, one reparameterised sample, analytic KL
(the ``elbo`` objective, Kingma & Welling 2014), minimised by Adam on shuffled mini-batches.
A few thousand 1,280-dimensional vectors train in seconds on a CPU, so this is a function,
not a run directory: the feature-space detectors train it inside their ``fit``
(:mod:`vaeood.detectors.feature_vae`). Deterministic for a seed, without touching the
caller's random state.
"""

from __future__ import annotations

import numpy as np
import torch

from ..inference.gaussian import check_positive_int
from ..inference.objectives import elbo_objective
from ..models.feature_vae import FeatureVAE


def train_feature_vae(features: np.ndarray, *, hidden_dim: int = 512, latent_dim: int = 32, epochs: int = 60,
                      lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> tuple[FeatureVAE, list[float]]:
    """A :class:`FeatureVAE` standardised by and trained on ``features [N, D]`` (in-distribution
    only), and the mean loss (−ELBO, nats per vector) of each epoch."""
    for name, value in (("hidden_dim", hidden_dim), ("latent_dim", latent_dim), ("epochs", epochs),
                        ("batch_size", batch_size)):
        check_positive_int(name, value)
    if not lr > 0:
        raise ValueError(f"lr must be a positive learning rate, got {lr!r}")
    x = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureVAE.for_features(features, hidden_dim=hidden_dim, latent_dim=latent_dim)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(epochs):
            total = 0.0
            for index in torch.randperm(len(x)).split(batch_size):
                loss = elbo_objective(model, x[index])["loss"]
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(index)
            losses.append(total / len(x))
    return model.eval(), losses
