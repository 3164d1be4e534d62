"""Name → class registries for every plug point (dataset, model, likelihood, objective,
estimator, feature, detector).

A registry maps the names used in configs and on the command line to the classes or
functions that implement them, so that adding a plug-in is one decorator and no
``if/elif`` chain on names exists anywhere. An unknown name is refused with the list
of known names and a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import inspect
from contextlib import contextmanager
from typing import Callable, Generic, Iterator, Mapping, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def split_names(values) -> list[str]:
    """``"a,b"`` or ``["a,b", "c"]`` → ``["a", "b", "c"]``: stripped, blanks dropped, each once."""
    items = [values] if isinstance(values, str) else list(values)
    return list(dict.fromkeys(n.strip() for item in items for n in str(item).split(",") if n.strip()))


def did_you_mean(name: str, choices) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_options(fn, options: dict, kind: str, name: str, supplied: tuple[str, ...]) -> dict:
    """Refuse options that plug-in ``fn`` does not take, before any work starts.

    ``supplied`` names the parameters the caller fills itself (``model``, ``x``, ...),
    which are not options. Returns a copy of ``options``.
    """
    if not isinstance(options, Mapping):
        raise ConfigError(f"the options of {kind} {name!r} must be an object of named values, got "
                          f"{type(options).__name__} {options!r}")
    accepted = [name for name, p in inspect.signature(fn).parameters.items() if name not in supplied
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(f"{kind} {name!r} takes no option {unknown[0]!r}{did_you_mean(unknown[0], accepted)}; "
                          f"its options: {', '.join(accepted) or 'none'}")
    return dict(options)


class UnknownNameError(KeyError):
    """A name that no plug-in is registered under (a user's mistake, not a bug: the
    message lists the known names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A named collection of plug-ins of one kind (``kind`` names it in errors)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    @contextmanager
    def registered(self, name: str, item: T) -> Iterator[T]:
        """Register ``item`` as ``name`` for the duration of a ``with`` block (a plug-in
        defined in a test, or a stand-in for a registered one), then restore what was
        there before."""
        missing = object()
        before = self._items.get(name, missing)
        self._items[name] = item
        try:
            yield item
        finally:
            if before is missing:
                del self._items[name]
            else:
                self._items[name] = before

    def get(self, name: str) -> T:
        if not isinstance(name, str):  # e.g. a number from a JSON option
            raise UnknownNameError(f"the {self.kind} must be named by a text, got {type(name).__name__} {name!r}; "
                                   f"known: {', '.join(sorted(self._items))}")
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                f"known: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
