"""Committed results name their data by file name and digest and their runs relative to
the report: no absolute path of the machine that made them (issue: provenance without
paths)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MACHINE_PATH = re.compile(r"/(work|tmp|root|home|Users|mnt|scratch)/")
TEXT = {".json", ".jsonl", ".md", ".csv", ".txt"}


def _committed_text_files():
    for folder in ("results", "benchmarks/results"):
        yield from (p for p in sorted((REPO / folder).rglob("*"))
                    if p.is_file() and p.suffix in TEXT and "runs" not in p.relative_to(REPO).parts)


def test_the_pattern_catches_machine_paths():
    assert MACHINE_PATH.search('"source": "/work/shared/data/mnist_test.npz"')
    assert MACHINE_PATH.search("--out /tmp/regen/capacity-quick")
    assert not MACHINE_PATH.search('"source": "mnist_test.npz", "run_dir": "runs/dlogistic"')


@pytest.mark.parametrize("path", list(_committed_text_files()), ids=lambda p: str(p.relative_to(REPO)))
def test_committed_results_hold_no_machine_path(path):
    hits = [m.group(0) for m in MACHINE_PATH.finditer(path.read_text(errors="replace"))]
    assert not hits, f"{path.relative_to(REPO)} holds absolute paths: {hits[:3]}"
