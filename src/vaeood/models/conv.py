"""Convolutional encoder/decoder: the Fig. 2 model of the study, with its width
(``base_channels``) and latent size as the capacity knobs of Dai & Wipf (2019).

Two stride-2 convolutions halve the image twice (28→14→7, 32→16→8), a linear layer
maps to the 2·Z posterior parameters; the decoder mirrors it with transposed
convolutions and emits ``C·P`` channels, P being the likelihood's parameters per
pixel value.
"""

from __future__ import annotations

import torch
from torch import nn

from ..infra.errors import ConfigError


class OutputConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's output layer. With few output channels (one per pixel value for a
    Bernoulli grey-level decoder) PyTorch's own im2col + GEMM kernel is faster on the CPU
    than oneDNN's, so oneDNN is switched off for this layer alone there
    (``benchmarks/layer_speed.py``). Same parameters and state-dict keys as its base."""

    def forward(self, x):
        if not (x.is_cpu and self.out_channels <= 4):
            return super().forward(x)
        # only the "enabled" flag: mkldnn.flags() would also reset TF32/precision settings
        enabled = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)[0]
        try:
            return super().forward(x)
        finally:
            torch.backends.mkldnn.set_flags(_enabled=enabled, _fp32_precision=None)


def conv_encoder(channels: int, height: int, width: int, base: int, latent_dim: int) -> nn.Module:
    check_divisible(height, width)
    h, w = height // 4, width // 4
    return nn.Sequential(
        nn.Conv2d(channels, base, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(base, 2 * base, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(2 * base * h * w, 2 * latent_dim),
    )


def conv_decoder(channels: int, height: int, width: int, base: int, latent_dim: int,
                 params_per_channel: int) -> nn.Module:
    check_divisible(height, width)
    h, w = height // 4, width // 4
    return nn.Sequential(
        nn.Linear(latent_dim, 2 * base * h * w), nn.ReLU(inplace=True),
        nn.Unflatten(1, (2 * base, h, w)),
        nn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1), nn.ReLU(inplace=True),
        OutputConvTranspose2d(base, channels * params_per_channel, 4, stride=2, padding=1),
    )


def check_divisible(height: int, width: int) -> None:
    if height % 4 or width % 4:
        raise ConfigError(f"model.arch = 'conv' needs image height and width divisible by 4, got "
                          f"{height}×{width}; use model.arch=mlp or pad the images")
