"""Convolutional encoder/decoder: the Fig. 2 model of the study, with its width
(``base_channels``) and latent size as the capacity knobs of Dai & Wipf (2019).

Stride-2 convolutions (kernel 4, padding 1) halve the image, ``H → ⌊H/2⌋``, until the
feature map is at most 8×8 (:data:`MAX_FEATURE_SIDE`), and never fewer than two of them
(:func:`conv_stages`): 28→14→7 and 32→16→8 as in the study, 64→32→16→8 in three,
256×256 in five. A linear layer maps the flattened map to the 2·Z posterior parameters.
The first stage has ``base`` channels and every later one ``2·base``, so the parameter
count stays nearly flat in the image size: each stage past the second adds two 4×4
convolutions of 2·base → 2·base channels (65,536 weights each at base 32) while the
linear layers stay at most 2·base·8·8 wide (at 160×120 the two stages of the study
left a 40×30 map: a linear layer of 46 MB). The decoder mirrors the encoder with
transposed convolutions (``output_padding`` restores an odd side) and emits ``C·P``
channels, P being the likelihood's parameters per pixel value.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from ..infra.errors import ConfigError


#: PyTorch's own im2col + GEMM transposed convolution (a private binding: where a torch lacks it,
#: the layer runs its base's forward)
_NATIVE = getattr(torch._C._nn, "slow_conv_transpose2d", None)


class OutputConvTranspose2d(nn.ConvTranspose2d):
    """The decoder's output layer. With few output channels (one per pixel value for a
    Bernoulli grey-level decoder) PyTorch's own im2col + GEMM kernel is faster on the CPU
    than oneDNN's (``benchmarks/layer_speed.py``), so this layer calls that kernel
    (``slow_conv_transpose2d``, the one PyTorch dispatches to with oneDNN off) directly.
    Why not switch oneDNN off around the call: the switch is global, so a torch.compile trace
    ran its "off" and never its "back on" (every later convolution of the process went without
    oneDNN: other numbers for the same training), and another thread's convolution could fall
    in between. Same parameters and state-dict keys as its base."""

    def forward(self, x, output_size=None):
        if (_NATIVE is None or not x.is_cpu or self.out_channels > 4 or output_size is not None or self.groups != 1
                or torch.compiler.is_compiling()):  # a compiler picks its own kernel
            return super().forward(x, output_size)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):  # the kernel is below autocast: cast as it casts a conv
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        return _NATIVE(x, weight, self.kernel_size, bias, self.stride, self.padding, self.output_padding,
                       self.dilation)


#: the largest side of the encoder's last feature map: stride-2 stages are added until it is reached
MAX_FEATURE_SIDE = 8
#: the stages of the study's models (28×28, 32×32), the fewest any image gets
MIN_STAGES = 2


def conv_stages(height: int, width: int) -> int:
    """Stride-2 stages for an image ``height × width``: the fewest, at least two, that
    bring its longer side to at most :data:`MAX_FEATURE_SIDE`, and never a side below 1."""
    if min(height, width) < 2 ** MIN_STAGES:
        raise ConfigError(f"model.arch = 'conv' needs images of at least 4×4 pixels, got {height}×{width}; "
                          "use model.arch=mlp or larger images")
    stages = MIN_STAGES
    while max(height, width) >> stages > MAX_FEATURE_SIDE and min(height, width) >> (stages + 1):
        stages += 1
    return stages


def _sides(height: int, width: int, stages: int) -> list[tuple[int, int]]:
    """The feature map's height and width after 0, 1, ..., ``stages`` halvings."""
    return [(height >> i, width >> i) for i in range(stages + 1)]


def conv_encoder(channels: int, height: int, width: int, base: int, latent_dim: int,
                 stages: int | None = None) -> nn.Module:
    """``stages`` stride-2 convolutions (default :func:`conv_stages`), then the linear head."""
    stages = conv_stages(height, width) if stages is None else stages
    h, w = _sides(height, width, stages)[-1]
    widths = [channels, base, *[2 * base] * (stages - 1)]
    layers = []
    for c_in, c_out in pairwise(widths):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(2 * base * h * w, 2 * latent_dim))


def conv_decoder(channels: int, height: int, width: int, base: int, latent_dim: int,
                 params_per_channel: int, stages: int | None = None) -> nn.Module:
    """The encoder's mirror: a linear layer to the last feature map, ``stages`` stride-2
    transposed convolutions back to ``height × width`` (default :func:`conv_stages`)."""
    stages = conv_stages(height, width) if stages is None else stages
    sides = _sides(height, width, stages)
    h, w = sides[-1]
    widths = [*[2 * base] * (stages - 1), base, channels * params_per_channel]
    layers = [nn.Linear(latent_dim, 2 * base * h * w), nn.ReLU(inplace=True), nn.Unflatten(1, (2 * base, h, w))]
    for i, (c_in, c_out) in enumerate(pairwise(widths)):
        (h_in, w_in), (h_out, w_out) = sides[stages - i], sides[stages - i - 1]
        extra = (h_out - 2 * h_in, w_out - 2 * w_in)  # 1 where the encoder rounded an odd side down
        last = i == stages - 1
        layer = (OutputConvTranspose2d if last else nn.ConvTranspose2d)(c_in, c_out, 4, stride=2, padding=1,
                                                                         output_padding=extra)
        layers += [layer] if last else [layer, nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def check_divisible(height: int, width: int) -> None:
    """The spatial bottom of the hierarchical VAE keeps the H/4 × W/4 map of two stages."""
    if height % 4 or width % 4:
        raise ConfigError(f"model.arch_options.bottom = 'spatial' needs image height and width divisible by 4, "
                          f"got {height}×{width}; use bottom='dense' or pad the images")
