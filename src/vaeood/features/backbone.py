"""Pooled features of a frozen pretrained network (:mod:`vaeood.models.backbones`): what an
image shows, where the VAE's statistics see how its pixels are made.

``backbone_features`` ``[B, D]`` (D = 1280 for EfficientNet-Lite0) is the backbone's
penultimate layer, average-pooled, of the image brought to ``size`` × ``size`` by the
backbone's own preprocessing (grey repeated to RGB, bilinear resize, the weights' scaling).
It depends on the image alone, not on the run's VAE (``uses_model = False``) nor on a seed
(``draws_noise = False``); its cache key holds the backbone's name and size, whose weights are
pinned by SHA-256.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.backbones import get_backbone
from .core import FEATURES

#: the backbone every feature-space detector reads unless told otherwise
DEFAULT_BACKBONE = "efficientnet_lite0"
#: its input size: docs/findings.md ("The backbone's input size") weighs AUROC against speed
DEFAULT_SIZE = 160
#: images per forward pass (bounds the activations' memory: about 1.4 GB at 160 px)
CHUNK = 128


@FEATURES.register("backbone")
def backbone(model, x: Tensor, *, generator=None, name: str = DEFAULT_BACKBONE,
             size: int = DEFAULT_SIZE) -> dict[str, Tensor]:
    r"""``backbone_features`` ``[B, D]``: the pooled penultimate features of the pretrained network
    ``name`` at input ``size`` × ``size`` (module docstring)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 32 <= size <= 512:
        raise ValueError(f"backbone: size must be an integer from 32 to 512 pixels, got {size!r}")
    net = get_backbone(name)
    out = [net.features(x[i:i + CHUNK], size) for i in range(0, len(x), CHUNK)]
    return {"backbone_features": torch.cat(out) if out else torch.empty(0, net.feature_dim)}


backbone.uses_model = False
backbone.draws_noise = False  # one image's features serve every seed (features.core)
