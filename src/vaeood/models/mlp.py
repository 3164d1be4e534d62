"""Fully connected encoder/decoder shaped like the Keras-blog VAE (784–512–z), the
architecture the study's Fig. 1 most likely comes from (Bernoulli decoder on grey
levels). Works for any image size: D = C·H·W inputs.
"""

from __future__ import annotations

from torch import nn


def mlp_encoder(channels: int, height: int, width: int, hidden: int, latent_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * height * width, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, 2 * latent_dim),
    )


def mlp_decoder(channels: int, height: int, width: int, hidden: int, latent_dim: int,
                params_per_channel: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, channels * params_per_channel * height * width),
        nn.Unflatten(1, (channels * params_per_channel, height, width)),
    )
