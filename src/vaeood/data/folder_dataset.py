"""A folder of PNG/JPEG images as a dataset split: ``load_dataset("path/to/folder", split)``.

Which names are folders (:mod:`vaeood.data.locate`): a dataset name that contains a path separator (``/``, or the
system's own) is a folder path, relative to the current directory (``./pets`` or ``pets/``
for a folder here); so is a plain word naming an existing folder (``pets``) when no dataset
of that name is found. A name that is both a folder here and a dataset found (official
files, ``NAME_SPLIT.npz``) is the dataset, with a warning saying so, so that adding a
folder never changes what an existing dataset name means.

One folder is one split: the ``split`` argument is recorded in the ImageSet, never used
to find files (give the train and test folders as two names).

Layout and labels: either images directly in the folder (labels ``-1``: unlabelled), or
one subfolder per class holding its images (labels = the index of the class folder in
name order; the class names are recorded). With class folders, a file beside them is a
bad file. Folders are not read deeper than that. Files are listed and read by the same
steps as ``vaeood detect``'s (:mod:`vaeood.data.listing`, :mod:`vaeood.data.decode`): hidden
entries are left out and listed; a bad file (corrupt, not PNG/JPEG, a text file named
``.png``, a FIFO, a non-UTF-8 name, ...) is refused with the folder, each named with its
reason, unless ``skip_bad`` (``data.skip_bad=true``): then it is skipped, logged, and
listed in the provenance.

Order: the images are ordered by the SHA-256 of their relative name (``class/file.png``),
not by name. Training takes the first images and holds the last ones out
(``data.limit``, ``data.holdout``); in name order the held-out images of a folder with
class subfolders would all be of the last class. The hash of the name is a fixed
pseudo-random order that is the same on every machine and file system (unlike the order
of a directory listing), and adding or removing one file moves no other image relative to
the rest.

Modes and shapes: every image is converted to the folder's mode (its most common channel
count, RGB on a tie) by the rules of :mod:`vaeood.data.decode`, each conversion counted in
the provenance (``converted``). The target size is ``size`` (``data.image_size``, which
``vaeood fit`` chooses) or else the folder's most common H×W. An image of another size is
a bad file (named) unless ``conform`` (``data.conform``) is ``"pad"`` or ``"resize"``
(:mod:`vaeood.data.conform`); the rule and how many images it changed, from which shapes,
are recorded in the provenance.

Memory: headers are read first (size and mode, without decoding the pixels) to choose the
shape and count the images; then each image is decoded straight into one preallocated
uint8 array (:func:`vaeood.data.decode.decode_into`), or chunk by chunk into a file of the
run (:mod:`vaeood.data.folder_cache`), so a large folder is never held twice. Within one process a folder of up to
:data:`CACHE_BYTES` of images is read once and reused while every file keeps its name,
size, modification time and inode (as npz files are); a larger one is read again.

Provenance: the ImageSet's ``name`` is the folder's own name (never its absolute path) and
its ``source`` and ``files`` carry a SHA-256 of the sorted relative names and bytes of the
images used; ``folder`` records classes, order, conform, skipped and left-out files. A run
trained on a folder records all of it in its checkpoint, and calibration refuses a folder
that changed since (:func:`vaeood.decisions.calibration.calibrate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from .checksums import file_hexdigest
from .conform import CONFORMS, choose_target, conform_record
from .decode import conversion_text, decode_into
from .errors import DataError
from .folder_cache import decode_to_disk, remember, remembered
from .imageset import ImageSet
from .listing import list_dataset, read_headers, refuse_or_warn_bad, warn_hidden

log = logging.getLogger(__name__)

ORDER = "sha256 of the relative file name"
UNLABELLED = -1


def order_key(name: str) -> tuple[str, str]:
    """The sort key of an image of a folder dataset: SHA-256 of its relative name (UTF-8),
    then the name (see the module docstring for why)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest(), name


def load_image_folder(folder: str | os.PathLike, split: str, *, conform: str | None = None,
                      skip_bad: bool = False, size: tuple[int, int] | None = None,
                      cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """The PNG/JPEG images of ``folder`` (optionally one subfolder per class) as one split.

    Args:
        folder: the folder's path. split: recorded in the ImageSet, not used to find files.
        conform: None (images of another shape than the folder's most common are bad files),
            ``"pad"`` or ``"resize"`` (they are conformed to it, and the conform recorded).
        skip_bad: skip bad files (logged and listed in ``folder["skipped"]``) instead of
            refusing the folder.
        size: ``(H, W)``, the run's working resolution (``data.image_size``), to which
            images of another size are conformed by ``conform``; None: the most common size.
        cache_dir: decode the images chunk by chunk into a memory-mapped ``.npy`` file there
            (a run's ``cache/``, :mod:`vaeood.data.folder_cache`), reused while the folder is
            unchanged, so that memory is bounded by a chunk; None: into one array in memory.
    Raises:
        DataError: not a folder, no usable image, or bad files (each named with the
            reason) without ``skip_bad``.
    """
    if conform is not None:
        CONFORMS.get(conform)
    given = str(folder)
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"{given}: no such folder (a dataset name with a '/' is read as a folder of PNG/JPEG "
                        "images; a plain name such as 'fashion_mnist' is a dataset)")
    title = path.resolve().name or given
    entries, hidden, bad, classes = list_dataset(path)
    warn_hidden(given, hidden)
    _refuse_empty(given, entries, bad, hidden)
    n_files = len(entries) + len(bad)
    # what the folder holds now, by every entry's name, size, modification time and inode, and how it is read
    size = tuple(size) if size is not None else None
    state = json.dumps([str(path.resolve()), conform, skip_bad, size, _state(entries), list(bad), list(hidden)])
    key = (state, str(cache_dir))
    cached = _CACHE.get(key) or (remembered(Path(cache_dir), state) if cache_dir is not None else None)
    if cached is not None:
        log.debug("%s: unchanged since read (same names, sizes, modification times and inodes): reusing it", given)
        _keep(key, cached)
        return _image_set(cached, split)
    found, unread = read_headers(entries)
    bad += unread
    target, keep, odd = choose_target(found, None, conform, bad, fit_to_common=True, size=size)
    items = sorted(keep + odd, key=lambda f: order_key(f.name))
    images, names, from_shapes, converted, digest = _decode(items, target, conform, bad, cache_dir, skip_bad)
    refuse_or_warn_bad(given, bad, n_files, skip_bad,
                       "set data.skip_bad=true (--data.skip_bad=true; skip_bad=True in Python)")
    if not len(names):
        raise DataError(f"{given}: none of its {n_files} files is a usable image")
    read = _describe(given, title, images, names, items, classes, target, conform, from_shapes, converted, bad,
                     hidden, digest if len(names) == len(items) else None)
    if isinstance(images, np.memmap):
        remember(Path(cache_dir), state, read)
    if images.nbytes <= CACHE_BYTES or isinstance(images, np.memmap):
        _keep(key, read)
        return _image_set(read, split)  # a copy: the caller may change it
    return _image_set(read, split, copy=False)


def _refuse_empty(given: str, entries: list, bad: list, hidden: list) -> None:
    if not entries and not bad:
        also = f" (only {len(hidden)} hidden entries, not read)" if hidden else ""
        raise DataError(f"{given}: the folder holds no files{also} (expected PNG or JPEG images, optionally in "
                        "one subfolder per class)")


def _decode(items, target, conform, bad, cache_dir, skip_bad):
    """:func:`decode_into`'s result, into memory or (``cache_dir``) into a memory-mapped file there
    (:mod:`vaeood.data.folder_cache`, keyed by the digest of the files to decode), and that digest (None
    in memory: :func:`_describe` computes it)."""
    if cache_dir is None:
        return (*decode_into(items, target, conform, bad), None)
    digest = _digest([(f.name, f.path) for f in items])
    return (*decode_to_disk(items, target, conform, bad, Path(cache_dir), digest, skip_bad), digest)


def _describe(given, title, images, names, items, classes, target, conform, from_shapes, converted, bad,
              hidden, digest: str | None = None) -> dict:
    """The labels, source, digest (``digest`` when known) and provenance record of the images read from a
    folder."""
    shape = (target[2], target[0], target[1])
    fitted = conform_record(from_shapes, shape, conform, given) if from_shapes else None
    by_name = {f.name: f for f in items}
    digest = digest or _digest([(n, by_name[n].path) for n in names])
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[n.split("/", 1)[0]] for n in names] if classes else
                      [UNLABELLED] * len(names), dtype=np.int64)
    record = {"name": title, "images": len(names), "classes": classes, "order": ORDER, "sha256": digest,
              "shape": list(shape),
              "conform": {"method": conform, "changed": sum(from_shapes.values()), **(fitted or {})},
              "converted": dict(sorted(converted.items())),
              "skipped": [list(b) for b in sorted(bad)], "left_out": [list(h) for h in hidden]}
    source = (f"folder {title!r} of {len(names)} PNG/JPEG images"
              + (f" in {len(classes)} class folders ({', '.join(classes)})" if classes else " (unlabelled)")
              + f", ordered by {ORDER}, SHA-256 of names and bytes {digest}"
              + (f"; {len(bad)} bad files skipped" if bad else "")
              + (f"; {fitted['description']}" if fitted else "")
              + (f"; {conversion_text(converted)}" if converted else ""))
    if converted:
        log.debug("%s: %s (recorded in the provenance)", given, conversion_text(converted))
    log.info("read folder %s: %d images of C×H×W = %s", given, len(names), "×".join(map(str, shape)))
    return {"name": title, "images": images, "labels": labels, "source": source, "files": ((f"{title}/", digest),),
            "folder": record}


# Repeated loads of one folder in a process (train, then fitting data and calibration) reuse
# its arrays while every file keeps its name, size, modification time and inode, as npz
# files are reused (load._read_npz). Only folders up to CACHE_BYTES are kept: the cache and
# the caller's copy hold the images twice, which a large folder must not be; a folder decoded to
# disk (cache_dir) is kept as its read-only memory map, never copied.
CACHE_BYTES = 256 << 20
_CACHE_SIZE = 2
_CACHE: dict = {}


def _keep(key: tuple, read: dict) -> None:
    _CACHE[key] = read
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))


def _state(entries: list[tuple[str, Path]]) -> list:
    out = []
    for name, p in entries:
        try:
            st = os.stat(p)
            out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            out.append((name, None))
    return out


def _image_set(read: dict, split: str, copy: bool = True) -> ImageSet:
    copy = copy and not isinstance(read["images"], np.memmap)  # read-only, on disk: shared, never copied
    images, labels = (read["images"].copy(), read["labels"].copy()) if copy else (read["images"], read["labels"])
    return ImageSet(read["name"], split, images, labels, source=read["source"], files=read["files"],
                    folder=copy_record(read["folder"]))


def copy_record(record: dict) -> dict:
    return json.loads(json.dumps(record))


def _digest(files: list[tuple[str, Path]]) -> str:
    """SHA-256 over the sorted relative names and each file's SHA-256: it changes when a
    file is added, removed, renamed or one byte of one changes."""
    h = hashlib.sha256()
    for name, p in sorted(files):
        h.update(name.encode("utf-8", "surrogateescape") + b"\0" + file_hexdigest(p, "sha256").encode() + b"\n")
    return h.hexdigest()


__all__ = ["load_image_folder", "order_key"]
