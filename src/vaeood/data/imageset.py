"""``ImageSet``: the one in-memory form every loader returns.

Whatever the file format on disk (IDX, pickled CIFAR batches, MATLAB, npz), the rest of
the toolkit sees the same thing: uint8 images ``[N, H, W, C]`` with an explicit channel
axis (C = 1 for grey, 3 for colour) and int64 labels ``[N]``. Fixing this at the
boundary means models never guess whether a channel axis exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array == has no single truth value
class ImageSet:
    """One split of one dataset, fully loaded.

    Attributes:
        name: dataset name, e.g. ``"fashion_mnist"``.
        split: ``"train"`` or ``"test"`` (npz datasets may use any split word).
        images: uint8 ``[N, H, W, C]``, C-contiguous, C in {1, 3}.
        labels: int64 ``[N]``.
        source: what the arrays are, in words a report can cite (file names and format,
            or the bundled sample's provenance and licence), never a path of this machine.
        files: ``(file name, SHA-256)`` of every file the arrays were read from: with
            name and split, the dataset's provenance in results (see :meth:`provenance`).
        is_sample: True when this is the small bundled offline sample rather than
            the real dataset; results on it are for smoke tests, not for papers.
        folder: for a folder of images (:mod:`vaeood.data.folder_dataset`), what was read
            and how: its name, classes, order, SHA-256, the shape conform and how many images
            it changed, the skipped and left-out files; None otherwise.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    source: str
    is_sample: bool = False
    files: tuple[tuple[str, str], ...] = ()
    folder: dict | None = None

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        where = f"ImageSet {self.name}/{self.split} ({self.source})"
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
            raise DataError(f"{where}: field 'images' must be a uint8 numpy array, found {found}")
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(
                f"{where}: field 'images' must have shape [N, H, W, C] with C in (1, 3), "
                f"found shape {images.shape}"
            )
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype != np.int64:
            found = (labels.dtype, labels.shape) if isinstance(labels, np.ndarray) else type(labels)
            raise DataError(f"{where}: field 'labels' must be an int64 array [N], found {found}")
        if len(labels) != len(images):
            raise DataError(
                f"{where}: {len(images)} images but {len(labels)} labels; they must match"
            )
        # Frozen dataclass: normalise through object.__setattr__. No copy when the array
        # is already contiguous, which is the case for every loader in this package; a
        # memory-mapped folder (vaeood.data.folder_cache) stays a np.memmap.
        if not images.flags.c_contiguous:
            object.__setattr__(self, "images", np.ascontiguousarray(images))
        object.__setattr__(self, "labels", np.ascontiguousarray(labels))

    def provenance(self) -> dict:
        """What a result records of its data: name, split, description, and each file by
        name and SHA-256 (where it sat on someone's disk is not part of a result)."""
        return {"dataset": self.name, "split": self.split, "source": self.source, "is_sample": self.is_sample,
                "files": [{"name": name, "sha256": digest} for name, digest in self.files],
                **({"folder": self.folder} if self.folder is not None else {})}

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(H, W, C)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        sample = ", bundled sample" if self.is_sample else ""
        return (
            f"ImageSet({self.name!r}, {self.split!r}, {len(self)} images of "
            f"{'×'.join(map(str, self.shape))}{sample}, source={self.source!r})"
        )
