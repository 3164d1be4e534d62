"""Step 1 of reading images: find where a named source is.

A name is a folder of PNG/JPEG images, an ``.npz`` file or a dataset. For scoring
(``vaeood detect``, ``log-px``), :func:`source_kind` tells them apart: an existing folder,
a file ending in ``.npz``, else a plain name is a dataset. For :func:`vaeood.data.load_dataset`
a name with a path separator is a folder (:func:`is_folder_name`); so is a plain word that
names a folder here when no dataset of that name is found
(:func:`vaeood.data.load.names_a_folder`, which needs the search below).

Where datasets are looked for, in order, and where downloads go (first match wins):

1. the ``data_dir`` argument (``--data-dir`` on the command line), when given;
2. ``$VAEOOD_DATA``, when set;
3. the user cache ``~/.cache/vaeood`` (also where downloads go when 1 and 2 are absent);
4. per-dataset system folders declared on the dataset class (e.g. Debian's
   ``/usr/share/datasets/fashion-mnist``).

Inside each of these, files may sit directly in the folder or in a subfolder named
after the dataset (``DIR/fashion_mnist/``). The subfolder matters because MNIST and
Fashion-MNIST use the same IDX file names and cannot share one folder.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import DataError
from .regular_files import special_file_kind

ENV_VAR = "VAEOOD_DATA"


@dataclass(frozen=True)
class SearchDir:
    """A folder to search and why it is searched (shown in not-found messages)."""

    path: Path
    origin: str
    #: True for a folder that only ever holds this one dataset (a system folder), so
    #: there is no point looking for a ``NAME/`` subfolder inside it.
    dataset_specific: bool = False


def cache_dir() -> Path:
    """The per-user cache folder; computed at call time so ``$HOME`` changes apply."""
    return Path.home() / ".cache" / "vaeood"


def user_dirs(data_dir: str | os.PathLike | None = None) -> list[SearchDir]:
    """The user-controlled search folders: ``data_dir``, ``$VAEOOD_DATA``, the cache.

    The first of these is where downloads are written.
    """
    dirs = []
    if data_dir is not None:
        dirs.append(SearchDir(Path(data_dir).expanduser(), "data_dir argument / --data-dir"))
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        dirs.append(SearchDir(Path(env).expanduser(), f"${ENV_VAR}"))
    dirs.append(SearchDir(cache_dir(), "user cache"))
    return dirs


def search_dirs(
    data_dir: str | os.PathLike | None = None, extra: Iterable[tuple[str, str]] = ()
) -> list[SearchDir]:
    """All search folders in order: the user folders, then ``extra`` ``(path, why)``
    pairs (a dataset's system folders). A folder listed twice is searched once."""
    dirs = user_dirs(data_dir) + [SearchDir(Path(p), why, True) for p, why in extra]
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        key = Path(os.path.abspath(d.path))
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def candidate_folders(search_dir: SearchDir, name: str) -> list[Path]:
    """The folders inside one search folder that may hold dataset ``name``."""
    if search_dir.dataset_specific:
        return [search_dir.path]
    return [search_dir.path, search_dir.path / name]


def refuse_broken_links(folder: Path, names: Iterable[str], prefix: str) -> None:
    """Raise a DataError naming a dataset file in ``folder`` (one of ``names``, or a name
    starting with ``prefix``) that is a symbolic link to nothing, or a FIFO, socket or device. Skipping it would
    quietly load another copy of the dataset from a later folder, or report it missing."""
    candidates = [folder / n for n in names] + sorted(folder.glob(glob.escape(prefix) + "*"))
    for path in candidates:
        if path.is_symlink() and not path.exists():
            raise DataError(f"{path} is a broken symbolic link: it points to {os.readlink(path)}, which does "
                            "not exist. Fix the link or remove it")
        kind = special_file_kind(os.stat(path).st_mode) if path.exists() else None
        if kind is not None and not path.is_dir():  # a FIFO is not skipped for another copy, nor opened
            raise DataError(f"{path} is {kind}, not a regular file (not opened). Replace it with the dataset "
                            "file or remove it")


def is_folder_name(name: str) -> bool:
    """True when a dataset name is a folder path: it contains ``/`` (or the system's
    separator). A plain word is a folder only when no dataset of that name is found
    (:func:`vaeood.data.load.names_a_folder`)."""
    return any(sep and sep in name for sep in ("/", os.sep, os.altsep))


def source_kind(source: str | os.PathLike) -> str:
    """What a source of images to score is: ``"folder"`` (an existing folder), ``"npz"`` (an
    existing regular file named ``*.npz``) or ``"dataset"`` (a name without a path separator,
    found by :func:`vaeood.data.load_dataset`); :class:`DataError` for a path that is none of them."""
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".npz":
        if not path.exists():
            raise DataError(f"{path}: no such .npz file")
        kind = special_file_kind(os.stat(path).st_mode)
        if kind is not None:
            raise DataError(f"{path}: {kind}, not a regular .npz file (not opened)")
        return "npz"
    if path.exists():
        raise DataError(f"{path}: neither a folder of PNG/JPEG images nor an .npz file")
    if is_folder_name(str(source)):
        raise DataError(f"{source}: no such folder or file")
    return "dataset"
