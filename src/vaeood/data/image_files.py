"""The one reader of PNG/JPEG files, shared by ``vaeood detect``'s folders
(:func:`vaeood.data.folder.read_image_folder`) and folder datasets
(:mod:`vaeood.data.image_folder`): which files are bad and why, pixel formats (see
:mod:`vaeood.data.folder`'s docstring), and two passes over a folder: headers first
(:func:`_read_entries`, Pillow's lazy ``open``: size and mode without decoding) to choose
the shape and count the images (:func:`_split_by_shape`), then each image decoded straight
into one preallocated array (:func:`decode_into`), so that a folder is never held twice.

It imports nothing of the loaders (``folder.load_input`` reads datasets through
``load.py``, which reads folders through this module).
"""

from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .conform import conform_images
from .decode import decode_image, header_shape, read_image, to_channels
from .regular_files import open_regular_file, special_file_kind

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SHOW = 20  # bad files listed in an error message before "... and N more"


def _shape_text(shape) -> str:
    return "×".join(map(str, shape))


def display_name(name: str) -> str:
    """``name`` as it can be printed and written (UTF-8): undecodable bytes of a file name
    (which Python keeps as surrogates) shown as ``\\xNN``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters (an escape sequence in a file
    name could rewrite the screen) shown as ``\\xNN``/``\\uNNNN``, undecodable bytes as ``\\xNN``."""
    text = display_name(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def list_entries(folder: Path, prefix: str = "") -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """The entries of ``folder`` sorted by name, as ``(name, path)`` with ``name`` =
    ``prefix + file name`` (possibly holding undecodable bytes as surrogates), and the
    hidden ones as ``(display name, reason)``, not to be read."""
    everything = sorted(folder.iterdir())
    entries = [(prefix + p.name, p) for p in everything if not p.name.startswith(".")]
    hidden = [(display_name(prefix + p.name), "hidden (a name starting with '.'): not read") for p in everything
              if p.name.startswith(".")]
    return entries, hidden


def warn_hidden(folder, hidden: list[tuple[str, str]]) -> None:
    if hidden:
        log.warning("%s: %d hidden entries not read (listed in the results): %s", folder, len(hidden),
                    "; ".join(n for n, _ in hidden[:_SHOW]))


def refuse_or_warn_bad(folder, bad: list[tuple[str, str]], n_entries: int, skip_bad: bool, how_to_skip: str) -> None:
    """Raise :class:`DataError` naming each bad file with its reason, or with ``skip_bad``
    log them as skipped (the caller records them in its results)."""
    if bad and not skip_bad:
        lines = [f"  {name}: {reason}" for name, reason in sorted(bad)[:_SHOW]]
        if len(bad) > _SHOW:
            lines.append(f"  ... and {len(bad) - _SHOW} more")
        raise DataError(f"{folder}: {len(bad)} of {n_entries} files cannot be used:\n" + "\n".join(lines) +
                        f"\nFix or remove them, or {how_to_skip} to skip them; the skipped files "
                        "are then listed in the results.")
    if bad:
        log.warning("%s: skipping %d bad files (listed in the results): %s", folder, len(bad),
                    "; ".join(f"{n}: {r}" for n, r in sorted(bad)[:_SHOW]))


@dataclass(frozen=True, eq=False)
class Found:
    """A file whose header was read: its name, path and shape ``(H, W, C)`` (pixels not
    decoded yet: see :func:`decode_into`)."""

    name: str
    path: Path
    shape: tuple[int, int, int]


def _peek_shape(path: Path) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image as :func:`~vaeood.data.decode.decode_image` returns it, from
    its header alone (Pillow's ``open`` is lazy: size, mode and EXIF orientation without
    decoding); a palette or unusual image, or one whose header cannot be read, is decoded
    whole, which raises the reason it cannot be used."""
    from PIL import Image

    try:
        with open_regular_file(path) as f, Image.open(f) as img:
            shape = header_shape(img)
            if shape is not None:
                return shape
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        pass  # decode_image below names the reason
    return read_image(path).shape


def _read_entries(entries: list[tuple[str, Path]]) -> tuple[list[Found], list[tuple[str, str]]]:
    """The header pass: the PNG/JPEG images among ``entries`` (``(name, path)``) with their
    shapes, and the others as (display name, reason). Pixels are decoded later, straight
    into the output array (:func:`decode_into`), so that a folder is never held twice."""
    bad: list[tuple[str, str]] = []
    good: list[Found] = []
    for raw, path in entries:
        name = display_name(raw)
        try:
            mode = os.stat(path).st_mode  # follows a symbolic link; lstat would not
        except OSError as err:
            bad.append((name, f"cannot be read ({err.strerror or err}; a broken symbolic link?)"))
            continue
        if name != raw:
            bad.append((name, "its name is not valid UTF-8 (rename it)"))
        elif stat.S_ISDIR(mode):
            bad.append((name, "a subfolder (folders are not read recursively)"))
        elif special_file_kind(mode) is not None:
            bad.append((name, f"{special_file_kind(mode)}, not a regular file (not opened)"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append((name, f"not a PNG/JPEG file name (suffix {path.suffix or 'none'!r})"))
        else:
            try:
                good.append(Found(name, path, _peek_shape(path)))
            except DataError as err:
                bad.append((name, str(err)))
    return good, bad


def _split_by_shape(good: list[Found], shape, conform, bad: list, *, fit_to_common: bool = False, size=None):
    """The target ``(H, W, C)``, the ``good`` images of its height and width, and those of
    another size to conform; the rest are appended to ``bad`` with the reason. The target is
    the model's ``shape`` (C, H, W); else the folder's mode (the most common channel count,
    RGB on a tie) at ``size`` ``(H, W)`` if given, else at the folder's most common size.
    Channels always follow the target (:func:`~vaeood.data.decode.to_channels`); other sizes are
    conformed only with ``conform`` and a model shape, ``size`` or ``fit_to_common`` (folder
    datasets; scoring without a conform refuses them)."""
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
            bad.append((f.name, _shape_reason(f.shape, target, model=shape is not None)))
    return target, keep, odd


def _shape_reason(found, target, *, model: bool) -> str:
    target_text = (f"the model's C×H×W = {_shape_text((target[2], *target[:2]))}" if model else
                   f"the folder's most common shape C×H×W = {_shape_text((target[2], *target[:2]))}")
    hint = "; pass --pad or --resize to conform it (conform='pad'/'resize')" if model else \
        "; set data.conform=pad or data.conform=resize to conform it (folder datasets)"
    return f"C×H×W = {_shape_text((found[2], *found[:2]))}, not {target_text}{hint}"


def decode_into(items: list[Found], target, conform: str | None, bad: list) -> tuple[np.ndarray, list[str], Counter,
                                                                                       Counter]:
    """Decode ``items`` in their order into one preallocated uint8 ``[N, H, W, C]`` array of
    the ``target`` shape (one image in memory at a time beside it, never a list of arrays
    to stack), converted to the target's channels and, for another size, conformed by
    ``conform``. A file that fails to decode, or (without ``conform``) decodes to another size
    than its header said, is appended to ``bad``. Returns the images, their names,
    ``{"C×H×W": count}`` of the images conformed and ``{conversion: count}`` of the
    conversions made (:mod:`vaeood.data.decode`)."""
    if target is None:
        return np.zeros((0, 1, 1, 1), np.uint8), [], Counter(), Counter()
    out = np.empty((len(items), *target), dtype=np.uint8)
    names: list[str] = []
    fitted: Counter = Counter()
    conversions: Counter = Counter()
    for item in items:
        try:
            decoded = decode_image(item.path)
        except DataError as err:
            bad.append((item.name, str(err)))
            continue
        arr, changed = to_channels(decoded.pixels, target[2])
        if arr.shape != tuple(target):
            if conform is None:
                bad.append((item.name, _shape_reason(decoded.pixels.shape, target, model=False)))
                continue
            have = decoded.pixels.shape
            fitted[_shape_text((have[2], *have[:2]))] += 1
            arr = conform_images(arr[None].copy(), (target[2], target[0], target[1]), conform)[0]  # writable for torch
        conversions.update(decoded.conversions + ((changed,) if changed else ()))
        out[len(names)] = arr
        names.append(item.name)
    if len(names) < len(out):
        out.resize((len(names), *target), refcheck=False)  # in place: no second copy
    return out, names, fitted, conversions


def conform_record(from_shapes: Counter, shape, conform: str, folder) -> dict:
    """The record of the images conformed to ``shape`` (C, H, W) by ``conform``, for the results."""
    fitted = {"method": conform, "to_shape": list(shape), "from_shapes": dict(sorted(from_shapes.items())),
              "description": f"{conform} " + ", ".join(f"{s} ({c} images)" for s, c in sorted(from_shapes.items())) +
                             f" → {_shape_text(shape)}"}
    log.warning("%s: %d images fitted to %s by %s (recorded in the results)", folder, sum(from_shapes.values()),
                _shape_text(shape), conform)
    return fitted
