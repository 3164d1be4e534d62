"""Convolutional encoder/decoder: the Fig. 2 model of the study, with its width
(``base_channels``) and latent size as the capacity knobs of Dai & Wipf (2019).

Two stride-2 convolutions halve the image twice (28→14→7, 32→16→8), a linear layer
maps to the 2·Z posterior parameters; the decoder mirrors it with transposed
convolutions and emits ``C·P`` channels, P being the likelihood's parameters per
pixel value.
"""

from __future__ import annotations

from torch import nn


def conv_encoder(channels: int, height: int, width: int, base: int, latent_dim: int) -> nn.Module:
    _check_divisible(height, width)
    h, w = height // 4, width // 4
    return nn.Sequential(
        nn.Conv2d(channels, base, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(base, 2 * base, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * base * h * w, 2 * latent_dim),
    )


def conv_decoder(channels: int, height: int, width: int, base: int, latent_dim: int,
                 params_per_channel: int) -> nn.Module:
    _check_divisible(height, width)
    h, w = height // 4, width // 4
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * base * h * w), nn.ReLU(),
        nn.Unflatten(1, (2 * base, h, w)),
        nn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(base, channels * params_per_channel, 4, stride=2, padding=1),
    )


def _check_divisible(height: int, width: int) -> None:
    if height % 4 or width % 4:
        raise ValueError(f"the conv VAE needs image height and width divisible by 4, got {height}×{width}; "
                         "use arch 'mlp' or pad the images")
