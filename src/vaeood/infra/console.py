"""What the ``vaeood`` command shows a person on stderr: its log handler, set up by the
command (never at import; library code only logs, see DESIGN.md).

Three levels, by the command line's ``-q`` / ``-v``:

- default: the ``vaeood`` loggers at INFO, one line per stage (what is trained, scored,
  evaluated, and what it found), as bare text; warnings as ``warning: ...``;
- ``-v``: DEBUG, every per-item detail (each dataset file loaded, each cached feature reused
  or computed, each epoch), each line prefixed with its level and logger;
- ``-q``: warnings and errors only, and no progress bars.

Each distinct warning is shown once per command (:class:`OnceFilter`): evaluating many
models on a subset of a split warns about the subset once, not once per load.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from tqdm.auto import tqdm

from . import progress

LEVELS = {"quiet": logging.WARNING, "default": logging.INFO, "verbose": logging.DEBUG}
PACKAGE = "vaeood"


class OnceFilter(logging.Filter):
    """Drops a warning (or error) that this filter has passed before, with the same logger,
    level and text; counts what it dropped in ``repeats``. Records below WARNING pass."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()
        self.repeats = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            self.repeats += 1
            return False
        self.seen.add(key)
        return True


class BarSafeHandler(logging.StreamHandler):
    """A stream handler that lifts the progress bars on its stream out of the way of each
    line it writes (and puts them back under it), so lines and bars never mix."""

    def emit(self, record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


class PeopleFormatter(logging.Formatter):
    """Bare text for INFO, ``warning: `` / ``error: `` before the others; with
    ``detail`` (``-v``) every line names its level and logger, as the logs always did."""

    def __init__(self, detail: bool = False):
        super().__init__()
        self.detail = detail

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.detail:
            return f"{record.levelname.lower()} {record.name}: {text}"
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


@contextlib.contextmanager
def console(verbosity: str = "default", stream=None) -> Iterator[OnceFilter]:
    """For the block: a handler on the root logger writing to ``stream`` (default: the
    current ``sys.stderr``), the ``vaeood`` loggers at the level of ``verbosity`` (a key of
    :data:`LEVELS`), every warning once, no progress bars when quiet. Everything is put back
    after the block, so calling the command twice in one process (the tests) adds nothing.
    Other libraries' loggers keep the root level (warnings)."""
    level = LEVELS[verbosity]
    handler = BarSafeHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(PeopleFormatter(detail=verbosity == "verbose"))
    once = OnceFilter()
    handler.addFilter(once)
    root, package = logging.getLogger(), logging.getLogger(PACKAGE)
    previous = package.level
    root.addHandler(handler)
    package.setLevel(level)
    with progress.silenced() if level > logging.INFO else contextlib.nullcontext():
        try:
            yield once
        finally:
            if once.repeats and verbosity == "verbose":
                handler.stream.write(f"({once.repeats} repeats of the warnings above were not shown)\n")
            root.removeHandler(handler)
            package.setLevel(previous)
            handler.flush()
