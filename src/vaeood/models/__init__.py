"""VAE models: architectures (``ARCHITECTURES``), likelihoods (``LIKELIHOODS``) and
:func:`build_model`, which turns a :class:`~vaeood.training.config.ModelConfig` into a VAE.

An architecture is either an encoder/decoder pair for the single-layer :class:`VAE`
(``conv``, ``mlp``) or, when its builder has ``builds_model = True``, a builder of a whole
model from ``(cfg, image_shape, likelihood, **cfg.arch_options)`` (``hvae``)."""

from __future__ import annotations

from typing import Protocol

from torch import nn

from ..infra.errors import ConfigError
from ..infra.registry import Registry, check_options
from .conv import conv_decoder, conv_encoder
from .likelihoods import LIKELIHOODS, Likelihood
from .hvae import HierarchicalVAE, build_hvae
from .mlp import mlp_decoder, mlp_encoder
from .vae import VAE


class ModelSettings(Protocol):
    """What :func:`build_model` reads of a config: :class:`vaeood.training.config.ModelConfig`
    is one. Named here, not imported, since the config (a layer above) validates its names
    against these registries."""

    arch: str
    likelihood: str
    latent_dim: int
    base_channels: int
    hidden_dim: int
    likelihood_options: dict
    arch_options: dict


# arch name → function(cfg, (C, H, W), params_per_channel) → (encoder, decoder), or, with
# builds_model = True, function(cfg, (C, H, W), likelihood, **arch_options) → model
ARCHITECTURES = Registry("architecture")


@ARCHITECTURES.register("conv")
def _conv(cfg: ModelSettings, shape, params_per_channel: int):
    c, h, w = shape
    return (conv_encoder(c, h, w, cfg.base_channels, cfg.latent_dim),
            conv_decoder(c, h, w, cfg.base_channels, cfg.latent_dim, params_per_channel))


@ARCHITECTURES.register("mlp")
def _mlp(cfg: ModelSettings, shape, params_per_channel: int):
    c, h, w = shape
    return (mlp_encoder(c, h, w, cfg.hidden_dim, cfg.latent_dim),
            mlp_decoder(c, h, w, cfg.hidden_dim, cfg.latent_dim, params_per_channel))


ARCHITECTURES.register("hvae")(build_hvae)
build_hvae.builds_model = True


def build_model(cfg: ModelSettings, image_shape: tuple[int, int, int]) -> VAE | HierarchicalVAE:
    """A VAE for images ``(C, H, W)`` as the config describes."""
    likelihood = LIKELIHOODS.get(cfg.likelihood)(image_shape[0], **cfg.likelihood_options)
    builder = ARCHITECTURES.get(cfg.arch)
    options = dict(cfg.arch_options or {})
    if getattr(builder, "builds_model", False):
        check_options(builder, options, "model.arch", cfg.arch, ("cfg", "image_shape", "likelihood"))
        return builder(cfg, image_shape, likelihood, **options)
    if options:
        raise ConfigError(f"model.arch {cfg.arch!r} takes no arch_options (got {', '.join(sorted(options))}); "
                          "they are for model.arch 'hvae'")
    encoder, decoder = builder(cfg, image_shape, likelihood.params_per_channel)
    return VAE(encoder, decoder, likelihood, cfg.latent_dim, image_shape)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def architecture_summary(model) -> dict:
    """What a run records of its model's size: ``num_parameters`` and ``downsampling_stages``,
    the stride-2 convolutions that halve the image (0 for an MLP; see :mod:`.conv`)."""
    stages = sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in model.modules())
    return {"num_parameters": count_parameters(model), "downsampling_stages": stages}


__all__ = ["ARCHITECTURES", "LIKELIHOODS", "HierarchicalVAE", "Likelihood", "VAE", "build_hvae", "build_model",
           "count_parameters", "architecture_summary", "ModelSettings"]
