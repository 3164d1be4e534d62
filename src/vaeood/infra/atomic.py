"""Crash-safe file writes: write a temporary file in the same directory, flush and
fsync it, then ``os.replace`` it over the target and fsync the directory.

A kill or a full disk at any point leaves either the old file or the new one, never a
torn one; the temporary file is removed on failure (a SIGKILL cannot clean up, so
:func:`remove_stale_temps` sweeps a run directory and its ``cache/`` when training starts or
resumes, and its ``calibration/`` and ``features/`` when calibrate starts).
Write failures are raised as :class:`WriteError` (an ``OSError``) naming the file, also
where the writer (``torch.save``) wrapped the ``OSError`` in an error of its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, IO

from .distributed import is_main

log = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")  # what tempfile.mkstemp makes for us


def _file_mode() -> int:
    """0666 minus the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class WriteError(OSError):
    """A file could not be written (disk full, folder not writable, path is a file, ...).

    The message names the file, the reason and what happened to the previous version;
    ``errno`` is the underlying error number (e.g. ``errno.ENOSPC``).
    """

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def ensure_dir(directory: str | Path) -> Path:
    """Create ``directory`` (and its parents), or raise a :class:`WriteError` that says why not."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot create the output folder {directory}: {_reason(exc)}", exc.errno) from exc
    return directory


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it onto ``path``.

    An ``OSError`` on the way (no space, no permission, ...) is re-raised as a
    :class:`WriteError` naming ``path``; the temporary file is removed and a previous
    ``path`` is left exactly as it was.
    """
    path = Path(path)
    if not is_main():  # under torchrun only rank 0 writes; the other ranks hold the same results
        return path
    ensure_dir(path.parent)
    existed = path.exists()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = _os_error(exc)
        if cause is not None and not isinstance(exc, WriteError):
            kept = "the previous file is unchanged" if existed else "nothing was written"
            raise WriteError(f"cannot write {path}: {_reason(cause)}; {kept}", cause.errno) from exc
        raise
    _fsync_dir(path.parent)
    return path


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind a failed write: ``exc`` itself, or one that a writer turned into
    its own error (torch.save reports a full disk as a RuntimeError from
    ``inline_container.cc`` with the OSError as its context). None for anything else."""
    while isinstance(exc, Exception):
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temporary files that a killed :func:`atomic_write` left in ``directory``.

    Only files named like ours (``.NAME.XXXXXXXX.tmp``) are touched; call it when no
    other process writes into ``directory`` (e.g. when a run starts or resumes).
    """
    removed = []
    for tmp in Path(directory).glob(f".*{_TMP_SUFFIX}"):  # none where the folder does not exist
        if _TMP_NAME.fullmatch(tmp.name) and tmp.is_file():
            with contextlib.suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write in %s", len(removed), directory)
    return removed


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device (free some space and run the command again)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not writable ({exc.strerror or exc}); choose another output folder or fix its permissions"
    return exc.strerror or str(exc)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def writing_together(directory: str | Path):
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``directory`` itself while the block
    writes files there that belong together (``vaeood detect``'s CSV, page and summary): a second
    process writing the same set waits for the first to finish, so the set on disk is always one
    writer's, never a CSV of one beside a summary of the other. No lock file is left behind; the
    operating system releases the lock when its process ends in any way. Not locked where
    ``fcntl`` is missing (Windows) or the folder cannot be opened."""
    try:
        import fcntl
        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
