"""From a trained run to decisions on new images: calibrate a detector on held-out
in-distribution training images, then flag images at a false-alarm rate you choose,
with the guarantees of :mod:`vaeood.decisions.conformal`.

The held-out images are the part of the run's training split that training never used
(after ``data.limit``, or the last ``data.holdout`` images; :mod:`vaeood.evaluation.fitdata`)::

    train split:  [0, h)                 the model's training images
                  [h, h + n_fit)         the detector's fitting images (detectors that fit;
                                         the slice :func:`vaeood.evaluation.evaluate` fits on)
                  [h + n_fit, … + n)     calibration images, disjoint from both

:func:`calibrate` fits the detector where it fits, scores the calibration slice and
records the split, the scores, the detector and its options, the checkpoint's SHA-256
and the SHA-256 of the calibration images in ``RUN/calibration/<detector>.npz``.
:func:`decide` (``vaeood detect``) reads a folder, ``.npz`` or dataset, scores it with
the same detector and turns the scores into conformal p-values and decisions. The
detector is the fit calibrate saved (:mod:`vaeood.decisions.fitted_detector`), once a fixed sample
of 64 calibration images rescores to its calibration scores; otherwise it is fitted
again on the same slice from cached features and checked to reproduce every calibration
score. It refuses when the run has no calibration for the detector (saying how to
make one), or when the model, the calibration images or the options changed; when the
calibration file does not add up (every array and field checked, the slices against the
run's own never-trained range: :mod:`vaeood.decisions.calibration_file`); when a companion run is of
another dataset or image shape (:mod:`vaeood.evaluation.companions`); and, before any work, when
``out`` would replace an input, a run's file or any file detect did not write
(:func:`check_outputs`). File names that a spreadsheet would run as formulas are escaped
in the CSV (:func:`csv_cell`).

:func:`operating_points_for_run` gives reports the realised FPR and TPR at α = 0.01,
0.05, 0.1 from a run's calibration and a detector's test scores.

The guarantees hold for in-distribution images exchangeable with the calibration images
(the test split of the same dataset, processed the same way) and say nothing about how
many OOD images are found; see :mod:`vaeood.decisions.conformal`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import conformal
from .calibration_file import NoCalibrationError, check_slices, read_calibration_file
from ..infra.atomic import atomic_write, atomic_write_json, atomic_write_text
from ..infra.runlock import holds_run_lock
from ..training.checkpoint import checkpoint_path, load_checkpoint
from ..evaluation.companions import check_companions
from ..data import DataError
from ..data.load import load_for_run
from ..data.checksums import file_hexdigest
from ..data.folder import InputImages, display_name, load_input, printable
from ..data.regular_files import open_regular_file, special_file_kind
from .detect_report import HTML_HEAD, html_path_for, page
from ..detectors import DETECTORS, detector_names, make_detector, per_detector_options
from ..inference.estimators import is_hierarchical
from ..evaluation.evaluate import fit_detector
from ..features import compute_features, is_normalised, needs_features
from ..evaluation.fitdata import DEFAULT_FIT_IMAGES, heldout_range, run_config
from .fitted_detector import fitted_path, load_fitted, save_fitted
from ..infra.registry import UnknownNameError
from ..training.run import load_model
from ..training.train import training_count

log = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"
DEFAULT_N_CALIBRATION = 2000
# version of the calibration files; another is refused, saying to calibrate again
FORMAT = 2
FORMAT_CHANGE = "format 2: every feature's noise is keyed on each image's bytes, so scores made before differ"
DEFAULT_ALPHAS = (0.01, 0.05, 0.1)
#: how close scores computed again must come to the calibration's (float32 features, other batch sizes)
REPRODUCED = {"rtol": 1e-5, "atol": 1e-6}


# -- the score boundary ---------------------------------------------------------------------
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
        self.options = _jsonable(self.detector.options)
        self.warnings: list[str] = []  # what the checks of the companion runs allow but the user should know
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model, _, _ = load_model(self.run_dir, self.device)
        return self._model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.image_shape)

    def check_companions(self) -> None:
        """Refuse companion runs of another dataset or image shape; keep the detector's warnings."""
        self.warnings = check_companions(self.run_dir, {self.name: self.detector})

    def check_applies(self, has_fit_data: bool) -> None:
        reason = self.detector.why_not(_run_info(self.model, has_fit_data))
        if reason is not None:
            raise NoCalibrationError(f"detector {self.name!r} does not apply to {self.run_dir}: {reason}")

    def fit(self, start: int, stop: int) -> None:
        """Fit on images [start, stop) of the run's training split (checked to be held out)."""
        if self.fits:
            fit_detector(str(self.run_dir), self.detector, start=start, stop=stop, data_dir=self.data_dir,
                         device=self.device, seed=self.seed)
        else:
            self.detector.fit({})

    def score_slice(self, dataset: str, split: str, *, seed: int, start: int | None = None,
                    stop: int | None = None, limit: int | None = None, data_dir=None, allow_sample: bool = False,
                    fit: str | None = None) -> np.ndarray:
        """Scores of a slice of a dataset split, from features cached in ``RUN/features/``."""
        feats = compute_features(str(self.run_dir), dataset, split, self.detector.needs, data_dir=data_dir,
                                 start=start, stop=stop, limit=limit, batch_size=self.batch_size, device=self.device,
                                 seed=seed, allow_sample=allow_sample, fit=fit)
        return np.asarray(self.detector.score(feats), dtype=np.float64)

    def score_images(self, images: np.ndarray, seed: int) -> np.ndarray:
        """Scores of an array of images, from features computed now (no cache): the
        calibration images and the images to decide on go through this same path, so
        that both are scored by the same code."""
        needs = {}
        for key, opts in self.detector.needs.items():  # another run's model (e.g. a background model) by object
            opts = dict(opts)
            if isinstance(opts.get("run"), (str, Path)):
                opts["run"] = load_model(opts["run"], self.device)[0]
            needs[key] = opts
        feats = needs_features(self.model, images, needs, seed=seed, batch_size=self.batch_size)
        return np.asarray(self.detector.score(feats), dtype=np.float64)


def make_scorer(run_dir: str | Path, detector: str, options: dict | None = None, *, device: str = "cpu",
                seed: int = 0, data_dir: str | None = None, batch_size: int | None = None) -> DetectorScorer:
    """The object that gives ``detector``'s scores under the run (see the module doc)."""
    if detector not in DETECTORS.names():
        from ..infra.registry import did_you_mean

        raise NoCalibrationError(f"unknown detector {detector!r}{did_you_mean(detector, DETECTORS.names())}; "
                                 f"known: {', '.join(DETECTORS.names())}")
    return DetectorScorer(Path(run_dir), detector, options, device=device, seed=seed, data_dir=data_dir,
                          batch_size=batch_size)


#: the detector a user gets without asking: the first of these that applies to the run.
#: ``fused`` holds far- and near-OOD evidence (Fashion-MNIST → MNIST, noise, constant images
#: 0.999–1.000 AUROC and rotated 90° 0.92 in the ood-suite); ``dose_plus`` where a latent
#: density cannot be had (a hierarchical VAE has no single q(z|x)); ``nll`` last.
RECOMMENDED = ("fused", "dose_plus", "nll")


def _run_info(model, has_fit_data: bool) -> dict:
    """What :meth:`vaeood.detectors.Detector.why_not` asks of a run."""
    return {"normalised": is_normalised(model), "has_fit_data": has_fit_data, "hierarchical": is_hierarchical(model)}


def recommended_detector(run_dir: str | Path, device: str = "cpu") -> str:
    """The first detector of :data:`RECOMMENDED` that applies to the run's model."""
    info = _run_info(load_model(run_dir, device)[0], has_fit_data=True)
    return next(name for name in RECOMMENDED if make_detector(name).why_not(info) is None)


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


def companion_runs(options: dict) -> list[str]:
    """The other runs a detector's options name (``background_run``, ``second_run``, ...)."""
    return [str(v) for k, v in options.items() if k.endswith("_run") and isinstance(v, (str, Path))]


def _jsonable(value):
    """Options as they are recorded in JSON (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


# -- calibration -----------------------------------------------------------------------------
def images_sha256(images: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def calibration_path(run_dir: str | Path, detector: str) -> Path:
    return Path(run_dir) / CALIBRATION_DIR / f"{detector}.npz"


def _training_split(run_dir: Path, data_dir: str | None):
    """The run's config, its training split as found now, and where it was found."""
    config = run_config(run_dir)
    where = config.data.data_dir or data_dir  # as training and the detectors' fitting slice look for it
    data = load_for_run(config.data, data_dir=where)
    trained = load_checkpoint(checkpoint_path(run_dir), map_location="cpu").get("train_data") or {}
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
    return config, data, where


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


@holds_run_lock("calibrate")  # it writes RUN/calibration and RUN/features
def calibrate(run_dir: str | Path, detector: str | None = None, *, detector_options: dict | None = None,
              n_calibration: int | None = None, n_fit: int | None = None, data_dir: str | None = None,
              device: str = "cpu", seed: int = 0, batch_size: int | None = None) -> dict:
    """Fit ``detector`` on held-out training images [h, h + n_fit) (never trained on,
    :func:`vaeood.evaluation.fitdata.heldout_range`; ``n_fit`` ≤ 5,000 and half of them, 0 when it does
    not fit), score the next ``n_calibration`` (default 2,000) into ``RUN/calibration/
    <detector>.npz`` and return the record; :class:`NoCalibrationError` when too few were
    held out (retrain with ``data.limit``/``data.holdout``) or the detector does not apply.
    ``detector`` None: the recommended one (:func:`recommended_detector`)."""
    run_dir = Path(run_dir)
    detector = detector or recommended_detector(run_dir, device)
    config, data, where = _training_split(run_dir, data_dir)
    total = len(data.images)
    first, last = heldout_range(config, total)
    held = max(0, last - first)
    trained = training_count(config.data, total)
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
    scorer.fit(*(fit_slice or (0, 0)))
    cal_images = data.images[cal_slice[0]:cal_slice[1]]
    scores = scorer.score_images(cal_images, seed)
    conformal.check_scores(scores, f"detector {detector!r} calibration scores")  # finite, or refused
    path = calibration_path(run_dir, detector)
    # the fit first: a kill before the record leaves an old record whose digest refuses this file
    fitted_sha256 = save_fitted(fitted_path(path), scorer.detector, cal_images, scores)
    record = {
        "format": FORMAT, "detector": detector, "detector_options": scorer.options,
        "dataset": config.data.name, "split": data.split, "source": data.source, "is_sample": data.is_sample,
        "n_split": total, "train_slice": [0, trained], "heldout": [first, last], "fit_slice": fit_slice,
        "calibration_slice": cal_slice, "n_calibration": n,
        "calibration_images_sha256": images_sha256(cal_images),
        "checkpoint_sha256": file_hexdigest(checkpoint_path(run_dir), "sha256"), "seed": seed,
        "score_direction": "higher = more out-of-distribution", "fitted_sha256": fitted_sha256,
    }
    atomic_write(path, lambda f: np.savez(f, scores=scores, meta=np.array(json.dumps(record))))
    log.debug("calibrated %s on %d held-out images %s/%s[%d:%d] → %s", detector, n, data.name, data.split,
              *cal_slice, path)
    return {**record, "scores": scores}


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


def _how_to_calibrate(run_dir: Path, detector: str) -> str:
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
            f"held-out training images with: {_how_to_calibrate(run_dir, detector)}")
    how = _how_to_calibrate(run_dir, detector)
    record = read_calibration_file(path, detector, FORMAT, FORMAT_CHANGE, how)
    _check_against_run(run_dir, path, record, how)
    _check_recorded_options(run_dir, path, record, how)
    ckpt = file_hexdigest(checkpoint_path(run_dir), "sha256")
    if record.get("checkpoint_sha256") != ckpt:
        raise NoCalibrationError(f"{path} was made with another checkpoint (the model has been trained since); "
                                 f"calibrate again: {_how_to_calibrate(run_dir, detector)}")
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


def _check_against_run(run_dir: Path, path: Path, record: dict, how: str) -> None:
    """The record's split and slices against the run's own training range (from its config
    and checkpoint, not from the file): see :func:`vaeood.decisions.calibration_file.check_slices`."""
    config = run_config(run_dir)
    trained = load_checkpoint(checkpoint_path(run_dir), map_location="cpu").get("train_data") or {}
    size = trained.get("split_size") or record["n_split"]
    check_slices(path, record, split=(config.data.name, config.data.split), split_size=size,
                 trained=training_count(config.data, size), heldout=heldout_range(config, size), how=how)


def calibration_scores(run_dir: str | Path, detector: str | None = None) -> np.ndarray:
    """The saved calibration scores ``[n]`` of ``detector`` (see :func:`load_calibration`)."""
    return load_calibration(run_dir, detector)["scores"]


# -- decisions -------------------------------------------------------------------------------
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
CSV_ESCAPING = ("file names starting with =, +, -, @, a tab or a carriage return are written into the CSV with "
                "a leading ' (OWASP's rule against CSV injection), so that a spreadsheet shows them as text")


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet will not run as a formula: prefixed with ``'``
    when it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (OWASP)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def summary_path_for(csv_path: str | Path) -> Path:
    """Where :meth:`Detection.write` puts the summary of ``csv_path``: ``<stem>.summary.json`` beside it."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".summary.json")


def check_outputs(out: str | Path, run_dirs, source) -> None:
    """Refuse (:class:`vaeood.data.DataError`, before any work) an ``out`` whose CSV, summary
    or HTML page would replace an input or a run's file: one inside a run directory of
    ``run_dirs`` (the run, its companion runs), the input file itself, or a path inside the
    input folder (links followed), or a folder, or a file detect did not write; and an ``out``
    whose page would be the CSV itself (``--out r.html``)."""
    src = Path(source) if isinstance(source, (str, Path)) and Path(source).exists() else None
    if html_path_for(out) == Path(out):
        raise DataError(f"--out {out}: the HTML page {html_path_for(out)} would be written over the CSV; "
                        "name a CSV file to write (e.g. results.csv)")
    for path in (Path(out), summary_path_for(out), html_path_for(out)):
        target = path.resolve()
        for run in run_dirs:
            run = Path(run).resolve()
            if target == run or run in target.parents:
                raise DataError(f"--out {out}: {path} lies inside the run directory {run}, whose files (the "
                                "checkpoint, calibration, features) it could replace; write the results elsewhere")
        if src is not None and (target == src.resolve() or src.is_dir() and src.resolve() in target.parents):
            what = "lies inside the input folder" if src.is_dir() else "is the input file"
            raise DataError(f"--out {out}: {path} {what} {source}; write the results elsewhere")
        if path.is_dir():
            raise DataError(f"--out {out}: {path} is a folder; name a CSV file to write")
        _check_replaceable(out, path)


CSV_HEADER = "file,score,p_value,flagged"


def _check_replaceable(out, path: Path) -> None:
    """An existing ``path`` is replaced only when it is what :meth:`Detection.write` writes
    (a CSV with its header, a summary with its ``score_direction``, or a page starting with
    :data:`vaeood.decisions.detect_report.HTML_HEAD`): any other file, e.g.
    a dataset's ``.npz`` read by name or a copy of a checkpoint, is an input to keep. Never
    opened unless it is a regular file."""
    if not path.exists() and not path.is_symlink():
        return
    kind = special_file_kind(os.stat(path).st_mode) if path.exists() else "a broken symbolic link"
    if kind is not None:
        raise DataError(f"--out {out}: {path} is {kind}, not a file detect wrote; write the results elsewhere")
    is_html = path == html_path_for(out)
    with open_regular_file(path) as f:
        head = f.read(len(CSV_HEADER) + 1) if path == Path(out) else \
            f.read(len(HTML_HEAD.encode())) if is_html else f.read(2**24)
    if not head:  # an empty file: nothing to lose
        return
    if path == Path(out):
        ours = head == (CSV_HEADER + "\n").encode()
    elif is_html:
        ours = head == HTML_HEAD.encode()
    else:
        try:
            ours = "score_direction" in json.loads(head)
        except (ValueError, TypeError):
            ours = False
    if not ours:
        raise DataError(f"--out {out}: {path} exists and is not a file detect wrote (it would be replaced); "
                        "write the results elsewhere, or remove it first")


@dataclass
class Detection:
    """The result of :func:`decide`: one row per image, and a summary.

    ``names``, ``scores``, ``p_values``, ``flagged`` are ``[N]``; ``summary`` is a JSON-able
    dict (input, skipped files, fit, detector, calibration split, guarantee, counts).
    ``images`` (uint8 ``[N, H, W, C]``, the images scored, as the model saw them: the input's
    own array, not a copy) and ``calibration_scores`` (``[n]``) serve the HTML page
    (:mod:`vaeood.decisions.detect_report`); :func:`decide` keeps both.
    """

    names: list[str]
    scores: np.ndarray
    p_values: np.ndarray
    flagged: np.ndarray
    summary: dict
    labels: np.ndarray | None = field(default=None, repr=False)
    images: np.ndarray | None = field(default=None, repr=False)
    calibration_scores: np.ndarray | None = field(default=None, repr=False)

    def csv_text(self) -> str:
        """The CSV: ``file`` (escaped by :func:`csv_cell`), ``score``, ``p_value``, ``flagged``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(CSV_HEADER.split(","))
        for name, s, p, f in zip(self.names, self.scores, self.p_values, self.flagged):
            w.writerow([csv_cell(name), repr(float(s)), repr(float(p)), int(bool(f))])
        return buf.getvalue()

    def html_text(self) -> str:
        """The HTML page (:func:`vaeood.decisions.detect_report.page`)."""
        return page(self)

    def write(self, csv_path: str | Path) -> tuple[Path, Path, Path]:
        """Write the CSV, ``<csv stem>.summary.json`` and the page ``<csv stem>.html`` beside
        it (each atomically); returns the three paths."""
        csv_path = Path(csv_path)
        summary_path, html_path = summary_path_for(csv_path), html_path_for(csv_path)
        atomic_write_text(csv_path, self.csv_text())
        atomic_write_json(summary_path, {**self.summary, "csv": csv_path.name, "html": html_path.name})
        atomic_write_text(html_path, self.html_text())
        return csv_path, summary_path, html_path

    def summary_text(self) -> str:
        s = self.summary
        lines = [f"{s['n_images']} images from {printable(s['input'])} ({s['input_kind']}); detector {s['detector']} "
                 f"{_options_text(s['detector_options'])}; {s['n_calibration']} calibration images "
                 f"{s['calibration']['dataset']}/{s['calibration']['split']}"
                 f"[{s['calibration']['slice'][0]}:{s['calibration']['slice'][1]}]"]
        for key, verb in (("skipped", "skipped"), ("left_out", "left out")):
            if s.get(key):
                lines.append(f"{verb} {len(s[key])} files: " + "; ".join(f"{printable(n)} ({r})"
                                                                         for n, r in s[key][:10]) +
                             (" ..." if len(s[key]) > 10 else ""))
        if s.get("n_escaped"):
            lines.append(f"{s['n_escaped']} file names escaped in the CSV: {s['csv_escaping']}")
        lines += [f"warning: {w}" for w in s.get("warnings", [])]
        if s["fitted"]:
            lines.append(f"images fitted to the model: {s['fitted']['description']} (a change of the images: the "
                         "guarantee covers them only if in-distribution images arrive fitted the same way)")
        rule = {"marginal": f"flag iff p ≤ {s['alpha']:g}",
                "conditional": f"flag iff score > the calibration order statistic of rank {s.get('rank')}",
                "fdr": f"Benjamini–Hochberg at q = {s['alpha']:g}"}[s["guarantee"]]
        thr = f", score threshold {s['threshold']:.6g}" if s["threshold"] is not None else ""
        lines.append(f"flagged {s['n_flagged']} of {s['n_images']} ({rule}{thr})")
        lines.append(s["guarantee_text"])
        return "\n".join(lines)


def _options_text(options: dict) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in options.items() if v not in ({}, None)) + ")"


def decide(run_dir: str | Path, source, detector: str | None = None, *, alpha: float = 0.05, delta: float | None = None,
           fdr: bool = False, detector_options: dict | None = None, fit: str | None = None, skip_bad: bool = False,
           split: str = "test", limit: int | None = None, data_dir: str | None = None, device: str = "cpu",
           batch_size: int | None = None, out: str | Path | None = None) -> Detection:
    """Flag the out-of-distribution images of ``source`` at false-alarm rate ``alpha``.

    Args:
        run_dir: a trained run with a calibration for ``detector`` (see :func:`calibrate`);
            ``detector`` None: the run's calibrated recommended one (:func:`default_detector`).
        source: PNG/JPEG folder, ``.npz`` file or dataset name (with ``split``, ``limit``, ``data_dir``).
        alpha: the false-alarm rate (or, with ``fdr``, the false-discovery rate).
        delta: calibration-conditional guarantee: FPR ≤ alpha with probability ≥ 1 − delta.
        fdr: Benjamini–Hochberg on the batch's p-values instead of a per-image rule.
        detector_options: must match the calibrated options (default: the calibrated ones).
        fit: ``"pad"``/``"resize"`` for other image shapes; skip_bad: skip unreadable files.
        out: write the CSV (file, score, p_value, flagged) there, and the summary and the HTML
            page (:mod:`vaeood.decisions.detect_report`) beside it.

    Raises :class:`NoCalibrationError` (no valid calibration for the detector),
    :class:`vaeood.decisions.conformal.CalibrationError` (too small for ``alpha``/``delta``) or
    :class:`vaeood.data.DataError` (unusable input)."""
    run_dir = Path(run_dir)
    if out is not None:
        check_outputs(out, [run_dir], source)
    record = load_calibration(run_dir, detector, detector_options)  # detector None: the run's default
    if out is not None:
        check_outputs(out, [run_dir, *companion_runs(record["detector_options"])], source)
    scorer = make_scorer(run_dir, record["detector"], record["detector_options"], device=device, seed=record["seed"],
                         data_dir=data_dir, batch_size=batch_size)
    scorer.check_companions()
    if not _restore_fit(scorer, record):
        _refit_and_check(scorer, record, data_dir)
    cal = record["scores"]
    # refuse an impossible alpha/delta before reading and scoring the input
    if fdr or delta is None:
        conformal.marginal_rank(len(cal), alpha)
    else:
        conformal.conditional_rank(len(cal), alpha, delta)
    images: InputImages = load_input(source, shape=scorer.image_shape, fit=fit, skip_bad=skip_bad, split=split,
                                     data_dir=data_dir, limit=limit)
    scores = scorer.score_images(images.images, record["seed"] + 1)
    decision = conformal.decide(cal, scores, alpha, delta=delta, fdr=fdr)
    rank = None if decision.guarantee == "fdr" else conformal.threshold(cal, alpha, delta).rank
    summary = _summary(source, images, record, decision, alpha=alpha, delta=delta, fdr=fdr, rank=rank)
    summary["warnings"] += scorer.warnings
    if images.kind == "dataset" and (str(source), split) == (record["dataset"], record["split"]):
        summary["warnings"].append(
            f"these are images of the split the run was trained and calibrated on ({record['dataset']}/{split}: "
            f"trained on [0:{record['train_slice'][1]}], calibrated on [{record['calibration_slice'][0]}:"
            f"{record['calibration_slice'][1]}]); their decisions carry no guarantee")
        log.warning("%s", summary["warnings"][-1])
    result = Detection(images.names, scores, decision.p_values, decision.flagged, summary, labels=images.labels,
                       images=images.images, calibration_scores=cal)
    if out is not None:
        result.write(out)
    return result


def _summary(source, images: InputImages, record: dict, decision, *, alpha, delta, fdr, rank) -> dict:
    """:func:`decide`'s summary (JSON-able): the input and what was left out, skipped or
    escaped, the detector, the rule and its guarantee, the calibration it rests on."""
    return {
        "input": display_name(str(source)), "input_kind": images.kind, "input_source": images.source,
        "n_images": len(images), "skipped": [list(s) for s in images.skipped],
        "left_out": [list(s) for s in images.left_out], "fitted": images.fitted,
        "csv_escaping": CSV_ESCAPING, "n_escaped": sum(n != csv_cell(n) for n in images.names),
        "detector": record["detector"], "detector_options": record["detector_options"],
        "alpha": float(alpha), "delta": delta, "fdr": bool(fdr), "guarantee": decision.guarantee,
        "guarantee_text": decision.describe(), "threshold": decision.threshold, "rank": rank,
        "n_calibration": len(record["scores"]), "n_flagged": decision.n_flagged,
        "fraction_flagged": decision.n_flagged / len(images),
        "calibration": {"dataset": record["dataset"], "split": record["split"],
                        "slice": record["calibration_slice"], "train_slice": record["train_slice"],
                        "fit_slice": record["fit_slice"], "images_sha256": record["calibration_images_sha256"]},
        "checkpoint_sha256": record["checkpoint_sha256"],
        "score_direction": "higher = more out-of-distribution",
        "warnings": [],
    }


def _restore_fit(scorer: DetectorScorer, record: dict) -> bool:
    """Use the fit that calibrate saved (:mod:`vaeood.decisions.fitted_detector`) if it is the one
    recorded and rescores its sample of calibration images to their calibration scores;
    False (the caller fits again and checks every calibration image) otherwise."""
    path = fitted_path(calibration_path(scorer.run_dir, record["detector"]))
    saved = load_fitted(path, record.get("fitted_sha256"))
    if saved is None:
        return False
    fitted, rows = saved["detector"], np.asarray(saved["check_rows"])
    if type(fitted) is not type(scorer.detector) or _jsonable(fitted.options) != scorer.options or \
            len(rows) == 0 or rows.max() >= len(record["scores"]) or \
            not np.array_equal(record["scores"][rows], saved["check_scores"]):
        log.warning("%s does not match its calibration record; fitting the detector again", path)
        return False
    fresh, scorer.detector = scorer.detector, fitted
    again = scorer.score_images(saved["check_images"], record["seed"])
    if not np.allclose(again, saved["check_scores"], **REPRODUCED):
        log.warning("the saved fit %s no longer reproduces its calibration scores (largest difference %.3g); "
                    "fitting the detector again", path, float(np.max(np.abs(again - saved["check_scores"]))))
        scorer.detector = fresh
        return False
    log.debug("using the saved fit %s (%d calibration images rescored to their scores)", path, len(rows))
    return True


def _refit_and_check(scorer: DetectorScorer, record: dict, data_dir: str | None) -> None:
    """Fit the detector again on its recorded slice (features cached in the run), score
    the calibration images again through the path the images to decide on take, and
    check that this reproduces the saved calibration scores: a detector fitted
    differently, features computed by other code, or other calibration images would
    void the guarantee."""
    config, data, where = _training_split(scorer.run_dir, data_dir)
    a, b = record["calibration_slice"]
    how = _how_to_calibrate(scorer.run_dir, record["detector"])
    if images_sha256(data.images[a:b]) != record["calibration_images_sha256"]:
        raise NoCalibrationError(f"the calibration images {record['dataset']}/{record['split']}[{a}:{b}] found now "
                                 f"differ from those calibrated on; calibrate again: {how}")
    try:  # the options come from the calibration file: a value the feature refuses is the file's fault
        scorer.fit(*(record["fit_slice"] or (0, 0)))
        again = scorer.score_images(data.images[a:b], record["seed"])
    except (ValueError, TypeError, UnknownNameError) as err:
        raise NoCalibrationError(f"{calibration_path(scorer.run_dir, record['detector'])}: field 'detector_options' "
                                 f"{record['detector_options']} cannot score the calibration images ({err}); "
                                 f"calibrate again: {how}") from None
    if not np.allclose(again, record["scores"], **REPRODUCED):
        worst = float(np.max(np.abs(again - record["scores"])))
        raise NoCalibrationError(f"detector {record['detector']!r} no longer reproduces its calibration scores "
                                 f"(largest difference {worst:.3g}): its fit or its features changed since "
                                 f"calibration (another vaeood version, a random fit, a recomputed feature cache); "
                                 f"calibrate again: {how}")


def operating_points_for_run(run_dir: str | Path, detector: str, in_scores, ood_scores: dict | None = None, *,
                             alphas=DEFAULT_ALPHAS, delta: float | None = None) -> dict:
    """:func:`vaeood.decisions.conformal.operating_points` with the run's saved calibration scores
    of ``detector``: per α, the realised FPR on ``in_scores`` (test in-distribution
    scores of the same detector, computed by the same code and options as the
    calibration: check with :func:`load_calibration`'s ``detector_options``) and the
    TPR on each OOD set of ``ood_scores``. :func:`decision_rates` computes both itself."""
    record = load_calibration(run_dir, detector)
    out = conformal.operating_points(record["scores"], in_scores, ood_scores, alphas=alphas, delta=delta)
    out["calibration"] = {"dataset": record["dataset"], "split": record["split"],
                          "slice": record["calibration_slice"]}
    return out


def _calibration_for_rates(run_dir: Path, detector: str, options: dict, *, n_calibration, n_fit, data_dir,
                           device, batch_size, test_seed: int) -> dict:
    """The run's calibration record of ``detector`` with these options and sizes and a
    seed other than ``test_seed``, made now (with ``test_seed + 1``) if missing, stale,
    or of other options, sizes or that seed."""
    try:
        record = load_calibration(run_dir, detector, options)
        if n_calibration is not None and record["n_calibration"] != n_calibration:
            raise NoCalibrationError("another calibration size")
        if n_fit is not None and record["fit_slice"] and record["fit_slice"][1] - record["fit_slice"][0] != n_fit:
            raise NoCalibrationError("another fitting slice")
        if record["seed"] == test_seed:
            raise NoCalibrationError("the test images' seed")
        return record
    except NoCalibrationError:
        return calibrate(run_dir, detector, detector_options=options, n_calibration=n_calibration, n_fit=n_fit,
                         data_dir=data_dir, device=device, seed=test_seed + 1, batch_size=batch_size)


def decision_rates(run_dir: str | Path, in_dataset: str, ood_datasets: list[str], detectors=("nll",), *,
                   detector_options: dict | None = None, alphas=DEFAULT_ALPHAS, delta: float | None = None,
                   split: str = "test", limit: int | None = None, n_calibration: int | None = None,
                   n_fit: int | None = None, data_dir: str | None = None, data_dirs: dict | None = None,
                   device: str = "cpu", seed: int = 0, fit: str | None = None, allow_sample: bool = False,
                   batch_size: int | None = None) -> dict:
    """For the ood-suite report: per detector, the realised false-alarm rate on the
    in-distribution test set and the detection rate (TPR) on each OOD set of conformal
    thresholds at each α (default 0.01, 0.05, 0.1), calibrated on the run's held-out
    training images (:func:`calibrate`, run here when the run has no matching calibration).

    The calibration record gives the slices; the calibration and test scores are both
    computed here from features cached in ``RUN/features/`` (so by the same code). The
    test sets' features use ``seed``, as :func:`vaeood.evaluation.evaluate` with the same arguments
    does (so its cache is reused); the calibration's use another seed (``seed + 1``).
    Arguments as :func:`vaeood.evaluation.evaluate`'s: ``limit`` the first N test images of each
    set, ``n_fit`` its ``fit_limit``, ``data_dirs`` a folder per dataset name (overriding
    ``data_dir``), ``fit`` pad/resize for sets of another shape. ``detector_options``:
    ``{detector: options}``. ``delta``: the calibration-conditional threshold instead of
    the marginal one. Returns ``{detector: operating points}`` (see
    :func:`vaeood.decisions.conformal.operating_points`; plus ``"calibration"``: the slices), or
    ``{detector: {"error": message}}`` for a detector that cannot be calibrated on the run.
    """
    run_dir = Path(run_dir)
    out = {}
    detector_options = per_detector_options(detector_options, "detector_options")
    for name in detector_names(detectors, "detectors"):
        try:
            record = _calibration_for_rates(run_dir, name, detector_options.get(name) or {},
                                            n_calibration=n_calibration, n_fit=n_fit, data_dir=data_dir,
                                            device=device, batch_size=batch_size, test_seed=seed)
        except (NoCalibrationError, conformal.CalibrationError) as err:
            out[name] = {"error": str(err)}
            continue
        config, data, where = _training_split(run_dir, data_dir)
        scorer = make_scorer(run_dir, name, record["detector_options"], device=device, seed=record["seed"],
                             data_dir=where, batch_size=batch_size)
        scorer.fit(*(record["fit_slice"] or (0, 0)))
        # calibration and test scores from the same feature cache, so from the same code
        a, b = record["calibration_slice"]
        cal = scorer.score_slice(config.data.name, data.split, seed=record["seed"], start=a, stop=b, data_dir=where,
                                 allow_sample=config.data.allow_sample)
        sets = {dataset: scorer.score_slice(dataset, split, seed=seed, limit=limit,
                                            data_dir=(data_dirs or {}).get(dataset, data_dir), fit=fit,
                                            allow_sample=allow_sample)
                for dataset in [in_dataset, *ood_datasets]}
        rates = conformal.operating_points(cal, sets[in_dataset],
                                           {ood: sets[ood] for ood in ood_datasets}, alphas=alphas, delta=delta)
        rates["calibration"] = {"dataset": record["dataset"], "split": record["split"],
                                "slice": record["calibration_slice"], "fit_slice": record["fit_slice"],
                                "seed": record["seed"], "test_seed": seed}
        out[name] = rates
    return out


def format_decision_table(rates: dict) -> str:
    """A Markdown table of :func:`decision_rates`: detector, α, realised FPR with its exact
    95% interval, the binomial 95% bound of the FPR at a true rate α, the 95% quantile of
    the realised FPR over calibration and test draws (Beta-Binomial), and TPR per OOD set."""
    oods = sorted({o for r in rates.values() for a in r.get("alphas", {}).values() for o in a.get("tpr", {})})
    head = ["detector", "α", "n cal.", "realised FPR [95% CI]", "α + binomial 95%", "95% over cal. + test"] + \
        [f"TPR {o}" for o in oods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rates.items():
        if "error" in r:
            lines.append(f"| {name} | — | — | {r['error'].splitlines()[0][:120]} |" + " |" * (len(head) - 4))
            continue
        for key, a in r["alphas"].items():
            if "error" in a:
                lines.append(f"| {name} | {key} | {r['n_calibration']} | too few calibration images |"
                             + " |" * (len(head) - 4))
                continue
            lo, hi = a["fpr_ci95"]
            row = [name, key, str(r["n_calibration"]), f"{a['fpr']:.3f} [{lo:.3f}, {hi:.3f}]",
                   f"{a['fpr_binomial_upper95']:.3f}", f"{a['fpr_upper95']:.3f}"] + \
                [f"{a['tpr'][o]['tpr']:.3f}" if o in a["tpr"] else "—" for o in oods]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
