"""Reader for the IDX format of MNIST and Fashion-MNIST (gzip-compressed).

An IDX file is a big-endian header -- a 4-byte magic number whose third byte is the
element type (0x08 = unsigned byte) and fourth byte the number of dimensions, then one
4-byte size per dimension -- followed by the raw elements. Images files have magic
2051 (0x00000803, 3-D), label files 2049 (0x00000801, 1-D).
See http://yann.lecun.com/exdb/mnist/ ("FILE FORMATS FOR THE MNIST DATABASE").
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
_KIND = {IMAGES_MAGIC: "3-D unsigned-byte images", LABELS_MAGIC: "1-D unsigned-byte labels"}


def gunzip(data: bytes, path: Path) -> bytes:
    """Decompress a gzip file's bytes; a truncated or corrupt file is a DataError."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"{path}: not a valid gzip file ({err}); it is probably truncated or corrupt. "
            f"Delete it and download it again."
        ) from None


def parse_idx(data: bytes, expected_magic: int, path: Path) -> np.ndarray:
    """Parse decompressed IDX bytes into a uint8 array of the declared shape.

    The magic number and the total size are both checked so that a swapped images/labels
    file or a short file is reported instead of silently reshaped.
    """
    expected = f"magic number {expected_magic} ({_KIND[expected_magic]})"
    if len(data) < 4:
        raise DataError(f"{path}: only {len(data)} bytes after decompression; expected an IDX "
                        f"file starting with {expected}")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        what = f" -- that is the magic of {_KIND[magic]}; were the files swapped?" if magic in _KIND else ""
        raise DataError(f"{path}: IDX magic number is {magic}{what}; expected {expected}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: IDX header is cut short ({len(data)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    n_values = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != n_values:
        raise DataError(
            f"{path}: IDX header declares shape {dims} ({n_values} bytes of data) but the file "
            f"holds {len(data) - header}; it is truncated or corrupt. Delete it and download it again."
        )
    # Copy: frombuffer views the immutable bytes, and read-only arrays upset torch.
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx_gz(raw: bytes, expected_magic: int, path: Path) -> np.ndarray:
    """Decompress and parse one ``*-idx?-ubyte.gz`` file's bytes."""
    return parse_idx(gunzip(raw, path), expected_magic, path)
