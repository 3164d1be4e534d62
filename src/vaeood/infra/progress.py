"""Progress bars: one helper, :func:`bar`, for every loop that takes more than a few seconds.

A bar is shown only where a person watches: on a terminal (tqdm's ``disable=None`` hides it
when stderr is not a TTY, so logs, CI and tests never see one), on rank 0 under torchrun, and
not inside :func:`silenced` (the command line's ``-q``). It leaves no line behind
(``leave=False``): what a stage found is said by its log line, not by its bar.

``enabled``, the ``progress=`` argument the library's functions take: None (the default)
shows the bar on a terminal, True shows it anywhere (not when silenced), False never.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterable, Iterator

from tqdm.auto import tqdm

from . import distributed

_silenced = 0  # depth of the silenced() blocks in force (the command's -q)


def bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
        enabled: bool | None = None, **kwargs) -> tqdm:
    """``tqdm(iterable)`` as the toolkit shows it (see the module docstring); iterate it as
    the iterable, ``set_postfix`` it as a tqdm."""
    if enabled is False or _silenced or not distributed.is_main():
        disable = True
    else:
        disable = None if enabled is None else False
    return tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True, **kwargs)


def shown(enabled: bool | None = None) -> bool:
    """Whether :func:`bar` would show a bar now (e.g. to skip work only a bar uses)."""
    if enabled is False or _silenced or not distributed.is_main():
        return False
    return True if enabled else sys.stderr.isatty()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """No bars inside the block (the command line's ``-q``, and torchrun's other ranks)."""
    global _silenced
    _silenced += 1
    try:
        yield
    finally:
        _silenced -= 1
