"""How long a reproduction took, written into its report: wall time, CPU time and how
shared the machine was (the 1-minute load average at the start and the end).

:func:`vaeood.experiments.reproduce` wraps every experiment's ``run`` in :class:`Timing`
and appends its line to ``report.md`` and its numbers to ``metrics.json`` (``timing``), so
that every report states the command (its first lines) and its wall time. Finished runs
in ``out_dir/runs/`` are reused, so a second call of the same command is faster: the line
says so.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..infra.atomic import atomic_write_json, atomic_write_text


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): how shared the machine was."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_text(load: list, cpus: int | None) -> str:
    """``"0.2 at the start and 0.3 at the end"``, flagged when above the CPU count."""
    if not load or any(v is None for v in load):
        return "unknown"
    text = f"{load[0]:.1f} at the start and {load[1]:.1f} at the end"
    if cpus and max(load) > cpus:
        text += " (above the CPU count: other jobs shared the machine, so the wall time is inflated)"
    return text


class Timing:
    """``with Timing(out_dir) as t: ...``; then ``t.record`` (JSON-able) and ``t.text()``."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)

    def __enter__(self) -> Timing:
        self.fresh = not (self.out_dir / "runs").exists()  # nothing to reuse: the call's time is the whole cost
        self._wall, self._cpu, self._load = time.perf_counter(), time.process_time(), load_average()
        return self

    def __exit__(self, *exc) -> None:
        self.record = {"wall_seconds": round(time.perf_counter() - self._wall, 1),
                       "cpu_seconds": round(time.process_time() - self._cpu, 1), "cpus": os.cpu_count(),
                       "load_average": [self._load, load_average()], "from_nothing": self.fresh}

    def text(self) -> str:
        r = self.record
        minutes, seconds = divmod(round(r["wall_seconds"]), 60)
        return (f"{minutes} min {seconds:02d} s wall and {r['cpu_seconds'] / 60:.1f} CPU-min (all threads) for this "
                f"call, on {r['cpus']} CPUs with a 1-minute load average of {load_text(r['load_average'], r['cpus'])}; "
                + ("from nothing (no runs to reuse)" if r["from_nothing"] else
                   "with runs found in `runs/` (the set-up section says which were reused)"))

    def append_to(self) -> None:
        """Add the line to ``report.md`` and the numbers to ``metrics.json`` of ``out_dir``."""
        report, metrics = self.out_dir / "report.md", self.out_dir / "metrics.json"
        if report.is_file():
            atomic_write_text(report, report.read_text().rstrip("\n") + f"\n\n## Wall time\n\n{self.text()}.\n")
        if metrics.is_file():
            atomic_write_json(metrics, {**json.loads(metrics.read_text()), "timing": self.record})
