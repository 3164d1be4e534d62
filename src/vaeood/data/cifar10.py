"""CIFAR-10 from its official "python version" files, unpickled safely.

Two layouts are accepted: the extracted folder ``cifar-10-batches-py/`` (each batch's
MD5 checked) or the archive ``cifar-10-python.tar.gz`` itself (its MD5 checked, batches
read straight from the tar, nothing extracted to disk).

The batches are Python pickles. ``pickle.load`` on a stranger's file runs whatever code
the file names, so batches are read with ``_BatchUnpickler``, which can only build
numpy arrays and refuses every other global with a DataError *before* anything runs.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError
from .checksums import named_sha256
from .imageset import ImageSet
from .official import DATASETS, OfficialDataset

try:  # numpy >= 2 moved the array machinery to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
_BATCHES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

# Everything a CIFAR batch needs to rebuild its uint8 array, under the module names
# written by numpy 1.x (the official files) and numpy 2.x. Nothing else is callable.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that can build numpy arrays and nothing else."""

    def __init__(self, data: bytes, where: str):
        # latin1: the official batches were pickled by Python 2, whose byte strings
        # (including numpy's raw pixel buffers) must map to str one byte per char.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: the pickle asks for {module}.{name}, which a CIFAR-10 batch "
                f"never needs; refused without running it. The file is not an official "
                f"CIFAR-10 batch -- delete it and download the official archive."
            ) from None


def unpickle_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Safely unpickle one batch; return its rows ``[n, 3072]`` (uint8) and labels ``[n]``."""
    try:
        batch = _BatchUnpickler(data, where).load()
    except DataError:
        raise
    except Exception as err:  # any malformed pickle: UnpicklingError, EOFError, TypeError...
        raise DataError(f"{where}: not a readable CIFAR-10 batch pickle ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: a CIFAR-10 batch is a dict, found {type(batch).__name__}")
    # Keys are str in the official files; bytes if someone re-pickled with Python 3.
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    rows, labels = batch.get("data"), batch.get("labels")
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        found = f"{rows.dtype} {rows.shape}" if isinstance(rows, np.ndarray) else type(rows).__name__
        raise DataError(f"{where}: field 'data' must be a uint8 array [n, 3072], found {found}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.empty(0)
    if labels.shape != (len(rows),) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{where}: field 'labels' must be {len(rows)} integers in 0..9")
    return rows, labels


@DATASETS.register("cifar10")
class CIFAR10(OfficialDataset):
    """CIFAR-10 (Krizhevsky 2009): 32×32 colour images in 10 classes."""

    name = "cifar10"
    title = "CIFAR-10"
    licence = "Alex Krizhevsky, Vinod Nair, Geoffrey Hinton; free to use, cite Krizhevsky (2009)"
    files = {"train": (ARCHIVE,), "test": (ARCHIVE,)}
    mirrors = ("https://www.cs.toronto.edu/~kriz/",)
    md5 = {
        ARCHIVE: "c58f30108f718f92721af3b95e74349a",
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
    }

    def expected(self, split: str) -> str:
        return f"{FOLDER}/{{{','.join(_BATCHES[split])}}} or {ARCHIVE}"

    def find(self, folder: Path, split: str) -> Path | None:
        # The extracted folder wins over the archive (no decompression); the folder
        # itself may also be the extracted one.
        for candidate in (folder / FOLDER, folder):
            if all((candidate / b).is_file() for b in _BATCHES[split]):
                return candidate
        archive = folder / ARCHIVE
        return archive if archive.is_file() else None

    def load(self, found: Path, split: str) -> ImageSet:
        if found.is_dir():
            paths = [found / b for b in _BATCHES[split]]
            batches = [unpickle_batch(self.read_verified(p), str(p)) for p in paths]
            source = f"{FOLDER}/{paths[0].name}" + (f" .. {paths[-1].name}" if len(paths) > 1 else "")
        else:
            members = self._read_archive(found, split)
            batches = [unpickle_batch(members[b], f"{found}:{FOLDER}/{b}") for b in _BATCHES[split]]
            paths = [found]
            source = f"{found.name} ({', '.join(_BATCHES[split])})"
        rows = np.concatenate([r for r, _ in batches])
        labels = np.concatenate([lab for _, lab in batches])
        # Each row is the red plane, then green, then blue (1024 bytes each, row-major).
        images = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return ImageSet(self.name, split, np.ascontiguousarray(images), labels,
                        source=f"{source} (official {self.title} python batches)", files=named_sha256(*paths))

    def _read_archive(self, archive: Path, split: str) -> dict[str, bytes]:
        """Check the archive's MD5, then read this split's batches in one pass."""
        self.verify_file(archive, ARCHIVE)
        wanted = {f"{FOLDER}/{b}": b for b in _BATCHES[split]}
        members: dict[str, bytes] = {}
        try:
            # One sequential pass: seeking backwards in a .gz means decompressing again.
            with tarfile.open(archive, "r:gz") as tar:
                for info in tar:
                    if info.name in wanted and info.isfile():
                        data = tar.extractfile(info).read()
                        self.check_bytes(data, wanted[info.name], f"{archive}:{info.name}")
                        members[wanted[info.name]] = data
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DataError(f"{archive}: not a readable tar.gz archive ({err}); it is probably "
                            f"truncated or corrupt. Delete it and download it again.") from None
        missing = [name for name in wanted if wanted[name] not in members]
        if missing:
            raise DataError(f"{archive}: archive lacks {', '.join(missing)}; expected the official "
                            f"{ARCHIVE} with a {FOLDER}/ folder")
        return members
