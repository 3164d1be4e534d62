"""From a trained run to decisions on new images: calibrate a detector on held-out
in-distribution training images, then flag images at a false-alarm rate you choose,
with the guarantees of :mod:`vaeood.conformal`.

The held-out images are the end of the run's training split, after the images the
model was trained on (``data.limit``)::

    train split:  [0, limit)            the model's training images
                  [fit.start, fit.stop) the detector's fitting images (detectors that fit)
                  [N − n, N)            calibration images (this module), disjoint from both

:func:`calibrate` scores the calibration slice with the detector and records the split,
the scores, the detector and its options, the checkpoint's SHA-256 and the SHA-256 of
the calibration images in ``RUN/calibration/<detector>.npz``. :func:`detect` reads a
folder, ``.npz`` or dataset, scores it with the same detector and turns the scores
into conformal p-values and decisions; it refuses when the run has no calibration for
the detector (and says how to make one), or when the model or the options changed.

Which detector scores are available is behind one small boundary, :func:`make_scorer`
(an object with ``name``, ``options``, ``fit_slice``, ``prepare()``,
``score_train_slice(start, stop)`` and ``score_images(images)``): the log-likelihood
score ``nll`` is built in here; the detectors of :mod:`vaeood.detectors` plug in there.

The guarantees hold for in-distribution images exchangeable with the calibration images
(the test split of the same dataset, processed the same way) and say nothing about how
many OOD images are found; see :mod:`vaeood.conformal`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import conformal
from .atomic import atomic_write, atomic_write_json, atomic_write_text
from .checkpoint import checkpoint_path
from .data import load_dataset
from .data.checksums import file_hexdigest
from .data.folder import InputImages, load_input
from .estimators import ESTIMATORS
from .registry import check_options
from .run import load_model, to_tensor

log = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"
DEFAULT_N_CALIBRATION = 2000
FORMAT = 1
DEFAULT_ALPHAS = (0.01, 0.05, 0.1)


class NoCalibrationError(ValueError):
    """The run has no (valid) calibration for the requested detector; the message says
    how to make one."""


# -- the score boundary ---------------------------------------------------------------------
class LogLikelihoodScorer:
    """The score −log p(x) in nats (``nll``), by the run's own estimator
    (``estimator="elbo"`` or ``"iwae"`` with ``estimator_options``), with no fitting.

    Noise: batch b of a slice draws from a generator seeded by ``seed * 1_000_003 + b``
    as :func:`vaeood.scoring.score` does; the images of :meth:`score_images` use the
    seed + 1 so that no test image shares its noise draw with a calibration image.
    """

    name = "nll"
    fit_slice = None
    fits = False

    def __init__(self, run_dir: Path, *, estimator: str = "elbo", estimator_options: dict | None = None,
                 device: str = "cpu", seed: int = 0, data_dir: str | None = None, batch_size: int | None = None):
        fn = ESTIMATORS.get(estimator)
        self.estimator_options = check_options(fn, estimator_options or {}, "estimator", estimator,
                                               ("model", "x", "generator"))
        self.fn, self.run_dir, self.device, self.seed = fn, run_dir, device, seed
        self.batch_size = batch_size or 1000
        self.options = {"estimator": estimator, "estimator_options": self.estimator_options}
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model, _, _ = load_model(self.run_dir, self.device)
        return self._model

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.model.image_shape)

    def prepare(self, train_images: np.ndarray) -> None:
        """Fit on the fitting slice (nothing to fit for ``nll``)."""

    def score_train_slice(self, images: np.ndarray) -> np.ndarray:
        return self._score(images, self.seed)

    def score_images(self, images: np.ndarray) -> np.ndarray:
        return self._score(images, self.seed + 1)

    def _score(self, images: np.ndarray, seed: int) -> np.ndarray:
        model = self.model
        dev = next(model.parameters()).device
        out = []
        with torch.no_grad():
            for b, start in enumerate(range(0, len(images), self.batch_size)):
                x = to_tensor(images[start: start + self.batch_size], dev)
                generator = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + b)
                est = self.fn(model, x, generator=generator, **self.estimator_options)
                out.append(-est["log_px_nats"].double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


SCORERS = {"nll": LogLikelihoodScorer}


def make_scorer(run_dir: str | Path, detector: str, options: dict | None = None, *, device: str = "cpu",
                seed: int = 0, data_dir: str | None = None, batch_size: int | None = None):
    """The object that gives ``detector``'s scores under the run (see the module doc)."""
    return _scorer_class(detector)(Path(run_dir), **dict(options or {}), device=device, seed=seed,
                                   data_dir=data_dir, batch_size=batch_size)


def _scorer_class(detector: str):
    if detector not in SCORERS:
        from .registry import did_you_mean

        raise NoCalibrationError(f"unknown detector {detector!r}{did_you_mean(detector, SCORERS)}; "
                                 f"known: {', '.join(SCORERS)}")
    return SCORERS[detector]


# -- calibration -----------------------------------------------------------------------------
def images_sha256(images: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def calibration_path(run_dir: str | Path, detector: str) -> Path:
    return Path(run_dir) / CALIBRATION_DIR / f"{detector}.npz"


def _training_split(run_dir: Path, data_dir: str | None):
    """The run's training split as found now, and the end of its training images."""
    model, config, meta = load_model(run_dir, "cpu")
    trained = meta.get("train_data") or {}
    data = load_dataset(config.data.name, config.data.split, data_dir=data_dir or config.data.data_dir,
                        allow_sample=config.data.allow_sample)
    if bool(trained.get("is_sample")) != data.is_sample:
        raise NoCalibrationError(
            f"the run trained on {'the bundled sample' if trained.get('is_sample') else 'the real dataset'} of "
            f"{data.name}/{data.split} but {'the bundled sample' if data.is_sample else 'the real dataset'} was "
            "found now; calibrate with the data the run trained on (--data-dir)")
    if trained.get("source") and trained["source"] != data.source:
        log.warning("the run trained on %s/%s from %s; calibrating with %s (check it is the same file)",
                    data.name, data.split, trained["source"], data.source)
    end = config.data.limit or len(data.images)
    if end > len(data.images):
        raise NoCalibrationError(f"the run trained on the first {end} images of {data.name}/{data.split}, but only "
                                 f"{len(data.images)} were found now; use the data the run trained on (--data-dir)")
    return data, end, model


def calibrate(run_dir: str | Path, detector: str = "nll", *, detector_options: dict | None = None,
              n_calibration: int | None = None, data_dir: str | None = None, device: str = "cpu", seed: int = 0,
              batch_size: int | None = None) -> dict:
    """Score the last ``n_calibration`` images of the run's training split (default
    2,000, or all held-out images not used for the detector's fit if fewer) with the
    detector, and save them with the split in ``RUN/calibration/<detector>.npz``.

    Raises :class:`NoCalibrationError` when the run kept no held-out training images
    (it trained on the whole split: retrain with ``data.limit``), or when the
    calibration slice would overlap the training or fitting images.
    Returns the record (see :func:`load_calibration`).
    """
    run_dir = Path(run_dir)
    data, train_end, _ = _training_split(run_dir, data_dir)
    total = len(data.images)
    scorer = make_scorer(run_dir, detector, detector_options, device=device, seed=seed, data_dir=data_dir,
                         batch_size=batch_size)
    fit_slice = scorer.fit_slice  # (start, stop) in the training split, or None
    free_from = max(train_end, fit_slice[1] if fit_slice else 0)
    available = total - free_from
    if available <= 0:
        how = (f"retrain with --data.limit=M, M < {total}, to keep images out of training, e.g. "
               f"--data.limit={max(total - 2 * DEFAULT_N_CALIBRATION, total // 2)} keeps the last "
               f"{min(2 * DEFAULT_N_CALIBRATION, total - total // 2)} for fitting and calibration")
        used = f"the run trained on all {total} images of {data.name}/{data.split}" if train_end >= total else \
            f"the detector fits on images [{fit_slice[0]}, {fit_slice[1]}) up to the end of the split"
        raise NoCalibrationError(f"no held-out training images left to calibrate detector {detector!r}: {used}; "
                                 f"{how}")
    n = n_calibration if n_calibration is not None else min(DEFAULT_N_CALIBRATION, available)
    if n < 1 or n > available:
        raise NoCalibrationError(
            f"n_calibration = {n}: {data.name}/{data.split} has {available} held-out images after the training "
            f"images [0, {train_end})" + (f" and the detector's fitting images [{fit_slice[0]}, {fit_slice[1]})"
                                            if fit_slice else "") + f"; choose 1 ≤ n ≤ {available}")
    start = total - n
    if fit_slice and fit_slice[0] < total and fit_slice[1] > start:
        raise NoCalibrationError(f"calibration images [{start}, {total}) would overlap the detector's fitting "
                                 f"images [{fit_slice[0]}, {fit_slice[1]}); choose a smaller n_calibration")
    scorer.prepare(data.images)
    images = data.images[start:total]
    scores = np.asarray(scorer.score_train_slice(images), dtype=np.float64)
    conformal._as_scores(scores, f"detector {detector!r} calibration scores")  # finite, or refused
    record = {
        "format": FORMAT, "detector": detector, "detector_options": scorer.options,
        "dataset": data.name, "split": data.split, "source": data.source, "is_sample": data.is_sample,
        "n_split": total, "train_slice": [0, train_end], "fit_slice": list(fit_slice) if fit_slice else None,
        "calibration_slice": [start, total], "n_calibration": n,
        "calibration_images_sha256": images_sha256(images),
        "checkpoint_sha256": file_hexdigest(checkpoint_path(run_dir), "sha256"), "seed": seed,
        "score_direction": "higher = more out-of-distribution",
    }
    path = calibration_path(run_dir, detector)
    atomic_write(path, lambda f: np.savez(f, scores=scores, meta=np.array(json.dumps(record))))
    log.info("calibrated %s on %d held-out images %s/%s[%d:%d] → %s", detector, n, data.name, data.split,
             start, total, path)
    return {**record, "scores": scores}


def _how_to_calibrate(run_dir: Path, detector: str) -> str:
    return f"vaeood calibrate {run_dir} --detector {detector} (in Python: vaeood.calibrate(run, {detector!r}))"


def load_calibration(run_dir: str | Path, detector: str = "nll", detector_options: dict | None = None) -> dict:
    """The calibration record of ``detector`` in the run: the split, options, digests
    and ``scores`` (float64 ``[n]``). Refused (:class:`NoCalibrationError`, saying how
    to make one) when there is none, when the checkpoint changed since, or when
    ``detector_options`` (if given) differ from the calibrated ones."""
    run_dir = Path(run_dir)
    _scorer_class(detector)
    path = calibration_path(run_dir, detector)
    if not path.exists():
        raise NoCalibrationError(
            f"run {run_dir} has no calibration for detector {detector!r} ({path} does not exist). Make it from "
            f"held-out training images with: {_how_to_calibrate(run_dir, detector)}")
    try:
        with np.load(path, allow_pickle=False) as f:
            scores, record = f["scores"], json.loads(str(f["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise NoCalibrationError(f"{path}: unreadable calibration file ({err}); make it again with "
                                 f"{_how_to_calibrate(run_dir, detector)}") from None
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
    return {**record, "scores": np.asarray(scores, dtype=np.float64)}


def calibration_scores(run_dir: str | Path, detector: str = "nll") -> np.ndarray:
    """The saved calibration scores ``[n]`` of ``detector`` (see :func:`load_calibration`)."""
    return load_calibration(run_dir, detector)["scores"]


# -- decisions -------------------------------------------------------------------------------
@dataclass
class Detection:
    """The result of :func:`detect`: one row per image, and a summary.

    ``names``, ``scores``, ``p_values``, ``flagged`` are ``[N]``; ``summary`` is a JSON-able
    dict (input, skipped files, fit, detector, calibration split, guarantee, counts).
    """

    names: list[str]
    scores: np.ndarray
    p_values: np.ndarray
    flagged: np.ndarray
    summary: dict
    labels: np.ndarray | None = field(default=None, repr=False)

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["file", "score", "p_value", "flagged"])
        for name, s, p, f in zip(self.names, self.scores, self.p_values, self.flagged):
            w.writerow([name, repr(float(s)), repr(float(p)), int(bool(f))])
        return buf.getvalue()

    def write(self, csv_path: str | Path) -> tuple[Path, Path]:
        """Write the CSV and ``<csv stem>.summary.json`` beside it (atomically)."""
        csv_path = Path(csv_path)
        summary_path = csv_path.with_name(csv_path.stem + ".summary.json")
        atomic_write_text(csv_path, self.csv_text())
        atomic_write_json(summary_path, {**self.summary, "csv": csv_path.name})
        return csv_path, summary_path

    def summary_text(self) -> str:
        s = self.summary
        lines = [f"{s['n_images']} images from {s['input']} ({s['input_kind']}); detector {s['detector']} "
                 f"{_options_text(s['detector_options'])}; {s['n_calibration']} calibration images "
                 f"{s['calibration']['dataset']}/{s['calibration']['split']}"
                 f"[{s['calibration']['slice'][0]}:{s['calibration']['slice'][1]}]"]
        if s["skipped"]:
            lines.append(f"skipped {len(s['skipped'])} files: " +
                         "; ".join(f"{n} ({r})" for n, r in s["skipped"][:10]) +
                         (" ..." if len(s["skipped"]) > 10 else ""))
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


def detect(run_dir: str | Path, source, detector: str = "nll", *, alpha: float = 0.05, delta: float | None = None,
           fdr: bool = False, detector_options: dict | None = None, fit: str | None = None, skip_bad: bool = False,
           split: str = "test", limit: int | None = None, data_dir: str | None = None, device: str = "cpu",
           batch_size: int | None = None, out: str | Path | None = None) -> Detection:
    """Flag the out-of-distribution images of ``source`` at false-alarm rate ``alpha``.

    Args:
        run_dir: a trained run with a calibration for ``detector`` (see :func:`calibrate`).
        source: a folder of PNG/JPEG images, an ``.npz`` file, or a dataset name
            (``split``, ``limit``, ``data_dir`` then apply); see :func:`vaeood.data.folder.load_input`.
        alpha: the false-alarm rate (or, with ``fdr``, the false-discovery rate).
        delta: calibration-conditional guarantee: FPR ≤ alpha with probability ≥ 1 − delta.
        fdr: Benjamini–Hochberg on the batch's p-values instead of a per-image rule.
        detector_options: must match the calibrated options (default: the calibrated ones).
        fit: ``"pad"``/``"resize"`` for images of another shape than the model's.
        skip_bad: skip unreadable/other-shaped files of a folder (listed in the summary).
        out: write the CSV (file, score, p_value, flagged) there, and the summary beside it.

    Raises :class:`NoCalibrationError` when the run has no valid calibration for the
    detector, :class:`vaeood.conformal.CalibrationError` when it is too small for
    ``alpha``/``delta``, and :class:`vaeood.data.DataError` for unusable input.
    """
    run_dir = Path(run_dir)
    record = load_calibration(run_dir, detector, detector_options)
    scorer = make_scorer(run_dir, detector, record["detector_options"], device=device, seed=record["seed"],
                         data_dir=data_dir, batch_size=batch_size)
    if scorer.fits:
        _refit_and_check(scorer, record, data_dir)
    cal = record["scores"]
    # refuse an impossible alpha/delta before reading and scoring the input
    if fdr or delta is None:
        conformal.marginal_rank(len(cal), alpha)
    else:
        conformal.conditional_rank(len(cal), alpha, delta)
    images: InputImages = load_input(source, shape=scorer.image_shape, fit=fit, skip_bad=skip_bad, split=split,
                                     data_dir=data_dir, limit=limit)
    scores = np.asarray(scorer.score_images(images.images), dtype=np.float64)
    decision = conformal.decide(cal, scores, alpha, delta=delta, fdr=fdr)
    rank = None if decision.guarantee == "fdr" else conformal.threshold(cal, alpha, delta).rank
    summary = {
        "input": str(source), "input_kind": images.kind, "input_source": images.source,
        "n_images": len(images), "skipped": [list(s) for s in images.skipped], "fitted": images.fitted,
        "detector": detector, "detector_options": record["detector_options"],
        "alpha": float(alpha), "delta": delta, "fdr": bool(fdr), "guarantee": decision.guarantee,
        "guarantee_text": decision.describe(), "threshold": decision.threshold, "rank": rank,
        "n_calibration": len(cal), "n_flagged": decision.n_flagged,
        "fraction_flagged": decision.n_flagged / len(images),
        "calibration": {"dataset": record["dataset"], "split": record["split"],
                        "slice": record["calibration_slice"], "train_slice": record["train_slice"],
                        "fit_slice": record["fit_slice"], "images_sha256": record["calibration_images_sha256"]},
        "checkpoint_sha256": record["checkpoint_sha256"],
        "score_direction": "higher = more out-of-distribution",
    }
    result = Detection(images.names, scores, decision.p_values, decision.flagged, summary, labels=images.labels)
    if out is not None:
        result.write(out)
    return result


def _refit_and_check(scorer, record: dict, data_dir: str | None) -> None:
    """Refit a fitting detector on its recorded slice and check that it reproduces the
    saved calibration scores (a detector fitted differently would void the guarantee)."""
    data = load_dataset(record["dataset"], record["split"], data_dir=data_dir)
    scorer.prepare(data.images)
    a, b = record["calibration_slice"]
    images = data.images[a:b]
    if images_sha256(images) != record["calibration_images_sha256"]:
        raise NoCalibrationError(f"the calibration images {record['dataset']}/{record['split']}[{a}:{b}] found now "
                                 "differ from those calibrated on; calibrate again")
    again = scorer.score_train_slice(images)
    if not np.allclose(again, record["scores"], rtol=1e-6, atol=1e-9):
        raise NoCalibrationError(f"detector {record['detector']!r} refitted does not reproduce its calibration "
                                 "scores (is its fit random?); calibrate again")


def operating_points_for_run(run_dir: str | Path, detector: str, in_scores, ood_scores: dict | None = None, *,
                             alphas=DEFAULT_ALPHAS, delta: float | None = None) -> dict:
    """:func:`vaeood.conformal.operating_points` with the run's saved calibration scores
    of ``detector``: per α, the realised FPR on ``in_scores`` (test in-distribution
    scores of the same detector) and the TPR on each OOD set of ``ood_scores``."""
    record = load_calibration(run_dir, detector)
    out = conformal.operating_points(record["scores"], in_scores, ood_scores, alphas=alphas, delta=delta)
    out["calibration"] = {"dataset": record["dataset"], "split": record["split"],
                          "slice": record["calibration_slice"]}
    return out
