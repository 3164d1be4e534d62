"""Benchmark-local prototypes of library speed changes, measured beside the library as it
is so that a proposal comes with its measured effect. Nothing here changes vaeood.

Three of the four were measured here first and are now in the library, so against the
library as it is only ``channels_last`` still makes a difference:

* ``small_chunks`` (IWAE): decode the K samples in chunks of about ``rows`` (image,
  sample) pairs, so a chunk's activations stay in the last-level cache (the library's
  CPU default, ``max_elements = 2**22`` of the decoder's allocations, gives ~410 pairs);
* ``channels_last``: the model's conv weights in NHWC (``model.to(memory_format=
  torch.channels_last)``). oneDNN then runs the decoder's transposed convolutions with
  its NHWC kernels, ~2x faster for ``ConvTranspose2d(64 → 32)`` on the CPU here; it
  slowed whole training steps, so the library uses it on CPUs only when asked
  (``train.channels_last``) and for scoring on CUDA;
* ``native_last_deconv``: the decoder's output layer run with oneDNN disabled
  (the library's ``OutputConvTranspose2d``);
* ``inplace_relu``: ``nn.ReLU(inplace=True)`` (the library's conv and MLP models).
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
