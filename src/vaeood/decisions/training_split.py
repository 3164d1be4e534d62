"""The run's training split as found now, checked to be the one the run trained on: the
held-out images (:meth:`vaeood.training.run_dir.Run.heldout_range`) that calibration and
the detector's fit take are then the ones training never saw."""

from __future__ import annotations

import logging

from .calibration_file import NoCalibrationError
from ..data.load import load_for_run
from ..training.run_dir import Run

log = logging.getLogger(__name__)


def training_split(run: Run, data_dir: str | None):
    """The run's training split as found now, and where it was found."""
    config = run.config
    where = config.data.data_dir or data_dir  # as training and the detectors' fitting slice look for it
    data = load_for_run(config.data, data_dir=where, run_dir=run.path)
    trained = run.train_data
    _check_same_folder(trained, data)
    if bool(trained.get("is_sample")) != data.is_sample:
        raise NoCalibrationError(
            f"the run trained on {'the bundled sample' if trained.get('is_sample') else 'the real dataset'} of "
            f"{data.name}/{data.split} but {'the bundled sample' if data.is_sample else 'the real dataset'} was "
            "found now; calibrate with the data the run trained on (--data-dir)")
    if trained.get("split_size") not in (None, len(data.images)):
        raise NoCalibrationError(f"the run trained on a {data.name}/{data.split} of {trained['split_size']} images, "
                                 f"but the one found now ({data.source}) has {len(data.images)}; calibrate with the "
                                 "data the run trained on (--data-dir)")
    if trained.get("source") and trained["source"] != data.source:
        log.warning("the run trained on %s/%s from %s; calibrating with %s (check it is the same file)",
                    data.name, data.split, trained["source"], data.source)
    return data, where


def _check_same_folder(trained: dict, data) -> None:
    """A run trained on a folder is calibrated only on that folder as it was: its held-out
    images are the last ones in the folder's order, so a file added, removed, renamed or
    changed since would move other images into (or out of) the held-out slice, or change
    them, and the calibration would silently not be of images training left out."""
    then = (trained.get("folder") or {}).get("sha256")
    now = (data.folder or {}).get("sha256")
    if then is None and now is None:
        return
    if then != now:
        was = f"{trained['folder']['images']} images, SHA-256 {then}" if then else "not a folder"
        found = f"{data.folder['images']} images, SHA-256 {now}" if now else "not a folder"
        raise NoCalibrationError(
            f"the folder {data.name!r} changed since the run trained on it (then: {was}; now: {found}); its "
            "held-out images are no longer the ones training left out. Restore the folder as it was, or train "
            "again on it as it is now")
