"""Calibration records: where a run keeps them (``RUN/calibration/<detector>.npz``),
which detector a run uses when none is named (:func:`default_detector`), and
:func:`load_calibration`, which reads a record and refuses it when it no longer holds
for the run (another checkpoint, other options, slices outside the held-out range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration_file import NoCalibrationError, check_slices, read_calibration_file
from .recommended import RECOMMENDED
from .scorer import make_scorer
from ..detectors import DETECTORS
from ..training.run_dir import Run

CALIBRATION_DIR = "calibration"
# version of the calibration files; another is refused, saying to calibrate again
FORMAT = 2
FORMAT_CHANGE = "format 2: every feature's noise is keyed on each image's bytes, so scores made before differ"
#: how close scores computed again must come to the calibration's (float32 features, other batch sizes)
REPRODUCED = {"rtol": 1e-5, "atol": 1e-6}


def calibrated_detectors(run_dir: str | Path) -> list[str]:
    """The detectors the run has a calibration file for, by name."""
    folder = Path(run_dir) / CALIBRATION_DIR
    return sorted(p.stem for p in folder.glob("*.npz") if p.stem in DETECTORS.names()) if folder.is_dir() else []


def default_detector(run_dir: str | Path) -> str:
    """The detector ``vaeood detect`` uses when none is named: the first calibrated one of
    :data:`RECOMMENDED`, else the run's only calibrated one; refused (saying what to do)
    when the run has none, or several and none recommended."""
    have = calibrated_detectors(run_dir)
    chosen = next((name for name in RECOMMENDED if name in have), have[0] if len(have) == 1 else None)
    if chosen is not None:
        return chosen
    if not have:
        raise NoCalibrationError(f"run {run_dir} has no calibrated detector; make the recommended one with: "
                                 f"vaeood calibrate {run_dir} (or train and calibrate in one step: vaeood fit)")
    raise NoCalibrationError(f"run {run_dir} has calibrations for {', '.join(have)}, none of them a recommended one "
                             f"({', '.join(RECOMMENDED)}); choose one with --detector (detector= in Python)")


def calibration_path(run_dir: str | Path, detector: str) -> Path:
    return Path(run_dir) / CALIBRATION_DIR / f"{detector}.npz"


def how_to_calibrate(run_dir: Path, detector: str) -> str:
    return f"vaeood calibrate {run_dir} --detector {detector} (in Python: vaeood.calibrate(run, {detector!r}))"


def load_calibration(run_dir: str | Path, detector: str | None = None, detector_options: dict | None = None) -> dict:
    """The calibration record of ``detector`` (None: :func:`default_detector`) in the run:
    the split, options, digests and ``scores`` (float64 ``[n]``). Refused
    (:class:`NoCalibrationError`, saying how to make one) when there is none, when the
    checkpoint changed since, or when ``detector_options`` (if given) differ from the
    calibrated ones."""
    run_dir = Path(run_dir)
    detector = detector or default_detector(run_dir)
    if detector not in DETECTORS.names():
        make_scorer(run_dir, detector)  # refused with the known names
    path = calibration_path(run_dir, detector)
    if not path.exists():
        raise NoCalibrationError(
            f"run {run_dir} has no calibration for detector {detector!r} ({path} does not exist). Make it from "
            f"held-out training images with: {how_to_calibrate(run_dir, detector)}")
    how = how_to_calibrate(run_dir, detector)
    record = read_calibration_file(path, detector, FORMAT, FORMAT_CHANGE, how)
    run = Run(run_dir)
    _check_against_run(run, path, record, how)
    _check_recorded_options(run_dir, path, record, how)
    if record.get("checkpoint_sha256") != run.checkpoint_sha256:
        raise NoCalibrationError(f"{path} was made with another checkpoint (the model has been trained since); "
                                 f"calibrate again: {how_to_calibrate(run_dir, detector)}")
    if detector_options is not None:
        want = make_scorer(run_dir, detector, detector_options).options
        if want != record["detector_options"]:
            raise NoCalibrationError(f"{path} calibrates detector {detector!r} with options "
                                     f"{record['detector_options']}, not {want}; calibrate with those options "
                                     f"(--detector-options) or detect with the calibrated ones")
    return record


def _check_recorded_options(run_dir: Path, path: Path, record: dict, how: str) -> None:
    """The record's detector options are ones the detector takes, as calibrate records them."""
    try:
        scorer = make_scorer(run_dir, record["detector"], record["detector_options"])
    except (ValueError, TypeError, KeyError) as err:
        raise NoCalibrationError(f"{path}: field 'detector_options' is {record['detector_options']}, which detector "
                                 f"{record['detector']!r} refuses ({err}); calibrate again: {how}") from None
    canonical = scorer.options
    if scorer.fits != (record["fit_slice"] is not None):
        raise NoCalibrationError(f"{path}: field 'fit_slice' is {record['fit_slice']}, but detector "
                                 f"{record['detector']!r} {'fits' if scorer.fits else 'does not fit'}; calibrate "
                                 f"again: {how}")
    if canonical != record["detector_options"]:
        raise NoCalibrationError(f"{path}: field 'detector_options' is {record['detector_options']}, not as "
                                 f"calibrate records it ({canonical}); calibrate again: {how}")


def _check_against_run(run: Run, path: Path, record: dict, how: str) -> None:
    """The record's split and slices against the run's own training range (from its config
    and checkpoint, not from the file): see :func:`vaeood.decisions.calibration_file.check_slices`."""
    size = run.train_data.get("split_size") or record["n_split"]
    check_slices(path, record, split=(run.config.data.name, run.config.data.split), split_size=size,
                 trained=run.training_count(size), heldout=run.heldout_range(size), how=how)


def calibration_scores(run_dir: str | Path, detector: str | None = None) -> np.ndarray:
    """The saved calibration scores ``[n]`` of ``detector`` (see :func:`load_calibration`)."""
    return load_calibration(run_dir, detector)["scores"]
