"""What ``vaeood detect`` writes and may replace: the CSV's cells escaped against formula
injection (:func:`csv_cell`), where the summary goes, and :func:`check_outputs`, which
refuses an ``out`` that would replace an input, a run's file or a file detect did not write."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .detect_report import HTML_HEAD, html_path_for
from ..data import DataError
from ..data.regular_files import open_regular_file, special_file_kind

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_ESCAPING = ("file names starting with =, +, -, @, a tab or a carriage return are written into the CSV with "
                "a leading ' (OWASP's rule against CSV injection), so that a spreadsheet shows them as text")


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet will not run as a formula: prefixed with ``'``
    when it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (OWASP)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def summary_path_for(csv_path: str | Path) -> Path:
    """Where :meth:`Detection.write` puts the summary of ``csv_path``: ``<stem>.summary.json`` beside it."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".summary.json")


def check_outputs(out: str | Path, run_dirs, source) -> None:
    """Refuse (:class:`vaeood.data.DataError`, before any work) an ``out`` whose CSV, summary
    or HTML page would replace an input or a run's file: one inside a run directory of
    ``run_dirs`` (the run, its companion runs), the input file itself, or a path inside the
    input folder (links followed), or a folder, or a file detect did not write; and an ``out``
    whose page would be the CSV itself (``--out r.html``)."""
    src = Path(source) if isinstance(source, (str, Path)) and Path(source).exists() else None
    if html_path_for(out) == Path(out):
        raise DataError(f"--out {out}: the HTML page {html_path_for(out)} would be written over the CSV; "
                        "name a CSV file to write (e.g. results.csv)")
    for path in (Path(out), summary_path_for(out), html_path_for(out)):
        target = path.resolve()
        for run in run_dirs:
            run = Path(run).resolve()
            if target == run or run in target.parents:
                raise DataError(f"--out {out}: {path} lies inside the run directory {run}, whose files (the "
                                "checkpoint, calibration, features) it could replace; write the results elsewhere")
        if src is not None and (target == src.resolve() or src.is_dir() and src.resolve() in target.parents):
            what = "lies inside the input folder" if src.is_dir() else "is the input file"
            raise DataError(f"--out {out}: {path} {what} {source}; write the results elsewhere")
        if path.is_dir():
            raise DataError(f"--out {out}: {path} is a folder; name a CSV file to write")
        _check_replaceable(out, path)


CSV_HEADER = "file,score,p_value,flagged"


def _check_replaceable(out, path: Path) -> None:
    """An existing ``path`` is replaced only when it is what :meth:`Detection.write` writes
    (a CSV with its header, a summary with its ``score_direction``, or a page starting with
    :data:`vaeood.decisions.detect_report.HTML_HEAD`): any other file, e.g.
    a dataset's ``.npz`` read by name or a copy of a checkpoint, is an input to keep. Never
    opened unless it is a regular file."""
    if not path.exists() and not path.is_symlink():
        return
    kind = special_file_kind(os.stat(path).st_mode) if path.exists() else "a broken symbolic link"
    if kind is not None:
        raise DataError(f"--out {out}: {path} is {kind}, not a file detect wrote; write the results elsewhere")
    is_html = path == html_path_for(out)
    with open_regular_file(path) as f:
        head = f.read(len(CSV_HEADER) + 1) if path == Path(out) else \
            f.read(len(HTML_HEAD.encode())) if is_html else f.read(2**24)
    if not head:  # an empty file: nothing to lose
        return
    if path == Path(out):
        ours = head in ((CSV_HEADER + "\n").encode(), (CSV_HEADER + ",").encode())  # ",class" may follow
    elif is_html:
        ours = head == HTML_HEAD.encode()
    else:
        try:
            ours = "score_direction" in json.loads(head)
        except (ValueError, TypeError):
            ours = False
    if not ours:
        raise DataError(f"--out {out}: {path} exists and is not a file detect wrote (it would be replaced); "
                        "write the results elsewhere, or remove it first")
