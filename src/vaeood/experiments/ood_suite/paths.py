"""Absolute paths in results made portable."""

from __future__ import annotations

import re
from pathlib import Path

_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[\w.+=-]+/)*[\w.+=-]+")


def scrub_paths(value, out_dir: Path):
    """Absolute paths in results become portable: relative to ``out_dir`` when inside
    it, else the file's name (provenance is names and digests, not the machine's folders)."""
    root = str(out_dir.resolve())

    def fix(match: re.Match) -> str:
        path = match.group(0)
        resolved = str(Path(path).resolve()) if path.startswith("/") else path
        if resolved == root:
            return out_dir.name
        if resolved.startswith(root + "/"):
            return str(Path(resolved).relative_to(root))
        return Path(path).name

    if isinstance(value, dict):
        return {k: scrub_paths(v, out_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v, out_dir) for v in value]
    if isinstance(value, str):
        absolute_out = str(out_dir.resolve())
        if not out_dir.is_absolute():
            value = value.replace(str(out_dir) + "/", absolute_out + "/")
        return _ABS_PATH.sub(fix, value)
    return value


