"""A folder's decoded images on disk, so that memory is bounded by a chunk, not by the folder.

:func:`decode_to_disk` decodes the images of a folder :data:`CHUNK` at a time (each one
converted to the run's mode and conformed to its working resolution, as
:func:`vaeood.data.decode.decode_into` does in memory) and appends each chunk's bytes to
a file with ``write`` (no mapping: the written pages are the kernel's page cache, never the
process's memory). The finished file is an ordinary ``.npy`` array, uint8 ``[N, H, W, C]``,
moved into place atomically, and is read back memory-mapped (``np.load(mmap_mode="r")``:
read-only; a caller that would change the images copies them first).

The file is named by a SHA-256 of the folder's content digest (the relative names and
bytes of the files to decode) and of the transform (target shape, ``conform``,
``skip_bad``): a rerun on an unchanged folder (``vaeood fit`` reads the folder, training
reads it again, calibration and ``log-px`` again) reuses it; a changed file gives another
name. Beside it, ``KEY.json`` holds what decoding found (names kept, shapes conformed,
conversions, files that failed to decode); it is written first, and an array without it is
decoded again.

A later process skips even the reading of headers and bytes that name the file: once a
folder is decoded, :func:`remember` writes ``state-KEY.json`` holding what reading it gave
(labels, provenance, the array's name), keyed by the folder's path, the transform and the
name, size, modification time and inode of every entry (the rule by which one process already
reuses a folder it read, and by which ``.npz`` files are reused); :func:`remembered` returns it
while all of those are unchanged. A ``vaeood detect`` no longer opens the 5,000 files of
the run's training folder to check that its calibration images did not change.

Where: ``RUN/cache/`` (:data:`CACHE_DIR`), so that the copy goes with the run and is
removed with it. A ``.npz`` dataset is not copied (see :mod:`vaeood.data.npz`).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from ..infra.atomic import atomic_write, atomic_write_json
from .decode import decode_into

#: the folder under a run that holds its decoded folders
CACHE_DIR = "cache"
#: images decoded at a time: 2,048 64×64 RGB photos are 25 MB
CHUNK = 2048


def decode_to_disk(items: list, target: tuple[int, int, int], conform: str | None, bad: list, cache_dir: Path,
                   digest: str, skip_bad: bool) -> tuple[np.ndarray, list[str], Counter, Counter]:
    """:func:`~vaeood.data.decode.decode_into`'s result, with the images a memory-mapped
    ``.npy`` file under ``cache_dir`` (decoded now, or reused: see the module docstring)."""
    key = hashlib.sha256(json.dumps([digest, list(target), conform, skip_bad]).encode()).hexdigest()[:32]
    array_path, record_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.json"
    try:  # a copy damaged since (cut short, unreadable) is decoded again
        record = json.loads(record_path.read_text())
        images = np.load(array_path, mmap_mode="r")
        if images.shape != (len(record["names"]), *target):
            raise ValueError(f"shape {images.shape}")
        bad += [tuple(b) for b in record["failed"]]
        return images, record["names"], Counter(record["from_shapes"]), Counter(record["converted"])
    except (OSError, ValueError, KeyError):
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    from_shapes: Counter = Counter()
    converted: Counter = Counter()
    before = len(bad)
    with tempfile.TemporaryFile(dir=cache_dir) as raw:
        for start in range(0, len(items), CHUNK):
            images, got, shapes, conversions = decode_into(items[start: start + CHUNK], target, conform, bad)
            raw.write(memoryview(images).cast("B"))
            names += got
            from_shapes += shapes
            converted += conversions
        raw.flush()

        def write(f) -> None:  # the header of the final shape, then the decoded bytes
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (len(names), *target)})
            raw.seek(0)
            shutil.copyfileobj(raw, f, 16 << 20)

        atomic_write_json(record_path, {"names": names, "from_shapes": dict(from_shapes),
                                        "converted": dict(converted), "failed": [list(b) for b in bad[before:]]})
        atomic_write(array_path, write)
    return np.load(array_path, mmap_mode="r"), names, from_shapes, converted


def release(images: np.ndarray) -> None:
    """Give the pages of a memory-mapped array that were read back to the kernel (they stay in
    its page cache, out of this process's resident memory): a pass over a large mapped array
    then holds no more than it reads between two calls. Nothing for an array in memory."""
    mapped = getattr(images, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)


def _state_path(cache_dir: Path, state: str) -> Path:
    key = hashlib.sha256(state.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return cache_dir / f"state-{key}.json"


def remembered(cache_dir: Path, state: str) -> dict | None:
    """What :func:`remember` recorded for this exact ``state`` (the folder's path, transform and
    every entry's name, size, modification time and inode, as JSON text), its images memory-mapped; None
    when nothing was, or its array is gone."""
    path = _state_path(cache_dir, state)
    try:
        record = json.loads(path.read_text())
        images = np.load(cache_dir / record["array"], mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None
    return {**record["read"], "images": images, "labels": np.asarray(record["read"]["labels"], dtype=np.int64),
            "files": tuple(tuple(f) for f in record["read"]["files"])}


def remember(cache_dir: Path, state: str, read: dict) -> None:
    """Record ``read`` (a folder as :func:`vaeood.data.folder_dataset.load_image_folder` read it,
    its images a memory-mapped array of ``cache_dir``) under ``state``, for :func:`remembered`."""
    kept = {k: v for k, v in read.items() if k != "images"}
    kept["labels"] = np.asarray(read["labels"]).tolist()
    atomic_write_json(_state_path(cache_dir, state), {"array": Path(read["images"].filename).name, "read": kept})
