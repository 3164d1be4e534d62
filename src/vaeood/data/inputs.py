"""The images to score or decide on: a folder of PNG/JPEG files, an ``.npz`` file or a dataset
name (:func:`load_input`, which tells them apart by :func:`vaeood.data.locate.source_kind`),
converted to the model's image shape with the explicit conforms of :mod:`vaeood.data.conform`.

A folder goes through the same steps as a folder dataset (:mod:`vaeood.data.folder_dataset`,
``load_dataset("path/to/folder", split)``): its files listed and their headers read
(:mod:`vaeood.data.listing`: which files are read, which are bad and why), the target shape
chosen and the images counted (:func:`vaeood.data.conform.choose_target`), then each image
decoded and converted (:mod:`vaeood.data.decode`: pixel formats, modes, EXIF) straight into
one preallocated array, :data:`CHUNK` images at a time (:class:`FolderStream`).

A folder is read whole or not at all. Every file that cannot be used is named with
the reason (not a PNG/JPEG, truncated or corrupt, an unsupported pixel format, another
shape than the model's), and the read is refused, unless the caller asks to skip them
(``skip_bad=True``, ``vaeood detect --skip-bad``); the skipped files are then returned
with their reasons, logged, and written into the results. Never a silent partial
result. Hidden entries are listed in ``left_out``; the mode conversions made are counted
in ``converted`` and the summary.

Shapes: images whose height and width differ from the model's (``shape`` = C×H×W) are refused
unless ``conform`` is ``"pad"`` or ``"resize"``, exactly as for scoring; then each image is
conformed and the conform is recorded (``fitted``). Without a model shape, images must all
have the same size; those that differ from the most common size are named.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .conform import CONFORMS, choose_target, conform_array, conform_record
from .decode import decode_into
from .errors import DataError
from .listing import Found, display_name, list_dataset, read_headers, refuse_or_warn_bad, warn_hidden
from .locate import source_kind

log = logging.getLogger(__name__)

#: images decoded at a time when a folder is streamed (:class:`FolderStream`): 2,048 64×64 RGB
#: photos are 25 MB
CHUNK = 2048


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
        classes: ``[N]`` the class subfolder of each image of a folder with class
            subfolders, else None.
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
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)


def read_image_folder(folder: str | os.PathLike, *, shape: tuple[int, int, int] | None = None,
                      conform: str | None = None, skip_bad: bool = False) -> InputImages:
    """Every PNG/JPEG file in ``folder``, or in its class subfolders (one level, as training
    reads them: names ``class/file.png``), sorted by name, in one array (:class:`FolderStream`
    reads it in chunks instead).

    Args:
        folder: the folder. Hidden entries (names starting with ``.``) are not read and
            are listed in ``left_out``; any other entry that is not a readable PNG/JPEG
            regular file counts as bad (see the module docstring), as does a file beside
            class subfolders.
        shape: the model's image shape ``(C, H, W)``; None to accept the folder's own.
        conform: ``"pad"`` or ``"resize"`` to convert images of another shape (see
            :mod:`vaeood.data.conform`); None refuses them.
        skip_bad: skip bad files (returned in ``skipped`` with the reason) instead of
            refusing the folder.

    Raises:
        DataError: the folder is missing or empty, or holds bad files (each named with
            its reason) and ``skip_bad`` is False, or nothing usable is left.
    """
    stream = FolderStream(folder, shape=shape, conform=conform, skip_bad=skip_bad)
    return stream.finish(next(stream.chunks(max(1, len(stream.items)))))


class FolderStream:
    """A folder of images read in chunks, so that memory is bounded by the chunk, not by the
    folder: the header pass over every file first (names, sizes, modes: the target shape and
    the files to read), then :meth:`chunks` decodes ``size`` images at a time into one array,
    and :meth:`finish` refuses the bad files (or lists them with ``skip_bad``) and returns the
    :class:`InputImages` record, with ``images`` given by the caller (the whole array, or
    :class:`FolderImages`, which decodes an image again when it is looked at). Arguments as
    :func:`read_image_folder`'s."""

    def __init__(self, folder: str | os.PathLike, *, shape: tuple[int, int, int] | None = None,
                 conform: str | None = None, skip_bad: bool = False):
        self.folder, self.conform, self.skip_bad = Path(folder), conform, skip_bad
        if conform is not None:
            CONFORMS.get(conform)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: not a folder")
        entries, self.hidden, self.bad, self.classes = list_dataset(self.folder)
        warn_hidden(self.folder, self.hidden)
        if not entries and not self.bad:
            also = f" (only {len(self.hidden)} hidden entries, not read)" if self.hidden else ""
            raise DataError(f"{self.folder}: the folder holds no files{also} (expected PNG or JPEG images)")
        self.n_files = len(entries) + len(self.bad)
        found, unread = read_headers(entries)
        self.bad += unread
        self.target, keep, odd = choose_target(found, shape, conform, self.bad)
        chosen = set(map(id, keep + odd))
        self.items = [f for f in found if id(f) in chosen]
        self.names: list[str] = []
        self.paths: list[Path] = []
        self.from_shapes: Counter = Counter()
        self.converted: Counter = Counter()

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        """The usable images, ``size`` files at a time, as uint8 ``[n, H, W, C]`` arrays in the
        order of :attr:`names` (files that fail to decode go to the bad files)."""
        by_name = {f.name: f.path for f in self.items}
        for start in range(0, len(self.items), size):
            images, names, from_shapes, converted = decode_into(self.items[start: start + size], self.target,
                                                                self.conform, self.bad)
            self.names += names
            self.paths += [by_name[n] for n in names]
            self.from_shapes += from_shapes
            self.converted += converted
            yield images
        if not self.items:
            yield decode_into([], self.target, self.conform, self.bad)[0]

    @property
    def usable(self) -> bool:
        """False once a bad file would refuse the folder (without ``skip_bad``): scoring more is wasted."""
        return self.skip_bad or not self.bad

    def finish(self, images) -> InputImages:
        """The record of the folder read, once every chunk was read (:class:`DataError` for bad
        files without ``skip_bad``, or when nothing usable is left)."""
        refuse_or_warn_bad(self.folder, self.bad, self.n_files, self.skip_bad, "pass --skip-bad (skip_bad=True)")
        target = self.target
        fitted = conform_record(self.from_shapes, (target[2], *target[:2]), self.conform, self.folder) \
            if self.from_shapes else None
        if not self.names:
            raise DataError(f"{self.folder}: none of its {self.n_files} files is a usable image")
        return InputImages(images, self.names, source=display_name(str(self.folder)), kind="folder",
                           skipped=sorted(self.bad), left_out=self.hidden, fitted=fitted,
                           converted=dict(sorted(self.converted.items())),
                           classes=[n.split("/", 1)[0] for n in self.names] if self.classes else None)


class FolderImages:
    """The images of a :class:`FolderStream` after the fact, decoded again one at a time
    when looked at (``images[i]``: uint8 ``[H, W, C]``), as a sequence of ``len`` images:
    what detect's page shows of a folder too large to keep."""

    def __init__(self, stream: FolderStream):
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream.names)

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.stream
        one = Found(s.names[i], s.paths[i], s.target)
        images, _, _, _ = decode_into([one], s.target, s.conform, [])
        return images[0]


def load_input(source: str | os.PathLike, *, shape: tuple[int, int, int] | None = None, conform: str | None = None,
               skip_bad: bool = False, split: str = "test", data_dir: str | os.PathLike | None = None,
               limit: int | None = None) -> InputImages:
    """A folder of PNG/JPEG images, an ``.npz`` file (arrays ``x``, ``y``, see
    :mod:`vaeood.data.npz`) or a dataset name (split ``split``, found as by
    :func:`vaeood.data.load_dataset`), told apart by :func:`vaeood.data.locate.source_kind`,
    converted to ``shape`` (C, H, W) by ``conform``.
    ``limit`` keeps the first N images of an ``.npz`` or dataset."""
    from .load import load_dataset
    from .npz import read_image_arrays

    if conform is not None:
        CONFORMS.get(conform)
    path, kind = Path(source), source_kind(source)
    if kind == "folder":
        if limit:
            raise DataError("limit applies to an .npz or a dataset, not to a folder (choose its files instead)")
        return read_image_folder(path, shape=shape, conform=conform, skip_bad=skip_bad)
    if kind == "npz":
        images, labels, _ = read_image_arrays(path, str(path))
        images, labels = (images[:limit], labels[:limit]) if limit else (images, labels)
        images, fitted = conform_array(images, shape, conform, str(path))
        name = display_name(path.name)  # an undecodable byte of the name, escaped: the CSV and summary are UTF-8
        return InputImages(images, [f"{name}[{i}]" for i in range(len(images))], source=display_name(str(path)),
                           kind="npz",
                           fitted=fitted, labels=labels)
    data = load_dataset(str(source), split, data_dir=data_dir)
    images, labels = (data.images[:limit], data.labels[:limit]) if limit else (data.images, data.labels)
    images, fitted = conform_array(images, shape, conform, f"{data.name}/{data.split}")
    return InputImages(images, [f"{data.name}/{data.split}[{i}]" for i in range(len(images))], source=data.source,
                       kind="dataset", fitted=fitted, labels=labels)
