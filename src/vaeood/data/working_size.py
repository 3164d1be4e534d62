"""The working resolution of a run on a folder of photos, which ``vaeood fit`` chooses
and records (``data.image_size``), and the one transform that brings every photo to it.

The size: the median height and the median width of the folder's images (read from their
headers, with the EXIF orientation applied, without decoding), scaled down together so
that the long side is at most :data:`MAX_SIDE` = 64 px, each side rounded and at least
1 px; never scaled up. A folder of 64×64 photos keeps 64×64; one of 640×480 photos gets
64×48. ``vaeood fit --image-size H W`` (``--data.image_size=[H,W]``) chooses another.

The transform (:data:`TRANSFORM`): ``resize``, the bilinear resize of
:mod:`vaeood.data.conform` (antialiased when shrinking) to exactly H×W, after the mode
conversion of :mod:`vaeood.data.decode`. It keeps every pixel of the photo (no crop), adds
no border (no pad), and changes the aspect ratio of a photo whose ratio differs from the
median's. It is recorded as ``data.conform`` beside ``data.image_size``, and ``detect``,
``log-px``, ``evaluate`` and the Python API apply it to images of another shape by default.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import DataError
from .listing import list_dataset, read_headers

MAX_SIDE = 64
TRANSFORM = "resize"


def working_size(folder: str | os.PathLike, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """``(H, W)``: the median size of ``folder``'s images (one subfolder per class or
    flat) scaled so that the long side is at most ``max_side`` (module docstring). Files
    whose header cannot be read are left to the read that follows, which names them."""
    entries, _, _, _ = list_dataset(Path(folder))
    found, _ = read_headers(entries)
    if not found:
        raise DataError(f"{folder}: no readable PNG/JPEG image to choose a working size from")
    height, width = (float(np.median([f.shape[i] for f in found])) for i in (0, 1))
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
