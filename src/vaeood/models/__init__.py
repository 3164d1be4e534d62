"""VAE models: architectures (``ARCHITECTURES``), likelihoods (``LIKELIHOODS``) and
:func:`build_model`, which turns a :class:`~vaeood.config.ModelConfig` into a VAE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry
from .conv import conv_decoder, conv_encoder
from .likelihoods import LIKELIHOODS, Likelihood
from .mlp import mlp_decoder, mlp_encoder
from .vae import VAE

if TYPE_CHECKING:  # config validates names against these registries, so no import back
    from ..config import ModelConfig

# arch name → function(cfg, (C, H, W), params_per_channel) → (encoder, decoder)
ARCHITECTURES = Registry("architecture")


@ARCHITECTURES.register("conv")
def _conv(cfg: ModelConfig, shape, params_per_channel: int):
    c, h, w = shape
    return (conv_encoder(c, h, w, cfg.base_channels, cfg.latent_dim),
            conv_decoder(c, h, w, cfg.base_channels, cfg.latent_dim, params_per_channel))


@ARCHITECTURES.register("mlp")
def _mlp(cfg: ModelConfig, shape, params_per_channel: int):
    c, h, w = shape
    return (mlp_encoder(c, h, w, cfg.hidden_dim, cfg.latent_dim),
            mlp_decoder(c, h, w, cfg.hidden_dim, cfg.latent_dim, params_per_channel))


def build_model(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> VAE:
    """A VAE for images ``(C, H, W)`` as the config describes."""
    likelihood = LIKELIHOODS.get(cfg.likelihood)(image_shape[0], **cfg.likelihood_options)
    encoder, decoder = ARCHITECTURES.get(cfg.arch)(cfg, image_shape, likelihood.params_per_channel)
    return VAE(encoder, decoder, likelihood, cfg.latent_dim, image_shape)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHITECTURES", "LIKELIHOODS", "Likelihood", "VAE", "build_model", "count_parameters"]
