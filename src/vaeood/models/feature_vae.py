"""A VAE of feature vectors: the project's VAE with a Gaussian decoder, for the pooled features
of a pretrained backbone (:mod:`vaeood.features.backbone`) instead of 8-bit pixels.

With m, s the per-dimension mean and standard deviation of the in-distribution features it
is fitted on (stored with the model as buffers, so that every image is standardised by the
same numbers), t = (f − m) / s, an MLP encoder q(z|f) = N(μ(t), diag σ²(t)), the prior
p(z) = N(0, I) and the decoder :class:`~vaeood.models.likelihoods.GaussianFeatureLikelihood`,

    log p(f|z) = log N(t; μ_dec(z), diag e^ℓ) − Σ_d log s_d

(the Jacobian of the standardisation, so that log p is a density of the backbone's features
themselves, in nats; a constant, it changes no ranking). The layers are D–H–H–2Z and
Z–H–H–D with ReLU (H = 512, Z = 32 by default, D = 1280 for EfficientNet-Lite0).

It exposes what the estimators read (``posterior``, ``log_likelihood``, ``log_prior``), so the
ELBO, IWAE and the ``log_px`` / ``posterior`` / ``latent`` features are the pixel VAE's code.
Kirichenko, Izmailov & Wilson (NeurIPS 2020), "Why normalizing flows fail to detect
out-of-distribution data", fit a flow on such features; Nalisnick et al. (ICLR 2019) is the
phenomenon this model meets again (docs/findings.md, "A VAE on the backbone's features").
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..inference.gaussian import log_standard_normal
from .likelihoods import GaussianFeatureLikelihood


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FeatureVAE(nn.Module):
    """A VAE of ``D``-dimensional float features, standardised by ``feature_mean`` / ``feature_std``
    (module docstring). Build one for fit features with :meth:`for_features`."""

    def __init__(self, feature_mean, feature_std, *, hidden_dim: int = 512, latent_dim: int = 32):
        super().__init__()
        mean = torch.as_tensor(np.asarray(feature_mean), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(feature_std), dtype=torch.float32)
        if mean.dim() != 1 or std.shape != mean.shape or not bool((std > 0).all()):
            raise ValueError(f"feature_mean and feature_std must be vectors of one length with std > 0, got shapes "
                             f"{tuple(mean.shape)} and {tuple(std.shape)}")
        dim = len(mean)
        self.register_buffer("feature_mean", mean)
        self.register_buffer("feature_std", std)
        self.encoder = _mlp([dim, hidden_dim, hidden_dim, 2 * latent_dim])
        self.decoder = _mlp([latent_dim, hidden_dim, hidden_dim, dim])
        self.likelihood = GaussianFeatureLikelihood(dim)
        self.latent_dim = latent_dim
        self.num_dims = dim

    @classmethod
    def for_features(cls, features: np.ndarray, **sizes) -> FeatureVAE:
        """A new model standardising by the mean and standard deviation of ``features [N, D]``
        (the in-distribution fit features; a constant dimension gets s = 1)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or len(f) < 2:
            raise ValueError(f"features must be [N, D] with N >= 2 rows, got shape {f.shape}")
        std = f.std(axis=0)
        return cls(f.mean(axis=0), np.where(std > 0, std, 1.0), **sizes)

    def standardise(self, f: Tensor) -> Tensor:
        """t = (f − m) / s with the fit features' m and s."""
        if not f.is_floating_point() or f.dim() != 2 or f.shape[1] != self.num_dims:
            raise ValueError(f"FeatureVAE expects float features [B, {self.num_dims}], got {f.dtype} "
                             f"{tuple(f.shape)}")
        return (f.float() - self.feature_mean) / self.feature_std

    def posterior(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|f) = N(mu, diag(exp(logvar))); returns ``(mu, logvar)``, each [B, Z]."""
        mu, logvar = self.encoder(self.standardise(f)).chunk(2, dim=-1)
        return mu, logvar

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) summed over the latent axis: ``[..., Z] → [...]``."""
        return log_standard_normal(z)

    def log_likelihood(self, f: Tensor, z: Tensor) -> Tensor:
        """log p(f|z) in nats for z ``[S, B, Z]`` and features ``[B, D]`` → ``[S, B]``."""
        samples, batch = z.shape[:2]
        mean = self.decoder(z.reshape(samples * batch, -1)).view(samples, batch, -1)
        return self.likelihood.log_prob(mean, self.standardise(f)) - self.feature_std.log().sum()
