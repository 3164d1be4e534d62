"""Run-to-run reproducible CPU arithmetic, asked for when vaeood is imported.

Intel MKL chooses its kernels by each buffer's memory alignment unless told not to, so one
training config took one of two floating-point trajectories from the first epoch on (the
Fashion-MNIST conv VAE at latent 32, two threads, an Intel Xeon: 6 of 10 runs one, 4 the
other). With MKL's conditional numerical reproducibility in STRICT mode 8 runs of 8 agreed
(docs/findings.md, "Near-OOD"). MKL fixes its mode at its first computation, so importing
vaeood sets ``MKL_CBWR`` before that (a value the user set wins); where torch already computed
with MKL before vaeood was imported it is too late, and :func:`warn_if_not_reproducible` says
so. It does not make results agree across CPU models or vendors: the reports' stamp names the
CPU (:func:`cpu_description`) and the mode MKL really runs in (:func:`mkl_mode`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from pathlib import Path

os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

log = logging.getLogger(__name__)

#: MKL's code-path branches (``mkl_cbwr.h``), by their ``MKL_CBWR`` names
BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
            10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1"}
STRICT_BIT = 0x10000


def mkl_mode() -> str | None:
    """The mode torch's MKL runs in, spelt as ``MKL_CBWR`` is (``"AUTO,STRICT"``, ``"OFF"``,
    ...), from MKL's own ``mkl_serv_cbwr_get``; None where torch has no MKL (ARM or macOS
    builds). Reading it fixes the mode, like any MKL call, so it is asked only after import."""
    import torch

    try:
        get = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    value = get(-1)  # MKL_CBWR_ALL: the branch and the STRICT bit
    if value < 0:
        return None
    branch = BRANCHES.get(value & 0xFFFF, str(value & 0xFFFF))
    return branch + (",STRICT" if value & STRICT_BIT else "")


def warn_if_not_reproducible() -> None:
    """Warn when ``MKL_CBWR`` asks for STRICT but MKL runs without it: torch computed with MKL
    before vaeood was imported, so training on this CPU may not be reproducible to the bit."""
    asked = os.environ.get("MKL_CBWR", "")
    mode = mkl_mode()
    if "STRICT" in asked.upper() and mode is not None and "STRICT" not in mode:
        log.warning("MKL runs in mode %s although MKL_CBWR=%s: torch computed with MKL before vaeood was "
                    "imported, so training may not be reproducible to the bit on this CPU; import vaeood "
                    "before any torch computation, or set MKL_CBWR in the environment", mode, asked)


def cpu_description() -> dict:
    """The CPU's model name, its family/model numbers and widest SIMD (the name alone can be
    just "AMD EPYC"), and its physical cores (distinct (physical id, core id) pairs), from
    ``/proc/cpuinfo`` (elsewhere the name :mod:`platform` knows): CPU results agree to the bit
    only on one CPU model and thread count."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    fields, cores, phys = {}, set(), "0"
    for key, value in (tuple(part.strip() for part in line.split(":", 1)) for line in lines if ":" in line):
        fields.setdefault(key, value)
        if key == "physical id":
            phys = value
        elif key == "core id":
            cores.add((phys, value))
    flags = set(fields.get("flags", "").split())
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE/other"
    return {"cpu": fields.get("model name") or platform.processor() or platform.machine() or "unknown",
            "cpu_details": f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}, {simd}"
            if lines else "", "physical_cores": len(cores) or None}
