"""The result of :func:`vaeood.decisions.flagging.decide`: one row per image and a summary,
written as a CSV, a JSON summary and an HTML page."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .detect_report import html_path_for, page
from .outputs import CSV_HEADER, csv_cell, summary_path_for
from ..data.decode import conversion_text
from ..data.listing import printable
from ..infra.atomic import atomic_write_json, atomic_write_text, writing_together
from ..infra.distributed import is_main


@dataclass
class Detection:
    """The result of :func:`decide`: one row per image, and a summary.

    ``names``, ``scores``, ``p_values``, ``flagged`` are ``[N]``; ``summary`` is a JSON-able
    dict (input, skipped files, conform, detector, calibration split, guarantee, counts).
    ``images`` (uint8 ``[N, H, W, C]``, the images scored, as the model saw them: the input's
    own array, not a copy) and ``calibration_scores`` (``[n]``) serve the HTML page
    (:mod:`vaeood.decisions.detect_report`); :func:`decide` keeps both.
    """

    names: list[str]
    scores: np.ndarray
    p_values: np.ndarray
    flagged: np.ndarray
    summary: dict
    labels: np.ndarray | None = field(default=None, repr=False)
    images: np.ndarray | None = field(default=None, repr=False)
    calibration_scores: np.ndarray | None = field(default=None, repr=False)
    classes: list[str] | None = None

    def csv_text(self) -> str:
        """The CSV: ``file`` (escaped by :func:`csv_cell`), ``score``, ``p_value``, ``flagged``,
        and ``class`` (the class subfolder) for a folder with class subfolders."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER.split(",") + ["class"] * (self.classes is not None))
        classes = self.classes if self.classes is not None else [None] * len(self.names)
        for name, s, p, f, c in zip(self.names, self.scores, self.p_values, self.flagged, classes, strict=True):
            w.writerow([csv_cell(name), repr(float(s)), repr(float(p)), int(bool(f)),
                        *([] if c is None else [csv_cell(c)])])
        return buf.getvalue()

    def html_text(self) -> str:
        """The HTML page (:func:`vaeood.decisions.detect_report.page`)."""
        return page(self)

    def write(self, csv_path: str | Path) -> tuple[Path, Path, Path]:
        """Write the CSV, the page ``<csv stem>.html`` and ``<csv stem>.summary.json`` beside it
        (each atomically); returns the three paths. The summary of an earlier detect to the same
        CSV is removed first and the new one written last: an interrupted write leaves no summary
        beside a CSV or page of another detect, or beside none. Two detects writing the same CSV at
        once write one after the other (:func:`vaeood.infra.atomic.writing_together`): the three
        files are always one detect's."""
        csv_path = Path(csv_path)
        summary_path, html_path = summary_path_for(csv_path), html_path_for(csv_path)
        csv_text, html_text = self.csv_text(), self.html_text()  # made before the lock: it is held briefly
        with writing_together(csv_path.parent):
            if is_main():  # under torchrun only rank 0 writes (vaeood.infra.atomic)
                summary_path.unlink(missing_ok=True)
            atomic_write_text(csv_path, csv_text)
            atomic_write_text(html_path, html_text)
            atomic_write_json(summary_path, {**self.summary, "csv": csv_path.name, "html": html_path.name})
        return csv_path, summary_path, html_path

    def summary_text(self) -> str:
        s = self.summary
        lines = [f"{s['n_images']} images from {printable(s['input'])} ({s['input_kind']}); detector {s['detector']} "
                 f"{_options_text(s['detector_options'])}; {s['n_calibration']} calibration images "
                 f"{s['calibration']['dataset']}/{s['calibration']['split']}"
                 f"[{s['calibration']['slice'][0]}:{s['calibration']['slice'][1]}]"]
        for key, verb in (("skipped", "skipped"), ("left_out", "left out")):
            if s.get(key):
                lines.append(f"{verb} {len(s[key])} files: " + "; ".join(f"{printable(n)} ({r})"
                                                                         for n, r in s[key][:10]) +
                             (" ..." if len(s[key]) > 10 else ""))
        if s.get("converted"):
            lines.append(f"modes: {conversion_text(s['converted'])}")
        if s.get("n_escaped"):
            lines.append(f"{s['n_escaped']} file names escaped in the CSV: {s['csv_escaping']}")
        lines += [f"warning: {w}" for w in s.get("warnings", [])]
        if s["fitted"]:
            lines.append(f"images fitted to the model: {s['fitted']['description']} (a change of the images: the "
                         "guarantee covers them only if in-distribution images arrive fitted the same way)")
        rule = {"marginal": f"flag iff p ≤ {s['alpha']:g}",
                "conditional": f"flag iff score > the calibration order statistic of rank {s.get('rank')}",
                "fdr": f"Benjamini–Hochberg at q = {s['alpha']:g}"}[s["guarantee"]]
        thr = f", score threshold {s['threshold']:.6g}" if s["threshold"] is not None else ""
        lines.append(f"flagged {s['n_flagged']} of {s['n_images']} ({rule}{thr})")
        lines.append(s["guarantee_text"])
        return "\n".join(lines)


def _options_text(options: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in options.items() if v not in ({}, None)) + ")"
