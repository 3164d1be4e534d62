"""Images in memory (a NumPy array or a torch tensor) as the uint8 ``N×H×W×C`` images every
reader of :mod:`vaeood.data` gives, for :class:`vaeood.ImageOODDetector`.

The layout is never guessed. An axis of 1, 3 or 4 is a channel axis (grey, RGB, RGBA):

* 4-D: ``N×C×H×W`` when only the second axis is one, ``N×H×W×C`` when only the last is;
  when both or neither are, ``channels="first"`` or ``"last"`` must say which;
* 3-D: ``N×H×W`` grey images, only where neither the first nor the last axis could be a
  channel axis; otherwise ``channels="none"`` says they are grey images (a single
  ``C×H×W`` or ``H×W×C`` image takes a batch axis: ``X[None]``), so a ``C×H×W`` array is
  never read as ``H×W×C`` nor as three grey images.

Values: uint8 as they are; floats (and other integers) only with ``value_range`` stated,
``(0, 1)`` or ``(0, 255)``, checked to hold and rounded to the nearest of the 256 levels,
``round(x · 255 / high)``. Models take 1 or 3 channels: 4 (RGBA) is refused, since the
alpha channel has no stated background here. Every refusal names the argument and the fix.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .data.errors import DataError

CHANNEL_COUNTS = (1, 3, 4)
LAYOUTS = ("first", "last", "none")
RANGES = ((0, 1), (0, 255))


def as_images(x, *, channels: str | None = None, value_range: tuple | None = None, name: str = "X") -> np.ndarray:
    """``x`` (NumPy array or torch tensor) as contiguous uint8 ``[N, H, W, C]``, C in 1 or 3,
    by the rules of the module docstring; :class:`DataError` naming ``name`` otherwise."""
    array = _to_numpy(x, name)
    if channels not in (None, *LAYOUTS):
        raise DataError(f"channels={channels!r}: must be None (inferred where unambiguous), 'first' (N×C×H×W), "
                        "'last' (N×H×W×C) or 'none' (N×H×W grey)")
    nhwc = _channels_last(array, channels, name)
    if len(nhwc) == 0:
        raise DataError(f"{name} holds no images (shape {array.shape})")
    if nhwc.shape[-1] not in (1, 3):
        raise DataError(f"{name} has {nhwc.shape[-1]} channels (shape {array.shape}); the models take 1 (grey) or 3 "
                        "(RGB): drop or composite the alpha channel first, e.g. X[..., :3] for N×H×W×4")
    return np.ascontiguousarray(_to_uint8(nhwc, value_range, name))


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    raise DataError(f"{name} is a {type(x).__name__}; give a NumPy array or a torch tensor of images, or a folder "
                    "path (to fit)")


def _channels_last(x: np.ndarray, channels: str | None, name: str) -> np.ndarray:
    """``x`` with its channel axis last (a grey axis added to N×H×W)."""
    shape = x.shape
    if x.ndim == 3:
        if channels in ("first", "last"):
            raise DataError(f"{name} has shape {shape}: a 3-D {name} is N×H×W grey images, with no channel axis for "
                            f"channels={channels!r}; one C×H×W or H×W×C image takes a batch axis: {name}[None]")
        if channels is None and (shape[0] in CHANNEL_COUNTS or shape[-1] in CHANNEL_COUNTS):
            axis = "first" if shape[0] in CHANNEL_COUNTS else "last"
            raise DataError(f"{name} has shape {shape}: ambiguous, its {axis} axis could be channels; "
                            "pass channels='none' if it is N×H×W grey images, or "
                            f"{name}[None] with channels='first' or 'last' if it is one C×H×W or H×W×C image")
        return x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{name} has shape {shape}: expected N×H×W, N×H×W×C or N×C×H×W images "
                        f"(one image takes a batch axis: {name}[None])")
    if channels == "none":
        raise DataError(f"{name} has shape {shape}: channels='none' is for 3-D N×H×W grey images; a 4-D {name} "
                        "takes channels='first' or 'last'")
    if channels is None:
        first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
        if first == last:
            which = "both its second and last axes" if first else "neither its second nor its last axis"
            raise DataError(f"{name} has shape {shape}: ambiguous layout, {which} could be channels (1, 3 or 4); "
                            "pass channels='first' for N×C×H×W or channels='last' for N×H×W×C")
        channels = "first" if first else "last"
    return x.transpose(0, 2, 3, 1) if channels == "first" else x


def _to_uint8(x: np.ndarray, value_range, name: str) -> np.ndarray:
    if value_range is not None and (not isinstance(value_range, (tuple, list)) or tuple(value_range) not in RANGES):
        raise DataError(f"value_range={value_range!r}: must be (0, 1) or (0, 255), the range {name}'s values mean")
    if x.dtype == np.uint8:
        if value_range is not None and tuple(value_range) != (0, 255):
            raise DataError(f"{name} is uint8 but value_range={tuple(value_range)}; uint8 images are 0-255: leave "
                            "value_range out")
        return x
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{name} has dtype {x.dtype}; images are uint8, or numbers with value_range=(0, 1) or (0, 255)")
    if value_range is None:
        raise DataError(f"{name} has dtype {x.dtype}; say what its values mean: value_range=(0, 1) or (0, 255) "
                        "(or give uint8 images)")
    high = value_range[1]
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{name} holds {int((~np.isfinite(x)).sum())} NaN/inf values; fix or drop those images")
    low_seen, high_seen = x.min(), x.max()
    if low_seen < 0 or high_seen > high:
        raise DataError(f"{name} has values in [{low_seen:g}, {high_seen:g}], outside value_range=(0, {high}); "
                        "rescale them, or state the range they are in")
    return np.rint(x.astype(np.float64) * (255 / high)).astype(np.uint8)


def hash_order(images: np.ndarray) -> np.ndarray:
    """The positions of ``images`` ordered by the SHA-256 of each image's bytes (ties, equal
    images, in their given order): the fixed pseudo-random order a folder's images take by
    their names (:mod:`vaeood.data.folder_dataset`). Training takes the first images and the
    detectors fit and calibrate on the last ones; in the given order, an array sorted by
    class, by camera or by date would train on some of them and calibrate on others, whose
    scores then say nothing of the rest (no error, and no false-alarm guarantee for them)."""
    keys = [hashlib.sha256(np.ascontiguousarray(im).tobytes()).digest() for im in images]
    return np.array(sorted(range(len(images)), key=keys.__getitem__), dtype=np.int64)
