"""Fitting data for detectors: a held-out slice of the *training* split that training
never saw — the images after ``data.limit``, or the last ``data.holdout`` images.

Detectors that fit (``typicality``, ``dose``, ``lpath``, ...) fit only there. Fitting on
test images, on another dataset than the model's training set, or on images the model
was trained on is refused (:class:`~vaeood.detectors.FitDataError`). Issue 16's
calibration takes a second, disjoint slice (``offset``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..training.config import Config
from ..data.load import load_for_run
from ..detectors.base import FitDataError
from ..training.run_dir import Run, heldout_range, training_count

DEFAULT_FIT_IMAGES = 5000


def run_config(run_dir: str | Path) -> Config:
    """The run's resolved config (``RUN/config.json``; :attr:`vaeood.training.run_dir.Run.config`)."""
    return Run(run_dir).config


def heldout_slice(run_dir: str | Path, *, n: int | None = None, offset: int = 0, data_dir: str | None = None,
                  data=None) -> dict:
    """The fitting slice of a run: ``{dataset, split, start, stop, n, trained_range,
    source, data_dir, allow_sample}``; ``n`` images (default up to 5,000) from ``offset``
    images into the held-out part. Raises :class:`FitDataError` when nothing is held out."""
    config = run_config(run_dir)
    where = config.data.data_dir or data_dir
    data = data or load_for_run(config.data, data_dir=where, run_dir=run_dir)
    total = len(data.images)
    first, last = heldout_range(config, total)
    start = first + int(offset)
    stop = min(last, start + int(n or DEFAULT_FIT_IMAGES))
    if stop <= start:
        raise FitDataError(
            f"{run_dir} was trained on {training_count(config.data, total)} of the {total} images of "
            f"{config.data.name}/{config.data.split}, leaving {max(0, last - start)} held-out images from offset "
            f"{offset}: detectors that fit need held-out training images; retrain with --data.limit=N or "
            "--data.holdout=N (the last N images are then never trained on)")
    return {"dataset": config.data.name, "split": config.data.split, "start": start, "stop": stop,
            "n": stop - start, "trained_range": [0, training_count(config.data, total)], "split_size": total,
            "source": data.source, "is_sample": data.is_sample, "data_dir": where,
            "allow_sample": config.data.allow_sample}


def class_counts(run_dir: str | Path, fit_slice: dict) -> dict[int, int]:
    """``{label: images}`` of the fitting slice ``fit_slice`` (of :func:`heldout_slice`): what a
    detector that fits a classifier asks before it is run (``Detector.why_not``'s ``fit_class_counts``)."""
    config = run_config(run_dir)
    data = load_for_run(config.data, data_dir=fit_slice["data_dir"], run_dir=run_dir)
    labels, counts = np.unique(data.labels[fit_slice["start"]:fit_slice["stop"]], return_counts=True)
    return {int(c): int(n) for c, n in zip(labels, counts, strict=True)}


def check_fit_slice(run_dir: str | Path, dataset: str, split: str, start: int, stop: int, *,
                    split_size: int | None = None) -> None:
    """Refuse a fitting slice that is not held-out training data of this run."""
    config = run_config(run_dir)
    if split != config.data.split or dataset != config.data.name:
        raise FitDataError(
            f"detectors fit only on held-out images of the model's training split "
            f"({config.data.name}/{config.data.split}), never on {dataset}/{split}: "
            + ("test images are what detectors are evaluated on" if split == "test"
               else "another dataset is not in-distribution"))
    if split_size is not None:
        trained = training_count(config.data, split_size)
        first, _ = heldout_range(config, split_size)
        if start < first:
            raise FitDataError(f"images [{start}, {min(stop, trained)}) of {dataset}/{split} were used to train "
                               f"{run_dir}; fit on held-out images from index {first} on")
