"""``vaeood`` commands run as separate processes (for kills, interrupts and two writers
at once), importing this checkout's source."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def launch(argv: list[str], log: Path) -> subprocess.Popen:
    """Start ``python -m vaeood.cli ARGV`` with one thread, its output into ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    # a shell runs background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the command the default, as a terminal would
    return subprocess.Popen([sys.executable, "-m", "vaeood.cli", *argv], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(ready, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``ready()`` until true; fail if ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the process ended before it was ready"
        assert time.monotonic() < deadline, "the process made no progress"
        time.sleep(0.02)
