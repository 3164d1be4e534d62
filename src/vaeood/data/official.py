"""Base class and registry for the official datasets (files, URLs and MD5s).

Each official dataset is a small subclass that declares, beside its code, the files
it reads, the mirrors they are downloaded from and the MD5 sums their authors
published (the same values torchvision checks). A subclass implements two things:
``find`` (is this dataset's split in that folder?) and ``load`` (read and check it).
Everything else -- download, MD5 checks, error messages -- is shared here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from ..infra.registry import Registry
from .checksums import check_md5, md5_of_bytes, md5_of_file
from .download import fetch
from .imageset import ImageSet

log = logging.getLogger(__name__)

#: name -> class of every dataset that has official files (``fashion_mnist``, ...).
DATASETS: Registry[type[OfficialDataset]] = Registry("dataset")


class OfficialDataset:
    """A dataset read from its authors' own files.

    Class attributes (declared by each subclass):
        name: registry name, e.g. ``"fashion_mnist"``.
        title: human name, e.g. ``"Fashion-MNIST"``.
        licence: copyright and licence line, quoted in reports.
        splits: the splits the official files provide.
        files: split -> the file names to download for that split.
        mirrors: base URLs tried in order; a file's URL is ``mirror + file name``.
        md5: file (or archive member) name -> published MD5. Tests monkeypatch it.
        system_dirs: extra ``(folder, why)`` places to search, e.g. a distro package.
        hints: extra lines for the not-found message (e.g. an ``apt-get`` command).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    licence: ClassVar[str]
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    files: ClassVar[dict[str, tuple[str, ...]]]
    mirrors: ClassVar[tuple[str, ...]]
    md5: ClassVar[dict[str, str]]
    system_dirs: ClassVar[tuple[tuple[str, str], ...]] = ()
    hints: ClassVar[tuple[str, ...]] = ()

    # -- to implement -------------------------------------------------------------
    def find(self, folder: Path, split: str) -> Path | None:
        """Return the file or folder holding ``split`` inside ``folder``, or None."""
        raise NotImplementedError

    def load(self, found: Path, split: str) -> ImageSet:
        """Read what ``find`` returned, checking MD5s and format; raise DataError."""
        raise NotImplementedError

    def expected(self, split: str) -> str:
        """What ``find`` looks for, in words, for not-found messages."""
        return " + ".join(self.files[split])

    # -- shared ---------------------------------------------------------------------
    def urls(self, filename: str) -> list[str]:
        return [mirror + filename for mirror in self.mirrors]

    def download(self, folder: Path, split: str) -> None:
        """Fetch the files of ``split`` that are missing from ``folder``."""
        for filename in self.files[split]:
            dest = folder / filename
            if dest.exists():
                log.debug("%s already present; not downloading it again", dest)
                continue
            fetch(self.urls(filename), dest, self.md5[filename])

    def verify_file(self, path: Path, key: str | None = None) -> None:
        """Check a file on disk against the published MD5 of ``key`` (default: its name)."""
        key = key or path.name
        self._check(path, md5_of_file(path), key)

    def read_verified(self, path: Path, key: str | None = None) -> bytes:
        """Read a small file whole and check its MD5 (``md5[key]``, default its name).

        Reading once and hashing the bytes in memory avoids reading the file twice.
        """
        data = path.read_bytes()
        self.check_bytes(data, key or path.name, str(path))
        return data

    def check_bytes(self, data: bytes, key: str, label: str) -> None:
        """Check in-memory bytes (a file or an archive member) against ``md5[key]``;
        ``label`` names them in the message."""
        self._check(Path(label), md5_of_bytes(data), key)

    def _check(self, label: Path, actual: str, key: str) -> None:
        check_md5(
            label,
            actual,
            self.md5[key],
            fix=self._fix_hint(key),
            note=_identify(actual, exclude=(type(self), key)),
        )

    def _fix_hint(self, key: str) -> str:
        """How to get a good copy of ``key``, for the MD5 mismatch message."""
        if not any(key in names for names in self.files.values()):
            # An archive member (a CIFAR batch) has no URL of its own: point at the archive.
            return f"re-extract it from the official archive ({', '.join(self.files['train'])})"
        return (f"load_dataset({self.name!r}, ..., download=True) / --download, or copy it "
                f"from {self.urls(key)[0]}")


def _identify(md5: str, exclude: tuple[type, str]) -> str:
    """Name the official file this MD5 belongs to, when it is another one we know.

    MNIST and Fashion-MNIST share file names, so a mixed-up folder is the most likely
    cause of a mismatch; saying so turns a puzzling error into an obvious fix.
    """
    for name in DATASETS:
        cls = DATASETS.get(name)
        for key, known in cls.md5.items():
            if known == md5 and (cls, key) != exclude:
                return (
                    f"It is {cls.title}'s {key}: keep each dataset's files in its own "
                    f"subfolder (e.g. DIR/{cls.name}/ and DIR/{exclude[0].name}/)."
                )
    return ""
