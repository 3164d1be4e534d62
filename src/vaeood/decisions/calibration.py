"""Calibrate a detector on a run's held-out training images (:func:`calibrate`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import conformal
from .calibration_file import NoCalibrationError
from .fitted_detector import fitted_path, save_fitted
from .recommended import recommended_detector
from .records import CALIBRATION_DIR, FORMAT, calibration_path
from .scorer import make_scorer
from .training_split import training_split
from ..evaluation.fitdata import DEFAULT_FIT_IMAGES
from ..evaluation.kept_fit import KeptFit
from ..features import FEATURES_DIR, images_digest
from ..features.image_slice import ImageSlice
from ..infra.atomic import atomic_write, remove_stale_temps
from ..infra.distributed import is_main
from ..infra.jsonable import strict_json
from ..infra.runlock import holds_run_lock
from ..training.run_dir import Run

log = logging.getLogger(__name__)

DEFAULT_N_CALIBRATION = 2000


@holds_run_lock("calibrate")  # it writes RUN/calibration and RUN/features
def calibrate(run_dir: str | Path, detector: str | None = None, *, detector_options: dict | None = None,
              n_calibration: int | None = None, n_fit: int | None = None, data_dir: str | None = None,
              device: str = "cpu", seed: int = 0, batch_size: int | None = None, fitted: KeptFit | None = None) -> dict:
    """Fit ``detector`` on held-out training images [h, h + n_fit) (never trained on,
    :meth:`vaeood.training.run_dir.Run.heldout_range`; ``n_fit`` ≤ 5,000 and half of them, 0 when it does
    not fit), score the next ``n_calibration`` (default 2,000) into ``RUN/calibration/
    <detector>.npz`` and return the record; :class:`NoCalibrationError` when too few were
    held out (retrain with ``data.limit``/``data.holdout``) or the detector does not apply.
    ``detector`` None: the recommended one (:func:`recommended_detector`); ``fitted``: that detector
    already fitted on this fitting slice, taken instead of a second fit (:func:`_fit`)."""
    run_dir = Path(run_dir)
    for folder in (run_dir / CALIBRATION_DIR, run_dir / FEATURES_DIR) if is_main() else ():
        remove_stale_temps(folder)  # left by a calibrate killed while writing
    detector = detector or recommended_detector(run_dir, device)
    run = Run(run_dir)
    data, where = training_split(run, data_dir)
    config, total = run.config, len(data.images)
    first, last = run.heldout_range(total)
    held = max(0, last - first)
    trained = run.training_count(total)
    if held == 0:
        keep = min(2 * DEFAULT_N_CALIBRATION, total // 2)
        raise NoCalibrationError(
            f"no held-out training images to calibrate detector {detector!r} on: the run trained on all {total} "
            f"images of {data.name}/{data.split}. Calibration needs in-distribution images that neither training "
            f"nor the detector's fit saw: retrain with --data.limit={total - keep} (or --data.holdout={keep}) to "
            f"keep {keep} images out of training")
    scorer = make_scorer(run_dir, detector, detector_options, device=device, seed=seed, data_dir=where,
                         batch_size=batch_size)
    scorer.check_applies(has_fit_data=True)
    scorer.check_companions()
    fit_slice, cal_slice = _plan_slices(first, last, scorer.fits, n_fit, n_calibration, f"{data.name}/{data.split}")
    n = cal_slice[1] - cal_slice[0]
    fit_seed = _fit(scorer, fit_slice, fitted, seed, (config.data.name, data.split))
    cal_images = data.images[cal_slice[0]:cal_slice[1]]
    # through the feature cache, shared by every detector calibrated on the run: the same
    # features_of, noise and batches as score_images gives these images (equal to the bit,
    # tested); a batch of other images may round float32 sums differently (about 1e-7 of an
    # ELBO), which can change a decision only for a score that close to a calibration score
    scores = scorer.score_slice(ImageSlice(config.data.name, data.split, start=cal_slice[0], stop=cal_slice[1],
                                           data_dir=where, allow_sample=config.data.allow_sample), seed)
    conformal.check_scores(scores, f"detector {detector!r} calibration scores")  # finite, or refused
    path = calibration_path(run_dir, detector)
    # the fit first: a kill before the record leaves an old record whose digest refuses this file
    fitted_sha256 = save_fitted(fitted_path(path), scorer.detector, cal_images, scores,
                                lambda sample: scorer.score_images(sample, seed))
    record = {
        "format": FORMAT, "detector": detector, "detector_options": scorer.options,
        "dataset": config.data.name, "split": data.split, "source": data.source, "is_sample": data.is_sample,
        "n_split": total, "train_slice": [0, trained], "heldout": [first, last], "fit_slice": fit_slice,
        "calibration_slice": cal_slice, "n_calibration": n,
        "calibration_images_sha256": images_digest(cal_images),
        "checkpoint_sha256": run.checkpoint_sha256, "seed": seed, "fit_seed": fit_seed,
        "score_direction": "higher = more out-of-distribution", "fitted_sha256": fitted_sha256,
        "fit_info": strict_json(scorer.detector.fit_info),  # what the fit chose, for people (vaeood fit's line)
    }
    atomic_write(path, lambda f: np.savez(f, scores=scores, meta=np.array(json.dumps(record))))
    log.debug("calibrated %s on %d held-out images %s/%s[%d:%d] → %s", detector, n, data.name, data.split,
              *cal_slice, path)
    return {**record, "scores": scores}


def _fit(scorer, fit_slice, fitted, seed: int, split: tuple[str, str]) -> int:
    """Fit ``scorer``'s detector on ``fit_slice`` with ``seed``, or give it ``fitted`` (a
    :class:`vaeood.evaluation.kept_fit.KeptFit` of :func:`vaeood.evaluation.evaluate`) where that is the
    same detector with the same options fitted on that slice of ``split``; the seed of the fit's
    features (recorded as ``fit_seed``). A fit of anything else is not taken. The fit images' noise
    never meets the calibration images' (an image's noise depends on its bytes and the seed
    alone: :mod:`vaeood.inference.noise`), so the calibration stands as it would with a fit at
    ``seed``."""
    if fitted is not None and scorer.fits and fit_slice is not None:
        if fitted.is_fit_of(scorer.name, scorer.options, split, fit_slice):
            scorer.detector = fitted.detector
            return int(fitted.seed)
        log.debug("calibrate %s: the fit given is not of this detector and slice; fitting again", scorer.name)
    scorer.fit(*(fit_slice or (0, 0)))
    return seed


def _plan_slices(first: int, last: int, fits: bool, n_fit: int | None, n_calibration: int | None,
                 where: str) -> tuple[list[int] | None, list[int]]:
    """The fitting slice (None for a detector that does not fit) and the calibration slice,
    one after the other in the held-out range [first, last); refused when they do not fit."""
    held = last - first
    if fits:
        n_fit = n_fit if n_fit is not None else min(DEFAULT_FIT_IMAGES, held // 2)
        if not 1 <= n_fit < held:
            raise NoCalibrationError(f"n_fit = {n_fit}: the detector fits on held-out images and calibration needs "
                                     f"others; {held} are held out, so choose 1 ≤ n_fit < {held}")
    else:
        n_fit = 0
    cal_start = first + n_fit
    available = last - cal_start
    n = n_calibration if n_calibration is not None else min(DEFAULT_N_CALIBRATION, available)
    if not 1 <= n <= available:
        fit_text = f" and the detector's {n_fit} fitting images" if n_fit else ""
        raise NoCalibrationError(f"n_calibration = {n}: {where} has {available} held-out images "
                                 f"left after the training images{fit_text}; choose 1 ≤ n ≤ {available}")
    return ([first, first + n_fit] if n_fit else None), [cal_start, cal_start + n]
