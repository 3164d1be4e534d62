"""Any dataset as a NumPy ``.npz`` file: arrays ``x`` (images) and ``y`` (labels).

This is the escape hatch for data that has no official loader (and the format of the
bundled sample and of ``../shared/data``): ``NAME_SPLIT.npz`` is the full split,
``NAME_SPLIT_<anything>.npz`` a subset of it (e.g. ``cifar10_train_first4000.npz``).

Required arrays:
    x: uint8, ``[N, H, W]`` (grey) or ``[N, H, W, C]`` with C in 1 or 3;
    y: integer labels ``[N]``.
Other arrays are ignored, except an optional 0-d string ``provenance``.

Files are opened with ``allow_pickle=False`` so a hostile npz cannot run code.
"""

from __future__ import annotations

import logging
import os
import zipfile
from typing import BinaryIO

import numpy as np

from .errors import DataError
from .regular_files import open_regular_file

log = logging.getLogger(__name__)

_FORMAT = ("'x' (uint8 images [N, H, W] or [N, H, W, C] with C in 1 or 3) and "
           "'y' (integer labels [N]); write it with np.savez(path, x=images, y=labels)")


def read_image_arrays(src: str | os.PathLike | BinaryIO, where: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Load and validate an image npz.

    Returns images as uint8 ``[N, H, W, C]`` (a channel axis is added to grey images),
    labels as int64 ``[N]``, and the optional ``provenance`` string. ``where`` names
    the file in error messages.
    """
    try:
        if isinstance(src, (str, os.PathLike)):  # a path: opened only if it is a regular file
            with open_regular_file(src) as f:
                return read_image_arrays(f, where)
        npz = np.load(src, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{where}: holds a single array, not an .npz archive with {_FORMAT}")
        with npz:
            for key in ("x", "y"):
                if key not in npz.files:
                    raise DataError(f"{where}: missing array {key!r} (found {sorted(npz.files)}); "
                                    f"an image .npz needs {_FORMAT}")
            x, y = _read(npz, "x", where), _read(npz, "y", where)
            provenance = str(npz["provenance"]) if "provenance" in npz.files else None
            ignored = sorted(set(npz.files) - {"x", "y", "provenance"})
            if ignored:
                log.debug("%s: ignoring arrays %s", where, ignored)
    except DataError as err:
        if str(err).startswith(where):
            raise
        raise DataError(f"{where}: {err}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{where}: not a readable .npz file ({type(err).__name__}: {err}); "
                        f"expected an archive with {_FORMAT}") from None
    return _check_images(x, where), _check_labels(y, len(x), where), provenance


def _read(npz, key: str, where: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(f"{where}: field {key!r} holds Python objects, which are refused "
                            f"(unpickling can run code); save plain numeric arrays") from None
        raise


def _check_images(x: np.ndarray, where: str) -> np.ndarray:
    if x.dtype != np.uint8:
        raise DataError(f"{where}: field 'x' has dtype {x.dtype}, but images must be uint8 with "
                        f"values 0-255.{_conversion_hint(x)}")
    if x.ndim == 3:
        x = x[..., np.newaxis]  # grey [N, H, W] -> [N, H, W, 1]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{where}: field 'x' has shape {x.shape}, but images must be [N, H, W] "
                        f"or [N, H, W, C] with C in 1 or 3 (channels last)")
    if len(x) == 0:
        raise DataError(f"{where}: field 'x' holds no images")
    return np.ascontiguousarray(x)


def _conversion_hint(x: np.ndarray) -> str:
    """What is wrong with the values of a non-uint8 image array and how to convert it
    (never suggest a cast that would silently turn NaN or out-of-range values into pixels)."""
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.size == 0:
        return ""
    if np.issubdtype(x.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        if bad:
            return (f" It also holds {bad} NaN/inf values (first at index "
                    f"{tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])}); fix or drop those images "
                    "before converting.")
    lo, hi = x.min(), x.max()
    found = f" Its values range over [{lo:g}, {hi:g}]"
    if lo < 0 or hi > 255:
        return f"{found}, outside 0-255: rescale them to 0-255 first."
    if np.issubdtype(x.dtype, np.floating) and hi <= 1:
        return f"{found}; if they mean [0, 1], convert with (x * 255).round().astype(np.uint8)."
    return f"{found}; convert with np.rint(x).astype(np.uint8)."


def _check_labels(y: np.ndarray, n_images: int, where: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: field 'y' has dtype {y.dtype}, but labels must be integers")
    if y.ndim != 1:
        raise DataError(f"{where}: field 'y' has shape {y.shape}, but labels must be 1-D [N]")
    if len(y) != n_images:
        raise DataError(f"{where}: field 'x' holds {n_images} images but field 'y' holds "
                        f"{len(y)} labels; they must be equal")
    return y.astype(np.int64, copy=False)
