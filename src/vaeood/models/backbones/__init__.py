"""Frozen pretrained networks as feature sources (``BACKBONES``): a name → :class:`Backbone`.

A backbone turns uint8 images ``[B, C, H, W]`` into pooled features ``[B, D]``, applying its own
preprocessing (mode, size, scaling) so that every caller sees the same numbers. Its weights
are data: they come from a pinned package and are checked by SHA-256 before loading. Results
that use a backbone say so: it saw ImageNet's 1,000 classes, which overlap the test sets'.

    @BACKBONES.register("mine")
    def mine() -> Backbone: ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache, partial
from typing import Callable

import torch
from torch import Tensor, nn

from ...infra.registry import Registry
from . import efficientnet_lite
from .openvino_runtime import openvino_features
from .efficientnet_lite import WeightsError

BACKBONES: Registry = Registry("backbone")


@dataclass(frozen=True)
class Backbone:
    """A frozen network, how it reads an image, and what its features are."""

    name: str
    build: Callable[[], nn.Module]  # → a module with ``features(x) -> [B, D]``
    preprocess: Callable[[Tensor, int], Tensor]  # (uint8 [B, C, H, W], size) → the network's input
    feature_dim: int
    default_size: int
    weights: dict  # provenance: package, version, file, sha256
    pretrained_on: str
    locate_weights: Callable[[], object]  # the weights file; raises WeightsError (naming the fix) when missing

    def why_unavailable(self) -> str | None:
        """Why the backbone cannot run here (its weights' package is missing), or None."""
        try:
            self.locate_weights()
        except WeightsError as err:
            return str(err)
        return None

    def network(self) -> nn.Module:
        """The network, built once per process (the weights are read and checked once)."""
        return _network(self.name)

    @torch.no_grad()
    def features(self, x: Tensor, size: int | None = None) -> Tensor:
        """Pooled features ``[B, D]`` (float32) of uint8 images ``[B, C, H, W]`` at ``size`` (default
        ``default_size``): under OpenVINO on a CPU where it reproduces PyTorch's features
        (:mod:`.openvino_runtime`), else PyTorch."""
        size = int(size or self.default_size)
        inputs = self.preprocess(x, size)
        fast = _openvino(self.name, size) if x.device.type == "cpu" else None
        if fast is not None:
            return fast(inputs)
        return self.network().to(x.device).features(inputs.contiguous(memory_format=torch.channels_last))


@cache
def _network(name: str) -> nn.Module:
    return BACKBONES.get(name)().build()


@cache
def _openvino(name: str, size: int):
    """The OpenVINO runner of backbone ``name`` at ``size``, or None (once per process); off
    when ``VAEOOD_BACKBONE_RUNTIME=torch``."""
    if os.environ.get("VAEOOD_BACKBONE_RUNTIME", "").lower() == "torch":
        return None
    backbone = BACKBONES.get(name)()
    return openvino_features(_network(name), name, backbone.weights.get("sha256", ""), size)


@BACKBONES.register("efficientnet_lite0")
def _efficientnet_lite0() -> Backbone:
    return Backbone("efficientnet_lite0", efficientnet_lite.efficientnet_lite0, efficientnet_lite.preprocess,
                    efficientnet_lite.HEAD, 96, dict(efficientnet_lite.WEIGHTS), "ImageNet-1k (1,000 classes)",
                    efficientnet_lite.weights_path)


# a larger network of the same family, chosen with ``backbone=efficientnet_lite2`` (docs/findings.md,
# "A larger backbone": what it gains and costs; not the default)
@BACKBONES.register("efficientnet_lite2")
def _efficientnet_lite2() -> Backbone:
    return Backbone("efficientnet_lite2", efficientnet_lite.efficientnet_lite2, efficientnet_lite.preprocess,
                    efficientnet_lite.HEAD, 160, dict(efficientnet_lite.LITE2_WEIGHTS), "ImageNet-1k (1,000 classes)",
                    partial(efficientnet_lite.weights_path, efficientnet_lite.LITE2_WEIGHTS))


def get_backbone(name: str) -> Backbone:
    return BACKBONES.get(name)()


__all__ = ["BACKBONES", "Backbone", "WeightsError", "get_backbone"]
