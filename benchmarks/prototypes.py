"""Benchmark-local prototypes of library speed changes, measured beside the library as it
is so that a proposal comes with its measured effect. Nothing here changes vaeood.

* ``small_chunks`` (IWAE): decode the K samples in chunks of about ``rows`` (image,
  sample) pairs instead of ``max_elements = 2**24`` elements of decoder *output*
  (~20,000 pairs for 28x28: the decoder's hidden activations are 8x its output, so a
  chunk's working set is ~1 GB and every layer streams from DRAM). ~400-650 pairs keep
  it in the last-level cache.
* ``channels_last``: the model's conv weights in NHWC (``model.to(memory_format=
  torch.channels_last)``). oneDNN then runs the decoder's transposed convolutions with
  its NHWC kernels, ~3x faster for ``ConvTranspose2d(64 → 32)`` here.
* ``native_last_deconv``: the decoder's output layer ``ConvTranspose2d(32 → C·P)`` (one
  output channel for the Bernoulli decoder) run with oneDNN disabled, i.e. by PyTorch's
  own im2col + GEMM kernel, which is ~3x faster than oneDNN's for so few output channels
  on this CPU.
* ``inplace_relu``: ``nn.ReLU(inplace=True)``, one read+write of the largest activation
  less per layer (small effect on time, ~40% less peak memory for IWAE with large chunks).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class NativeConvTranspose(nn.Module):
    """Runs the wrapped module with oneDNN disabled on the CPU (PyTorch's own kernel)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        if x.device.type != "cpu":
            return self.module(x)
        with torch.backends.mkldnn.flags(enabled=False):
            return self.module(x)


def optimised_copy(model: nn.Module, channels_last: bool = True, inplace_relu: bool = True,
                   native_last_deconv: bool = True) -> nn.Module:
    """A copy of ``model`` (same weights) with the proposed changes applied."""
    out = copy.deepcopy(model)
    if inplace_relu:
        for module in out.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = True
    if native_last_deconv:
        last = out.decoder[-1]
        if isinstance(last, nn.ConvTranspose2d) and last.out_channels <= 4:
            out.decoder[-1] = NativeConvTranspose(last)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


def small_chunk_size(k: int, batch: int, rows: int = 512) -> int:
    """IWAE chunk size (samples per chunk) for about ``rows`` decoded (image, sample) pairs."""
    return max(1, min(k, rows // max(1, batch)))
