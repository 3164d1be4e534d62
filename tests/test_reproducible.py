"""Importing vaeood asks Intel MKL for run-to-run reproducible kernels (``MKL_CBWR``) before
torch is loaded, keeps a value the user set, and reports name the CPU their numbers come from."""

from __future__ import annotations

import os
import subprocess
import sys

from vaeood.experiments.common import machine_words, stamp

PROBE = "import os, vaeood, torch; print(os.environ.get('MKL_CBWR'))"


def _probe(env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_vaeood_sets_strict_mkl_reproducibility():
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    assert _probe(env) == "AUTO,STRICT"


def test_a_users_own_mkl_setting_is_kept():
    assert _probe({**os.environ, "MKL_CBWR": "COMPATIBLE"}) == "COMPATIBLE"


def test_the_stamp_names_the_cpu_threads_and_mkl_mode():
    env = stamp("cpu")["environment"]
    assert env["cpu"] and env["cpu"] != "unknown"
    assert env["mkl_cbwr"] == os.environ.get("MKL_CBWR")
    assert machine_words(env) == f", {env['threads']} threads on {env['cpu']}"
    # a stamp from before the CPU was recorded still reads
    assert machine_words({"threads": 2}) == ", 2 threads"
