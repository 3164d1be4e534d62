"""Companion runs: the other runs a detector computes features with (the likelihood
ratio's background, LPath's second VAE), checked before any score is computed.

A detector declares the options that name them (``Detector.companions``). Each must be a
run directory, trained on the run's dataset and split and at the run's image shape: a
companion trained at another shape would see other pixels (a ``--pad``/``--resize`` conform
would conform the images to each model separately, and the scores would compare different
images), and one trained on another dataset answers another question. These are refused
(:class:`vaeood.training.config.ConfigError`, naming the option and both values). What the paper's
recipe asks beyond that (the background's pixel noise, LPath's different latent sizes)
is each detector's ``companion_warnings``: said, logged and recorded, not refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

from ..data.conform import shape_text
from ..training.checkpoint import checkpoint_path
from ..training.config import ConfigError
from ..training.run_dir import Run

log = logging.getLogger(__name__)

__all__ = ["check_companions"]


def _check_one(name: str, option: str, other: Path, run_dir: Path, run, shape) -> object:
    """``other``'s config, refused when it is not a run of ``run_dir``'s data and image shape."""
    if not (other / "config.json").is_file() or not checkpoint_path(other).is_file():
        raise ConfigError(f"detector {name!r}: {option} = {other} is not a trained run directory (no config.json "
                          "and checkpoint.pt); train it first (see the detector's documentation)")
    companion_run = Run(other)
    companion = companion_run.config
    mine = f"{run.data.name}/{run.data.split}"
    theirs = f"{companion.data.name}/{companion.data.split}"
    other_shape = companion_run.image_shape
    shapes = f"images of C×H×W = {shape_text(other_shape)}, but the run {run_dir} on {shape_text(shape)}"
    if theirs != mine:
        also = f" ({shapes})" if other_shape != shape else ""
        raise ConfigError(f"detector {name!r}: {option} = {other} was trained on {theirs}, but the run {run_dir} on "
                          f"{mine}{also}; train the companion on the run's data (--data.name={run.data.name})")
    if other_shape != shape:
        raise ConfigError(f"detector {name!r}: {option} = {other} was trained on {shapes}; the two models must see "
                          "the same pixels (--pad/--resize would conform the images to each separately)")
    return companion


def check_companions(run_dir: str | Path, detectors: Mapping) -> list[str]:
    """Check the companion runs of ``detectors`` (``{name: Detector}``) against the run
    ``run_dir`` (module docstring); return the detectors' warnings (also logged)."""
    run_dir = Path(run_dir)
    pairs = [(name, det, option, det.options.get(option)) for name, det in detectors.items()
             for option in getattr(det, "companions", ())]
    for name, _, option, value in pairs:
        if isinstance(value, str) and not value.strip() or not (value is None or isinstance(value, (str, Path))
                                                                 or hasattr(value, "posterior")):
            raise ConfigError(f"detector {name!r}: {option} must be a run directory (a path), got "
                              f"{type(value).__name__} {value!r}")
    pairs = [(n, d, o, Path(v)) for n, d, o, v in pairs if isinstance(v, (str, Path))]
    if not pairs:
        return []
    mine = Run(run_dir)
    run, shape = mine.config, mine.image_shape
    notes = []
    for name, det, option, other in pairs:
        companion = _check_one(name, option, other, run_dir, run, shape)
        for text in det.companion_warnings(option, companion, run):
            notes.append(f"detector {name!r}: {text}")
            log.warning("%s", notes[-1])
    return notes
