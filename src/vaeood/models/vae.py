"""The VAE: a Gaussian encoder q(z|x), a standard-normal prior p(z) and a decoder whose
output parameterises a pluggable likelihood p(x|z) over 8-bit pixels.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes". The class exposes exactly
what the estimators need — ``posterior``, ``log_likelihood`` and ``log_prior`` — so
that ELBO, IWAE and later estimators are written once for every architecture.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..inference.gaussian import log_standard_normal
from .likelihoods import Likelihood


class VAE(nn.Module):
    """Encoder, decoder and likelihood for images of shape ``image_shape = (C, H, W)``.

    Inputs are uint8 tensors ``[B, C, H, W]`` (the 8-bit data the likelihoods score);
    the encoder sees them scaled to [0, 1].
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood,
                 latent_dim: int, image_shape: tuple[int, int, int]):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self._elements_per_sample: int | None = None  # measured on first use

    @property
    def num_dims(self) -> int:
        """D = C·H·W, the number of 8-bit values per image (for bits/dim)."""
        return math.prod(self.image_shape)

    @property
    def elements_per_sample(self) -> int:
        """Tensor elements allocated per (image, latent sample) pair while decoding: z plus
        the output of every decoder layer that allocates one (views and in-place layers
        allocate nothing). The IWAE estimator sizes its sample chunks by it, so that a
        chunk's activations fit the cache on a CPU and the memory on a GPU. Measured once,
        by decoding one z with forward hooks on the decoder's leaf modules."""
        if self._elements_per_sample is None:
            sizes = []

            def record(module, inputs, output):
                shares_input = any(isinstance(i, Tensor) and i.data_ptr() == output.data_ptr() for i in inputs)
                if not shares_input:
                    sizes.append(output.numel())

            leaves = [m for m in self.decoder.modules() if next(m.children(), None) is None]
            hooks = [m.register_forward_hook(record) for m in leaves]
            try:
                weight = next(self.decoder.parameters())
                with torch.no_grad():
                    self.decoder(torch.zeros(1, self.latent_dim, device=weight.device, dtype=weight.dtype))
            finally:
                for hook in hooks:
                    hook.remove()
            self._elements_per_sample = self.latent_dim + sum(sizes)
        return self._elements_per_sample

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) = N(mu, diag(exp(logvar))); returns ``(mu, logvar)``, each [B, Z]."""
        h = self.encoder(x.float() / 255.0).float()  # fp32 even under bf16 autocast
        mu, logvar = h.chunk(2, dim=-1)
        return mu, logvar

    def log_prior(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) summed over the latent axis: ``[..., Z] → [...]``."""
        return log_standard_normal(z)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output (likelihood parameters) ``[N, C·P, H, W]`` for z ``[N, Z]``."""
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) in nats for z ``[S, B, Z]`` and x ``[B, C, H, W]`` → ``[S, B]``."""
        samples, batch = z.shape[:2]
        # log-likelihood sums stay fp32 even when the decoder runs under bf16 autocast
        params = self.decode(z.reshape(samples * batch, -1)).float()
        # the likelihood broadcasts x [B, ...] against params [S, B, ...]: no copy of x per sample
        return self.likelihood.log_prob(params.view(samples, batch, *params.shape[1:]), x)

    @torch.no_grad()
    def at_posterior_mean(self, x: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂, log p(x | z = μ)) from one decoder pass at the posterior mean ``mu`` ``[B, Z]``: the
        mean of p(x|z) in [0, 1] (as :meth:`reconstruct`) and the log-likelihood ``[B]`` in nats
        (as :meth:`log_likelihood` at ``mu[None]``), the same numbers as those two calls."""
        params = self.decode(mu).float()
        return self.likelihood.mean(params), self.likelihood.log_prob(params[None], x)[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x|z) at z = posterior mean, as floats in [0, 1] (for figures)."""
        mu, _ = self.posterior(x)
        return self.likelihood.mean(self.decode(mu))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Means of p(x|z) for z ~ p(z), floats in [0, 1] (for figures)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_dim, generator=generator, device=device)
        return self.likelihood.mean(self.decode(z))
