"""The two exceptions of the data package.

Both are ``ValueError`` subclasses so that callers who only know "bad input" can catch
them; ``DatasetNotFoundError`` is also a ``FileNotFoundError`` so that code written
against the standard library's notion of a missing file keeps working.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data file exists but cannot be used: corrupt, truncated, wrong format, wrong
    dtype or shape, or a published MD5 that does not match.

    The message names the file (and the field, for array files), says what was
    expected and what was found, and how to fix it.
    """


class DatasetNotFoundError(DataError, FileNotFoundError):
    """No usable copy of a dataset was found.

    The message lists every place that was looked in and how to get the data
    (download, copy the official files, or use the bundled sample).
    """
