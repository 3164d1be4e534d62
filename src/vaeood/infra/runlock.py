"""One writer per run directory: an advisory lock on ``RUN/.vaeood.lock``.

Two processes writing one run (two trainings, or a training and a scoring) would mix
their files: ``config.json`` of one run beside the checkpoint of another. Whatever
writes into a run holds :func:`run_lock` on it; a second writer is refused at once
with a :class:`RunLockedError` that names the process holding the lock (its PID,
host and command, which the holder writes into the lock file).

The lock is ``fcntl.flock`` on the lock file, so the operating system releases it
when its process ends in any way (even SIGKILL): a stale lock file never blocks. The
lock is re-entrant within a process (``evaluate`` scores while it holds the run);
threads of one process share it. Under torchrun only rank 0 takes it. Where
``fcntl`` does not exist (Windows) runs are not locked. flock is advisory: programs
other than vaeood that write into a run are not stopped.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from . import distributed
from .atomic import WriteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".vaeood.lock"

log = logging.getLogger(__name__)
_held: dict[Path, list] = {}  # lock file → [file descriptor or None, depth] of the locks this process holds
_mutex = threading.Lock()


class RunLockedError(RuntimeError):
    """Another process is writing into the run directory."""


@contextlib.contextmanager
def run_lock(run_dir: str | Path, what: str) -> Iterator[None]:
    """Hold the run directory's lock while the block runs (``what``: e.g. ``"train"``,
    recorded for the message another writer gets). ``run_dir`` must exist."""
    path = (Path(run_dir) / LOCK_NAME).absolute()
    if fcntl is None or not distributed.is_main():
        yield
        return
    with _mutex:
        if path in _held:  # re-entered by this process
            _held[path][1] += 1
        else:
            _held[path] = [_acquire(path, what), 1]
    try:
        yield
    finally:
        with _mutex:
            _held[path][1] -= 1
            if _held[path][1] == 0:
                fd = _held.pop(path)[0]
                if fd is not None:
                    os.close(fd)  # closing the file releases the lock


def holds_run_lock(what: str) -> Callable:
    """Decorator: run a function whose first argument is a run directory under
    :func:`run_lock` (when the directory exists: otherwise the function says what is
    missing)."""
    def wrap(fn):
        @functools.wraps(fn)
        def locked(run_dir, *args, **kwargs):
            if not Path(run_dir).is_dir():
                return fn(run_dir, *args, **kwargs)
            with run_lock(run_dir, what):
                return fn(run_dir, *args, **kwargs)
        return locked
    return wrap


def _acquire(path: Path, what: str) -> int | None:
    """Lock ``path`` without waiting and record who holds it; return its descriptor
    (None for a run this process can neither write nor lock: it can only read it, and
    a write there fails with its own message)."""
    fd, writable = _open(path)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _read(fd)
        os.close(fd)
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise RunLockedError(
            f"{path.parent} is in use by another vaeood process ({holder or 'it has not said which yet'}); "
            f"only one process may write into a run at a time. Wait for it to finish, or stop it "
            f"(a killed process releases the lock by itself)") from None
    if writable:
        with contextlib.suppress(OSError):  # who holds it is for messages only (e.g. a full disk)
            os.ftruncate(fd, 0)
            os.write(fd, _holder(what).encode())
    return fd


def _open(path: Path) -> tuple[int | None, bool]:
    """The lock file opened for writing (created if need be), else for reading (a lock
    file of another user: flock works on it all the same), else None. A symbolic link
    is refused: a run directory from elsewhere must not make us truncate another file."""
    for flags, writable in ((os.O_RDWR | os.O_CREAT, True), (os.O_RDONLY, False)):
        try:
            return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666), writable
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise WriteError(f"{path} is a symbolic link; vaeood does not write through it. "
                                 "Remove it and run the command again", exc.errno) from None
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
                raise
    log.debug("cannot open or create %s; not locking %s", path, path.parent)
    return None, False


def _holder(what: str) -> str:
    command = " ".join([os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
    return (f"pid {os.getpid()} on {socket.gethostname()}, {what}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {command}")[:500]


def _read(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 1000, 0).decode(errors="replace").strip()
    return ""
