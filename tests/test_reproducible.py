"""Importing vaeood asks Intel MKL for run-to-run reproducible kernels (``MKL_CBWR``) before
torch computes anything, keeps a value the user set, warns where it came too late, and
reports name the CPU and the mode MKL really ran in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vaeood._reproducible import mkl_mode
from vaeood.experiments.common import machine_words, stamp

needs_mkl = pytest.mark.skipif(mkl_mode() is None, reason="this torch has no MKL (ARM or macOS build)")


def _python(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} if env is None else env
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)


def test_importing_vaeood_sets_strict_mkl_reproducibility():
    assert _python("import os, vaeood; print(os.environ.get('MKL_CBWR'))").stdout.strip() == "AUTO,STRICT"


def test_a_users_own_mkl_setting_is_kept():
    out = _python("import os, vaeood; print(os.environ.get('MKL_CBWR'))", {**os.environ, "MKL_CBWR": "COMPATIBLE"})
    assert out.stdout.strip() == "COMPATIBLE"


@needs_mkl
def test_mkl_really_runs_strict_when_torch_is_imported_first_but_has_not_computed():
    out = _python("import torch, vaeood; from vaeood._reproducible import mkl_mode; "
                  "torch.randn(64, 64) @ torch.randn(64, 64); print(mkl_mode())")
    assert out.stdout.strip() == "AUTO,STRICT"


WARN = ("import logging, torch; {before}import vaeood; logging.basicConfig(); "
        "from vaeood._reproducible import warn_if_not_reproducible; warn_if_not_reproducible()")


@needs_mkl
def test_training_warns_when_mkl_computed_before_vaeood_was_imported():
    late = _python(WARN.format(before="torch.randn(64, 64) @ torch.randn(64, 64); "))
    assert "MKL runs in mode OFF although MKL_CBWR=AUTO,STRICT" in late.stderr
    assert "import vaeood before any torch computation" in late.stderr
    assert _python(WARN.format(before="")).stderr == ""


def test_the_stamp_names_the_cpu_threads_and_mkl_mode():
    env = stamp("cpu")["environment"]
    assert env["cpu"] and env["cpu"] != "unknown"
    assert env["mkl_cbwr"] == mkl_mode()
    details = f" ({env['cpu_details']})" if env["cpu_details"] else ""
    assert machine_words(env) == f", {env['threads']} threads on {env['cpu']}{details}"
    assert machine_words({"threads": 2, "cpu": "AMD EPYC", "cpu_details": "family 26 model 2, AVX-512"}) == \
        ", 2 threads on AMD EPYC (family 26 model 2, AVX-512)"
    # a stamp from before the CPU was recorded still reads
    assert machine_words({"threads": 2}) == ", 2 threads"
