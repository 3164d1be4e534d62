"""One-command reproductions and studies (``vaeood reproduce NAME``).

Each experiment is an object registered in ``EXPERIMENTS`` with ``presets`` (names of
budgets, e.g. ``quick`` for minutes on a CPU and ``paper`` for full training), a
``run(out_dir, preset, ...) -> dict`` that trains what it needs, evaluates, and writes
``out_dir/report.md`` and ``out_dir/metrics.json``, and ``summary(result) -> str`` for
the terminal; and ``own_keys``, the config keys it sets for each run itself (an override of
one is refused). A run in ``out_dir/runs/`` is reused or resumed only if everything that
made it equals what the call asks for; else the call is refused, or with ``overwrite``
retrains it (:mod:`.reuse`).
"""

from __future__ import annotations

from pathlib import Path

from ..infra.registry import UnknownNameError
from .common import EXPERIMENTS
from .reuse import keep_if_unchanged, read_result, record_runs, refuse_own_keys, reproduction
from .timing import Timing
from . import fig2  # noqa: F401  (registers fig2a, fig2b)
from . import forward_kl  # noqa: F401  (registers forward-kl)
from . import capacity  # noqa: F401  (registers capacity, capacity_cifar10)
from . import ood_suite  # noqa: F401  (registers ood-suite)
from . import one_class  # noqa: F401  (registers one-class)



def reproduce(name: str, out_dir: str | Path, *, preset: str = "quick", overwrite: bool = False, **kwargs) -> dict:
    """Run experiment ``name`` with ``preset``; see the experiment's ``run`` for options.
    ``overwrite``: retrain the runs in ``out_dir`` that another call made (else refused).
    Where every number equals the last call's, its ``metrics.json`` and ``report.md`` are kept."""
    exp = EXPERIMENTS.get(name)
    if preset not in exp.presets:
        raise UnknownNameError(f"experiment {name!r} has no preset {preset!r}; presets: {', '.join(exp.presets)}")
    refuse_own_keys(name, exp.own_keys, kwargs.get("overrides"))
    out_dir = Path(out_dir)
    before = read_result(out_dir)
    with reproduction(out_dir, preset, overwrite) as call, Timing(out_dir) as timing:
        out = exp.run(out_dir, preset, **kwargs)
    record_runs(out_dir, call)
    timing.append_to()
    keep_if_unchanged(out_dir, before)
    return {**out, "runs_used": call.runs}


__all__ = ["EXPERIMENTS", "reproduce"]
