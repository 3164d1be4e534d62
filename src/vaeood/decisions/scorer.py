"""The score boundary between a run and its decisions: a detector of
:mod:`vaeood.detectors` under a run (fitted on the run's held-out slice when it fits),
giving scores of slices of the training split and of arrays of images, and what
:meth:`vaeood.detectors.Detector.why_not` asks of a run (:func:`run_info`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration_file import NoCalibrationError
from ..detectors import DETECTORS, make_detector
from ..evaluation.companions import check_companions
from ..evaluation.evaluate import fit_detector
from ..features import compute_features, is_normalised, needs_features
from ..features.image_slice import ImageSlice
from ..inference.estimators import is_hierarchical
from ..infra.jsonable import strict_json
from ..training.run_dir import Run


class DetectorScorer:
    """A detector of :mod:`vaeood.detectors` under a run: fitted (when it fits) on the
    run's held-out fitting slice, scoring slices of the training split (features cached
    in ``RUN/features/``) and arrays of images (uncached).

    Noise: the features of the calibration slice use ``seed``; those of the images to
    decide on use ``seed + 1``, so that a test image identical to a calibration image
    does not share its noise draw (a feature's noise depends on the image's bytes and
    the seed alone, :mod:`vaeood.features.core`; not on its position or the batch size).
    """

    def __init__(self, run_dir: Path, detector: str, options: dict | None = None, *, device: str = "cpu",
                 seed: int = 0, data_dir: str | None = None, batch_size: int | None = None):
        self.run_dir, self.device, self.seed, self.data_dir = run_dir, device, seed, data_dir
        self.batch_size = batch_size
        self.detector = make_detector(detector, options)
        self.name = detector
        self.fits = self.detector.fits
        self.options = strict_json(self.detector.options)
        self.warnings: list[str] = []  # what the checks of the companion runs allow but the user should know
        self.run = Run(run_dir, device)

    @property
    def model(self):
        return self.run.model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.image_shape)

    def check_companions(self) -> None:
        """Refuse companion runs of another dataset or image shape; keep the detector's warnings."""
        self.warnings = check_companions(self.run_dir, {self.name: self.detector})

    def check_applies(self, has_fit_data: bool) -> None:
        reason = self.detector.why_not(run_info(self.model, has_fit_data))
        if reason is not None:
            raise NoCalibrationError(f"detector {self.name!r} does not apply to {self.run_dir}: {reason}")

    def fit(self, start: int, stop: int, seed: int | None = None) -> None:
        """Fit on images [start, stop) of the run's training split (checked to be held out), their
        features drawn with ``seed`` (None: the scorer's)."""
        if self.fits:
            fit_detector(str(self.run_dir), self.detector, start=start, stop=stop, data_dir=self.data_dir,
                         device=self.device, seed=self.seed if seed is None else seed)
        else:
            self.detector.fit({})

    def score_slice(self, images: ImageSlice, seed: int) -> np.ndarray:
        """Scores of a slice of a dataset split, from features cached in ``RUN/features/``."""
        feats = compute_features(str(self.run_dir), images.dataset, images.split, self.detector.needs,
                                 **images.where(), batch_size=self.batch_size, device=self.device, seed=seed)
        return np.asarray(self.detector.score(feats), dtype=np.float64)

    def score_images(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Scores of an array of images, from features computed now (no cache): the
        calibration images and the images to decide on go through this same path, so
        that both are scored by the same code."""
        needs = {}
        for key, opts in self.detector.needs.items():  # another run's model (e.g. a background model) by object
            opts = dict(opts)
            if isinstance(opts.get("run"), (str, Path)):
                opts["run"] = Run(opts["run"], self.device).model
            needs[key] = opts
        feats = needs_features(self.model, images, needs, seed=seed, batch_size=self.batch_size)
        return np.asarray(self.detector.score(feats), dtype=np.float64)


def fit_seed(record: dict) -> int:
    """The seed of the features a calibration ``record``'s detector was fitted on: its
    ``fit_seed`` where the fit was made apart from the calibration, else its ``seed``."""
    return record.get("fit_seed", record["seed"])


def make_scorer(run_dir: str | Path, detector: str, options: dict | None = None, *, device: str = "cpu",
                seed: int = 0, data_dir: str | None = None, batch_size: int | None = None) -> DetectorScorer:
    """The object that gives ``detector``'s scores under the run (see the module doc)."""
    if detector not in DETECTORS.names():
        from ..infra.registry import did_you_mean

        raise NoCalibrationError(f"unknown detector {detector!r}{did_you_mean(detector, DETECTORS.names())}; "
                                 f"known: {', '.join(DETECTORS.names())}")
    return DetectorScorer(Path(run_dir), detector, options, device=device, seed=seed, data_dir=data_dir,
                          batch_size=batch_size)


def run_info(model, has_fit_data: bool) -> dict:
    """What :meth:`vaeood.detectors.Detector.why_not` asks of a run."""
    return {"normalised": is_normalised(model), "has_fit_data": has_fit_data, "hierarchical": is_hierarchical(model)}


def companion_runs(options: dict) -> list[str]:
    """The other runs a detector's options name (``background_run``, ``second_run``, ...)."""
    return [str(v) for k, v in options.items() if k.endswith("_run") and isinstance(v, (str, Path))]
