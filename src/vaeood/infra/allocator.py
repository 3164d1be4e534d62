"""Keep freed memory inside the process, so that training steps stop page-faulting.

glibc's ``malloc`` serves every block above ``M_MMAP_THRESHOLD`` (128 KiB at start,
raised on the fly up to 32 MiB) with a fresh ``mmap`` and gives a free heap top above
``M_TRIM_THRESHOLD`` back to the operating system. A training step allocates and frees
the same activation tensors (megabytes each) every step, so in a fresh process their
pages are faulted in again and again (``benchmarks/train_speed.py --fresh-processes``
measures what raising both thresholds saves; BENCHMARKS.md, docs/usage.md). The ``vaeood`` command
raises them at start; a program that embeds vaeood can call
:func:`keep_freed_memory` itself (it changes the whole process's allocator). The cost
is memory kept rather than returned: at most ``trim_threshold`` of free heap.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, <malloc.h>
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 256 * 2**20) -> bool:
    """Raise glibc's mmap and trim thresholds (``mallopt``); returns whether both took.

    ``mmap_threshold`` is capped by glibc at 32 MiB on 64-bit systems. A no-op returning
    False where the C library has no ``mallopt`` (not Linux/glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
