"""Step 4 of reading images: conform them to the run's shape, explicitly and recorded.

Which shape: the model's (C×H×W), or for a folder read as a dataset its most common mode and
size, or the run's working size (:mod:`vaeood.data.working_size`); :func:`choose_target`
picks it from the headers (:mod:`vaeood.data.listing`) and names each image of another size
that no conform was asked for.

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

import logging
from collections import Counter

import numpy as np
import torch

from ..infra.deprecated import deprecated_alias
from ..infra.registry import Registry
from .errors import DataError

log = logging.getLogger(__name__)

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
        x = torch.tensor(images[i: i + _CHUNK]).permute(0, 3, 1, 2).float()  # a copy: images may be read-only
        y = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=antialias)
        chunks.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, height, width, images.shape[-1]), np.uint8)


def shape_text(shape) -> str:
    return "×".join(map(str, shape))


def conform_array(images: np.ndarray, shape: tuple[int, int, int] | None, conform: str | None,
                  where: str) -> tuple[np.ndarray, dict | None]:
    """Images ``[N, H, W, C]`` converted to ``shape`` (C, H, W) by ``conform``, as scoring does;
    refused (naming ``where``) when the shapes differ and no conform was asked for."""
    if shape is None:
        return images, None
    have = (images.shape[3], images.shape[1], images.shape[2])
    if have == tuple(shape):
        return images, None
    if conform is None:
        raise DataError(f"{where}: images are C×H×W = {shape_text(have)} but the model was trained on "
                        f"{shape_text(shape)}; pass --pad (zero-pad centred) or --resize (bilinear) to make "
                        "them fit (conform='pad'/'resize' in Python)")
    out = conform_images(images, tuple(shape), conform)
    return out, {"method": conform, "to_shape": list(shape), "from_shapes": {shape_text(have): len(images)},
                 "description": f"{conform} {shape_text(have)} → {shape_text(shape)}"}


def choose_target(good: list, shape, conform, bad: list, *, fit_to_common: bool = False, size=None):
    """The target ``(H, W, C)``, the ``good`` images (:class:`~vaeood.data.listing.Found`) of its
    height and width, and those of another size to conform; the rest are appended to ``bad``
    with the reason. The target is the model's ``shape`` (C, H, W); else the folder's mode (the
    most common channel count, RGB on a tie) at ``size`` ``(H, W)`` if given, else at the
    folder's most common size. Channels always follow the target
    (:func:`~vaeood.data.decode.to_channels`); other sizes are conformed only with ``conform``
    and a model shape, ``size`` or ``fit_to_common`` (folder datasets; scoring without a
    conform refuses them)."""
    if shape is not None:
        target = (shape[1], shape[2], shape[0])  # (H, W, C)
    elif good:
        channels = Counter(f.shape[2] for f in good)
        mode = 3 if channels[3] >= channels[1] else 1
        target = (*(size or Counter(f.shape[:2] for f in good).most_common(1)[0][0]), mode)
    else:
        target = None
    keep, odd = [], []
    for f in good:
        if f.shape[:2] == target[:2]:
            keep.append(f)
        elif conform is not None and (shape is not None or size is not None or fit_to_common):
            odd.append(f)
        else:
            bad.append((f.name, shape_reason(f.shape, target, model=shape is not None)))
    return target, keep, odd


def shape_reason(found, target, *, model: bool) -> str:
    """Why an image of shape ``found`` (H, W, C) is refused for ``target`` (H, W, C): the
    model's shape (``model``) or the folder's most common one, and how to conform it."""
    target_text = (f"the model's C×H×W = {shape_text((target[2], *target[:2]))}" if model else
                   f"the folder's most common shape C×H×W = {shape_text((target[2], *target[:2]))}")
    hint = "; pass --pad or --resize to conform it (conform='pad'/'resize')" if model else \
        "; set data.conform=pad or data.conform=resize to conform it (folder datasets)"
    return f"C×H×W = {shape_text((found[2], *found[:2]))}, not {target_text}{hint}"


def conform_record(from_shapes: Counter, shape, conform: str, folder) -> dict:
    """The record of the images conformed to ``shape`` (C, H, W) by ``conform``, for the results."""
    fitted = {"method": conform, "to_shape": list(shape), "from_shapes": dict(sorted(from_shapes.items())),
              "description": f"{conform} " + ", ".join(f"{s} ({c} images)" for s, c in sorted(from_shapes.items())) +
                             f" → {shape_text(shape)}"}
    log.warning("%s: %d images fitted to %s by %s (recorded in the results)", folder, sum(from_shapes.values()),
                shape_text(shape), conform)
    return fitted


# the names of vaeood.data.fit, this module's old name (they go in vaeood 0.3)
FITS = CONFORMS
fit_images = deprecated_alias(conform_images, "fit_images", "vaeood.data.conform")
