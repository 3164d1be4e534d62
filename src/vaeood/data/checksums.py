"""MD5 integrity checks against the checksums the dataset authors published.

MD5 is not a security measure here (the restricted unpickler in ``cifar10`` is); it
catches truncated downloads, bit rot and the wrong file under the right name. The
official files are at most ~200 MB, so hashing on every load costs well under a second
and removes a whole class of silent errors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import DataError
from .regular_files import open_regular_file

_CHUNK = 1 << 20  # 1 MiB: large enough to be fast, small enough to never hold a file in RAM


def md5_of_bytes(data: bytes) -> str:
    """Hex MD5 of an in-memory byte string."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def file_hexdigest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest (``"md5"``, ``"sha256"``, ...) of a file, read in chunks (works for
    files larger than memory)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open_regular_file(path) as f:  # a FIFO is refused, never waited on
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def md5_of_file(path: str | os.PathLike) -> str:
    """Hex MD5 of a file, read in chunks."""
    return file_hexdigest(path, "md5")


def check_md5(
    what: str | os.PathLike, actual: str, expected: str, *, fix: str = "", note: str = ""
) -> None:
    """Raise ``DataError`` unless ``actual == expected``.

    ``what`` names the file (or archive member) in the message; ``note`` can say what
    the file really is when recognised; ``fix`` says how to get a good copy.
    """
    if actual == expected:
        return
    message = (
        f"{Path(what)}: MD5 is {actual} but the published MD5 of "
        f"{Path(what).name} is {expected}; the file is corrupt, truncated or not the "
        f"official file."
    )
    if note:
        message += f" {note}"
    message += f" Delete it and download it again{': ' + fix if fix else '.'}"
    raise DataError(message)


def named_sha256(*paths: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """``(file name, SHA-256)`` of each file: a dataset's provenance without its path."""
    return tuple((Path(p).name, file_hexdigest(p, "sha256")) for p in paths)
