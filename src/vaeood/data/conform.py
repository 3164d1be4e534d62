"""Conform images to a model trained on another image shape, explicitly and recorded.

Scoring a dataset whose images differ in shape from the model's training images is an
error unless the user asks for one of these conforms (``vaeood log-px --pad`` / ``--resize``,
``vaeood.log_px(..., conform="pad" | "resize")``); the metadata records which one was
applied, from which shape to which, because conforming changes the likelihood (padding
adds D' − D near-certain zero pixels, resizing smooths the image).

Channels first: grey → RGB repeats the grey channel three times; RGB → grey takes the
luma average ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601), rounded to uint8. Then
the spatial size, by the named conform:

- ``pad``: zero-pad centred (28×28 → 32×32 adds 2 black rows/columns on each side;
  an odd difference puts the extra one at the bottom/right). It cannot shrink.
- ``resize``: bilinear interpolation (``torch.nn.functional.interpolate``,
  ``align_corners=False``, antialiased when shrinking), rounded and clipped to uint8.

Images are uint8 ``[N, H, W, C]`` in and out, like :class:`~vaeood.data.ImageSet`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..infra.deprecated import deprecated_alias
from ..infra.registry import Registry
from .errors import DataError

CONFORMS = Registry("conform")

_LUMA = np.array([0.299, 0.587, 0.114])
_CHUNK = 2048  # images resized at a time (bounds the float32 copy)


def conform_images(images: np.ndarray, shape: tuple[int, int, int], how: str) -> np.ndarray:
    """``images`` (uint8 ``[N, H, W, C]``) converted to ``shape`` = ``(C', H', W')`` by
    the conform named ``how`` (``"pad"`` or ``"resize"``); returned unchanged if they fit."""
    conform = CONFORMS.get(how)
    channels, height, width = shape
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(f"conform {how!r}: expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    images = convert_channels(images, channels)
    if images.shape[1:3] != (height, width):
        images = conform(images, height, width)
    return np.ascontiguousarray(images)


def convert_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Grey → RGB by repeating the channel; RGB → grey by the BT.601 luma average."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and channels == 1:
        luma = np.rint(images.astype(np.float64) @ _LUMA)
        return np.clip(luma, 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert images with {have} channels to {channels} (only grey ↔ RGB)")


@CONFORMS.register("pad")
def pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad each image centred to ``height × width`` (never crops)."""
    n, h, w, c = images.shape
    if height < h or width < w:
        raise DataError(f"--pad cannot shrink {h}×{w} images to {height}×{width}; use --resize instead")
    top, left = (height - h) // 2, (width - w) // 2
    out = np.zeros((n, height, width, c), dtype=np.uint8)
    out[:, top: top + h, left: left + w] = images
    return out


@CONFORMS.register("resize")
def resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize to ``height × width`` (antialiased when shrinking), rounded to uint8."""
    h, w = images.shape[1:3]
    antialias = height < h or width < w
    chunks = []
    for i in range(0, len(images), _CHUNK):
        x = torch.from_numpy(images[i: i + _CHUNK]).permute(0, 3, 1, 2).float()
        y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=antialias)
        chunks.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, height, width, images.shape[-1]), np.uint8)


# the names of vaeood.data.fit, this module's old name (they go in vaeood 0.3)
FITS = CONFORMS
fit_images = deprecated_alias(conform_images, "fit_images", "vaeood.data.conform")
