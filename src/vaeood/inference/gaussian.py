"""Diagonal-Gaussian pieces shared by the estimators, the training objectives, the
test-time refinement and the models: log 2π, the reparameterised noise draw and the log
densities, all in nats and summed over the latent axis (the last dim)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ..infra.errors import ConfigError
from .noise import ImageNoise

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal(num: int, like: Tensor, generator: torch.Generator | ImageNoise | None) -> Tensor:
    """``[num, B, Z]`` standard-normal noise, one ``[B, Z]`` draw per sample index.

    Drawing sample by sample (rather than one ``[num, B, Z]`` call) makes the noise of
    sample k independent of how the samples are chunked: torch's samplers lay out a big
    draw differently from a sequence of small ones. With an :class:`vaeood.inference.noise.ImageNoise`
    as ``generator`` each image's rows come from its own stream, keyed on its bytes and
    the seed (chunk-independent too), so they do not depend on the batch.
    """
    if isinstance(generator, ImageNoise):
        return generator.normal(num, like.shape[-1], like)
    draws = [torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
             for _ in range(num)]
    return draws[0][None] if num == 1 else torch.stack(draws)


def log_prob_from_eps(eps: Tensor, logvar: Tensor) -> Tensor:
    r"""log N(mu + σ·ε; mu, diag σ²) summed over Z, from ε (exact, no division by σ):
    :math:`-\tfrac12 \sum_j (\varepsilon_j^2 + \log\sigma_j^2 + \log 2\pi)`."""
    return -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(dim=-1)


def log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    r"""log N(z; mu, diag e^logvar) summed over Z; differentiable in mu and logvar at a
    fixed ``z`` (the score function that forward-KL encoder updates need)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over Z: ``[..., Z] → [...]``."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    r"""KL(N(mu, diag e^logvar) ‖ N(0, I)) in nats, summed over the last dim:
    :math:`\tfrac12 \sum_j (\mu_j^2 + e^{\ell_j} - 1 - \ell_j)`."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)


def check_positive_int(name: str, value) -> int:
    """``value`` as an int, or a :class:`vaeood.infra.errors.ConfigError` (a ValueError) naming
    ``name`` when it is not an integer ≥ 1 (a text or None included: the user's value, not a bug)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or int(value) != value or value < 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
