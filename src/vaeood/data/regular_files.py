"""Reading only regular files: a FIFO, socket or device is named by its kind and never
opened (opening a FIFO for reading waits for a writer for ever; a device may have side
effects). Every reader of a user-named file goes through :func:`open_regular_file`:
folders of images, ``.npz`` files, calibration files, checksums and checkpoints."""

from __future__ import annotations

import os
import stat

from .errors import DataError

__all__ = ["special_file_kind", "open_regular_file"]


def special_file_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` is when it is not a regular file or a folder (a FIFO, a
    socket, a device), else None."""
    for test, kind in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else "not a regular file"


def open_regular_file(path: str | os.PathLike):
    """``path`` opened for binary reading, refused (:class:`DataError`) unless it is a regular
    file. Opened non-blocking and checked again on the open file, so a FIFO swapped in after
    the first check cannot block the read."""
    kind = special_file_kind(os.stat(path).st_mode)
    if kind is not None:
        raise DataError(f"{kind}, not a regular file (not opened)")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    kind = special_file_kind(os.fstat(fd).st_mode)
    if kind is not None or stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataError(f"{kind or 'a folder'}, not a regular file (not read)")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
