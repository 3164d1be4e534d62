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


# Runs the CLI with os.replace wrapped: the N-th time a file whose name matches a pattern is
# about to be moved into place (its temporary file written, the target not yet replaced), the
# process SIGKILLs itself. A kill at a chosen point of any atomic write (vaeood.infra.atomic).
_DIE_BEFORE_REPLACE = r"""
import fnmatch, os, signal, sys
pattern, die_at, calls, real_replace = sys.argv[1], int(sys.argv[2]), [0], os.replace
def replace(src, dst, *args, **kwargs):
    if fnmatch.fnmatch(os.path.basename(dst), pattern):
        calls[0] += 1
        if calls[0] == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
from vaeood.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_killed(argv: list[str], log: Path, pattern: str, nth: int = 1, timeout: float = 300.0) -> None:
    """Run ``vaeood ARGV`` until it is about to put its ``nth`` file matching ``pattern`` (a
    file name glob) in place, and SIGKILL it there; fail if it ends otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    with log.open("wb") as out:
        rc = subprocess.run([sys.executable, "-c", _DIE_BEFORE_REPLACE, pattern, str(nth), *argv], env=env,
                            stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
    assert rc == -signal.SIGKILL, f"exit {rc}, not killed before writing {pattern} #{nth}: {log.read_text()}"
