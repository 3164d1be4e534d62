"""Old public names kept for one release (0.2), each warning once per call site with a
:class:`DeprecationWarning` that names its replacement (the names go in 0.3)."""

from __future__ import annotations

import functools
import warnings
from typing import Callable


def deprecated_alias(new: Callable, old: str, where: str = "vaeood") -> Callable:
    """``new`` under its old name ``where.old``: the same function and result, with a warning."""

    @functools.wraps(new)
    def alias(*args, **kwargs):
        warnings.warn(f"{where}.{old} is now {where}.{new.__name__}; the old name goes in vaeood 0.3",
                      DeprecationWarning, stacklevel=2)
        return new(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old
    alias.__doc__ = f"Deprecated (goes in vaeood 0.3): :func:`{where}.{new.__name__}` under its old name."
    return alias
