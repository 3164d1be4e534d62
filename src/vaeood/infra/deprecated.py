"""Old public names kept for one release (0.2), each warning once per call site with a
:class:`DeprecationWarning` that names its replacement (the names go in 0.3)."""

from __future__ import annotations

import functools
import warnings
from typing import Callable

from .errors import ConfigError


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


def renamed_keywords(**old_to_new: str) -> Callable[[Callable], Callable]:
    """A decorator: ``fn(old=v)`` still works as ``fn(new=v)``, with a warning naming the
    new keyword (the old keywords go in 0.3); giving both is a TypeError."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)  # inspect.signature follows __wrapped__: the new keywords only
        def renamed(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old}= and its new name {new}=")
                    warnings.warn(f"{fn.__name__}({old}=...) is now {fn.__name__}({new}=...); the old keyword "
                                  "goes in vaeood 0.3", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return renamed
    return wrap


def renamed_keys(raw, renamed: dict[str, str], where: str):
    """A config ``raw`` (nested ``{"data": {"fit": ...}}``, or dotted overrides
    ``{"data.fit": ...}``) with the old keys of ``renamed`` (dotted, old → new) under their
    new names, and one :class:`DeprecationWarning` naming them; given both, refused."""
    if not isinstance(raw, dict):
        return raw  # refused by the config's own checks
    dotted = any(isinstance(k, str) and "." in k for k in raw)
    nested = {s: p for s, p in raw.items() if isinstance(p, dict)}
    have = [k for k in renamed if (k in raw if dotted else k.split(".")[1] in nested.get(k.split(".")[0], {}))]
    if not have:
        return raw
    out = dict(raw) if dotted else {s: dict(p) if isinstance(p, dict) else p for s, p in raw.items()}
    for old in have:
        new = renamed[old]
        node, old_name, new_name = (out, old, new) if dotted else (out[old.split(".")[0]], *_names(old, new))
        if new_name in node:
            raise ConfigError(f"{where}: both {old} and its new name {new} are given; keep {new} only")
        node[new_name] = node.pop(old_name)
    warnings.warn(f"{where}: " + ", ".join(f"{k} is now {renamed[k]}" for k in have)
                  + " (the old keys go in vaeood 0.3)", DeprecationWarning, stacklevel=3)
    return out


def _names(old: str, new: str) -> tuple[str, str]:
    """The last parts of two dotted keys of one section (``data.fit``, ``data.conform``)."""
    (section, old_name), (new_section, new_name) = old.split("."), new.split(".")
    assert section == new_section, "a key renamed within its section"
    return old_name, new_name
