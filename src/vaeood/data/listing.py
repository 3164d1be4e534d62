"""Step 2 of reading images: list a folder's files, and read their headers.

A folder is listed by :func:`list_dataset`: either the images lie in it, or one
subfolder per class holds them (one level, no deeper; a file beside the class folders is a
bad file). Hidden entries (names starting with ``.``, e.g. ``.DS_Store``) are not read;
they are listed as ``(name, reason)`` and the results say so.

Then the header pass, :func:`read_headers`: each entry is checked without decoding it
(Pillow's lazy ``open``: size, mode and EXIF orientation). Only regular files are read
(and symbolic links to regular files, read as the file the link names, under the link's
name). A FIFO, socket or device is a bad file, named by its kind and never opened (opening
a FIFO waits for a writer for ever); so is a subfolder, a link to one of these or to
nothing, a symbolic link loop (a link to itself, or to the folder or one above it: never
followed), an empty file (named without being opened), a file whose suffix is not
``.png``/``.jpg``/``.jpeg``, and a file name that is not valid UTF-8 (it cannot be written
into the CSV or the summary), shown with its undecodable bytes escaped.
What the pass finds is the shape of each usable image (:class:`Found`),
which chooses the run's target shape (:func:`vaeood.data.conform.choose_target`) before any
pixel is decoded (:func:`vaeood.data.decode.decode_into`).

Bad files are refused with the folder, each named with its reason, unless the caller
skips them (:func:`refuse_or_warn_bad`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .decode import corrupt_metadata_refused, header_shape, read_image
from .errors import DataError
from .regular_files import open_regular_file, special_file_kind

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SHOW = 20  # bad files listed in an error message before "... and N more"
LOOP = "a symbolic link to this folder or one above it (a loop): not followed"


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


def list_dataset(path: Path):
    """``(entries, hidden, bad, classes)``: the files to read as ``(relative name, path)``,
    hidden entries left out, entries refused already (a file beside class folders, a class
    folder with an undecodable name) and the class names (``[]`` when the images lie in the
    folder itself)."""
    top, hidden = list_entries(path)
    files, dirs, loops = [], [], []  # each entry stat'ed once (a folder may hold 100,000s of files)
    for name, p in top:
        if not _is_dir(p):
            files.append((name, p))
        elif _loops_back(p, path):
            loops.append((display_name(name), LOOP))
        else:
            dirs.append((name, p))
    if not dirs:
        return files, hidden, loops, []
    bad = loops + [(display_name(name), "a file beside the class folders (put it in one of them)")
                   for name, _ in files]
    entries, classes = [], []
    for name, p in dirs:
        if display_name(name) != name:
            bad.append((display_name(name), "a class folder whose name is not valid UTF-8 (rename it)"))
            continue
        classes.append(name)
        inside, hid = list_entries(p, prefix=f"{name}/")
        entries += inside
        hidden += hid
    return entries, hidden, bad, classes


def _loops_back(link: Path, folder: Path) -> bool:
    """True when the folder ``link`` leads to is ``folder`` or a folder above it."""
    target, here = link.resolve(), folder.resolve()
    return target == here or target in here.parents


def _is_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(p).st_mode)
    except OSError:
        return False


def warn_hidden(folder, hidden: list[tuple[str, str]]) -> None:
    if hidden:
        log.warning("%s: %d hidden entries not read (listed in the results): %s", folder, len(hidden),
                    "; ".join(n for n, _ in hidden[:_SHOW]))


def refuse_or_warn_bad(folder, bad: list[tuple[str, str]], n_entries: int, skip_bad: bool, how_to_skip: str) -> None:
    """Raise :class:`DataError` naming each bad file with its reason (the name :func:`printable`:
    a newline in it cannot start a line of its own), or with ``skip_bad`` log them as skipped (the
    caller records them in its results)."""
    if bad and not skip_bad:
        lines = [f"  {printable(name)}: {reason}" for name, reason in sorted(bad)[:_SHOW]]
        if len(bad) > _SHOW:
            lines.append(f"  ... and {len(bad) - _SHOW} more")
        raise DataError(f"{folder}: {len(bad)} of {n_entries} files cannot be used:\n" + "\n".join(lines) +
                        f"\nFix or remove them, or {how_to_skip} to skip them; the skipped files "
                        "are then listed in the results.")
    if bad:
        log.warning("%s: skipping %d bad files (listed in the results): %s", folder, len(bad),
                    "; ".join(f"{printable(n)}: {r}" for n, r in sorted(bad)[:_SHOW]))


@dataclass(frozen=True, eq=False)
class Found:
    """A file whose header was read: its name, path and shape ``(H, W, C)`` (pixels not
    decoded yet: see :func:`vaeood.data.decode.decode_into`)."""

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
        with open_regular_file(path) as f, corrupt_metadata_refused(), Image.open(f) as img:
            shape = header_shape(img)
            if shape is not None:
                return shape
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        pass  # decode_image below names the reason
    return read_image(path).shape


def read_headers(entries: list[tuple[str, Path]]) -> tuple[list[Found], list[tuple[str, str]]]:
    """The header pass: the PNG/JPEG images among ``entries`` (``(name, path)``) with their
    shapes, and the others as (display name, reason). Pixels are decoded later, straight
    into the output array (:func:`vaeood.data.decode.decode_into`), so that a folder is never
    held twice."""
    bad: list[tuple[str, str]] = []
    good: list[Found] = []
    for raw, path in entries:
        name = display_name(raw)
        try:
            st = os.stat(path)  # follows a symbolic link; lstat would not
        except OSError as err:
            what = "a symbolic link loop: not followed" if err.errno == errno.ELOOP else \
                f"cannot be read ({err.strerror or err}; a broken symbolic link?)"
            bad.append((name, what))
            continue
        mode = st.st_mode
        if name != raw:
            bad.append((name, "its name is not valid UTF-8 (rename it)"))
        elif stat.S_ISDIR(mode):  # in a class folder, a link to it or above is a loop as at the top
            bad.append((name, LOOP if _loops_back(path, path.parent) else
                        "a subfolder (folders are not read recursively)"))
        elif special_file_kind(mode) is not None:
            bad.append((name, f"{special_file_kind(mode)}, not a regular file (not opened)"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            bad.append((name, f"not a PNG/JPEG file name (suffix {path.suffix or 'none'!r})"))
        elif st.st_size == 0:
            bad.append((name, "an empty file (0 bytes)"))
        else:
            try:
                good.append(Found(name, path, _peek_shape(path)))
            except DataError as err:
                bad.append((name, str(err)))
    return good, bad
