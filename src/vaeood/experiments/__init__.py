"""One-command reproductions and studies (``vaeood reproduce NAME``).

Each experiment is an object registered in ``EXPERIMENTS`` with ``presets`` (names of
budgets, e.g. ``quick`` for minutes on a CPU and ``paper`` for full training), a
``run(out_dir, preset, ...) -> dict`` that trains what it needs, evaluates, and writes
``out_dir/report.md`` and ``out_dir/metrics.json``, and ``summary(result) -> str`` for
the terminal. Finished runs in ``out_dir/runs/`` are reused, unfinished ones resumed.
"""

from __future__ import annotations

from pathlib import Path

from ..infra.registry import UnknownNameError
from .common import EXPERIMENTS
from .timing import Timing
from . import fig2  # noqa: F401  (registers fig2a, fig2b)
from . import forward_kl  # noqa: F401  (registers forward-kl)
from . import capacity  # noqa: F401  (registers capacity, capacity_cifar10)
from . import ood_suite  # noqa: F401  (registers ood-suite)
from . import one_class  # noqa: F401  (registers one-class)



def reproduce(name: str, out_dir: str | Path, *, preset: str = "quick", **kwargs) -> dict:
    """Run experiment ``name`` with ``preset``; see the experiment's ``run`` for options."""
    exp = EXPERIMENTS.get(name)
    if preset not in exp.presets:
        raise UnknownNameError(f"experiment {name!r} has no preset {preset!r}; presets: {', '.join(exp.presets)}")
    with Timing(Path(out_dir)) as timing:
        out = exp.run(Path(out_dir), preset, **kwargs)
    timing.append_to()
    return out


__all__ = ["EXPERIMENTS", "reproduce"]
