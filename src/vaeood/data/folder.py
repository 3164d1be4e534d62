"""Images to decide on: a folder of PNG/JPEG files, an ``.npz`` file or a dataset name,
converted to the model's image shape with the explicit conforms of :mod:`vaeood.data.conform`.

The files are read by :mod:`vaeood.data.image_files`, the reader folder datasets
(:mod:`vaeood.data.image_folder`, ``load_dataset("path/to/folder", split)``) share:
headers first, to choose the shape and count the images, then each image decoded straight
into one preallocated array.

A folder is read whole or not at all. Every file that cannot be used is named with
the reason (not a PNG/JPEG, truncated or corrupt, an unsupported pixel format, another
shape than the model's), and the read is refused, unless the caller asks to skip them
(``skip_bad=True``, ``vaeood detect --skip-bad``); the skipped files are then returned
with their reasons, logged, and written into the results. Never a silent partial
result.

What is read: only regular files (and symbolic links to regular files, read as the
file the link names, under the link's name). A FIFO, socket or device is a bad file,
named by its kind and never opened (opening a FIFO waits for a writer for ever); so is
a subfolder, or a link to one of these or to nothing. Hidden entries (names starting
with ``.``, e.g. ``.DS_Store``) are not read; they are listed in ``left_out`` and the
results say so. A file name that is not valid UTF-8 is a bad file (it cannot be written
into the CSV or the summary), shown with its undecodable bytes escaped.

Pixel formats and modes: each file is decoded and converted to 8-bit grey or RGB, then
to the model's mode, by the rules of :mod:`vaeood.data.decode` (grey → RGB by repeating
the channel, EXIF orientation applied, palette, 16-bit and CMYK converted; transparency,
animated images and decompression bombs refused); the conversions made are counted in
``converted`` and the summary.

Shapes: images whose height and width differ from the model's (``shape`` = C×H×W) are refused
unless ``conform`` is ``"pad"`` or ``"resize"``, exactly as for scoring; then each image is
conformed and the conform is recorded (``fitted``). Without a model shape, images must all
have the same size; those that differ from the most common size are named.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .conform import CONFORMS, conform_images
from .image_files import (IMAGE_SUFFIXES, _read_entries, _shape_text, _split_by_shape, decode_into,  # noqa: F401
                          display_name, conform_record, list_entries, printable, refuse_or_warn_bad, warn_hidden)
from .decode import read_image  # noqa: F401  (its home before vaeood.data.decode)
from .regular_files import special_file_kind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputImages:
    """Images ready for a model, and where each came from.

    Attributes:
        images: uint8 ``[N, H, W, C]`` in the model's shape (when one was given).
        names: ``[N]`` one name per image: the file name relative to the folder, or
            ``FILE.npz[i]`` / ``DATASET/SPLIT[i]``.
        source: what was read (the folder, file or dataset), for summaries.
        kind: ``"folder"``, ``"npz"`` or ``"dataset"``.
        skipped: ``(name, reason)`` of each file skipped with ``skip_bad=True``.
        left_out: ``(name, reason)`` of each hidden entry of a folder, not read.
        fitted: ``None``, or ``{"method", "to_shape", "from_shapes": {"C×H×W": count}}``
            when some images were padded or resized.
        labels: the ``.npz``/dataset labels, or None for a folder.
        converted: ``{conversion: count}`` of the mode conversions made
            (:mod:`vaeood.data.decode`), e.g. ``{"grey → RGB": 141}``.
    """

    images: np.ndarray
    names: list[str]
    source: str
    kind: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)
    fitted: dict | None = None
    labels: np.ndarray | None = None
    converted: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def read_image_folder(folder: str | os.PathLike, *, shape: tuple[int, int, int] | None = None,
                      conform: str | None = None, skip_bad: bool = False) -> InputImages:
    """Every PNG/JPEG file in ``folder`` (not recursive), sorted by name.

    Args:
        folder: the folder. Hidden entries (names starting with ``.``) are not read and
            are listed in ``left_out``; any other entry that is not a readable PNG/JPEG
            regular file counts as bad (see the module docstring).
        shape: the model's image shape ``(C, H, W)``; None to accept the folder's own.
        conform: ``"pad"`` or ``"resize"`` to convert images of another shape (see
            :mod:`vaeood.data.conform`); None refuses them.
        skip_bad: skip bad files (returned in ``skipped`` with the reason) instead of
            refusing the folder.

    Raises:
        DataError: the folder is missing or empty, or holds bad files (each named with
            its reason) and ``skip_bad`` is False, or nothing usable is left.
    """
    folder = Path(folder)
    if conform is not None:
        CONFORMS.get(conform)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    entries, hidden = list_entries(folder)
    warn_hidden(folder, hidden)
    if not entries:
        also = f" (only {len(hidden)} hidden entries, not read)" if hidden else ""
        raise DataError(f"{folder}: the folder holds no files{also} (expected PNG or JPEG images)")

    found, bad = _read_entries(entries)
    target, keep, odd = _split_by_shape(found, shape, conform, bad)
    chosen = set(map(id, keep + odd))
    images, names, from_shapes, converted = decode_into([f for f in found if id(f) in chosen], target, conform, bad)
    refuse_or_warn_bad(folder, bad, len(entries), skip_bad, "pass --skip-bad (skip_bad=True)")
    fitted = conform_record(from_shapes, (target[2], *target[:2]), conform, folder) if from_shapes else None
    if not len(images):
        raise DataError(f"{folder}: none of its {len(entries)} files is a usable image")
    return InputImages(images, names, source=display_name(str(folder)), kind="folder",
                       skipped=sorted(bad), left_out=hidden, fitted=fitted, converted=dict(sorted(converted.items())))


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
        raise DataError(f"{where}: images are C×H×W = {_shape_text(have)} but the model was trained on "
                        f"{_shape_text(shape)}; pass --pad (zero-pad centred) or --resize (bilinear) to make "
                        "them fit (conform='pad'/'resize' in Python)")
    out = conform_images(images, tuple(shape), conform)
    return out, {"method": conform, "to_shape": list(shape), "from_shapes": {_shape_text(have): len(images)},
                 "description": f"{conform} {_shape_text(have)} → {_shape_text(shape)}"}


def load_input(source: str | os.PathLike, *, shape: tuple[int, int, int] | None = None, conform: str | None = None,
               skip_bad: bool = False, split: str = "test", data_dir: str | os.PathLike | None = None,
               limit: int | None = None) -> InputImages:
    """A folder of PNG/JPEG images, an ``.npz`` file (arrays ``x``, ``y``, see
    :mod:`vaeood.data.npz`) or a dataset name (split ``split``, found as by
    :func:`vaeood.data.load_dataset`), converted to ``shape`` (C, H, W) by ``conform``.
    ``limit`` keeps the first N images of an ``.npz`` or dataset."""
    from .load import load_dataset
    from .npz import read_image_arrays

    path = Path(source)
    if conform is not None:
        CONFORMS.get(conform)
    if path.is_dir():
        if limit:
            raise DataError("limit applies to an .npz or a dataset, not to a folder (choose its files instead)")
        return read_image_folder(path, shape=shape, conform=conform, skip_bad=skip_bad)
    if path.suffix.lower() == ".npz":
        if not path.exists():
            raise DataError(f"{path}: no such .npz file")
        if special_file_kind(os.stat(path).st_mode) is not None:
            raise DataError(f"{path}: {special_file_kind(os.stat(path).st_mode)}, not a regular .npz file (not opened)")
        images, labels, _ = read_image_arrays(path, str(path))
        images, labels = (images[:limit], labels[:limit]) if limit else (images, labels)
        images, fitted = conform_array(images, shape, conform, str(path))
        name = display_name(path.name)  # an undecodable byte of the name, escaped: the CSV and summary are UTF-8
        return InputImages(images, [f"{name}[{i}]" for i in range(len(images))], source=display_name(str(path)),
                           kind="npz",
                           fitted=fitted, labels=labels)
    if path.exists():
        raise DataError(f"{path}: neither a folder of PNG/JPEG images nor an .npz file")
    if os.sep in str(source) or (os.altsep and os.altsep in str(source)):
        raise DataError(f"{source}: no such folder or file")
    data = load_dataset(str(source), split, data_dir=data_dir)
    images, labels = (data.images[:limit], data.labels[:limit]) if limit else (data.images, data.labels)
    images, fitted = conform_array(images, shape, conform, f"{data.name}/{data.split}")
    return InputImages(images, [f"{data.name}/{data.split}[{i}]" for i in range(len(images))], source=data.source,
                       kind="dataset", fitted=fitted, labels=labels)
