"""Decisions: from a trained run to decisions on new images: calibrate a detector on held-out
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

Modules: :mod:`.conformal` (p-values, thresholds, Benjamini–Hochberg) and
:mod:`.conformal_rates` (their realised rates); :mod:`.scorer` (a detector under a run);
:mod:`.recommended` (the detector used when none is named); :mod:`.training_split`
(the run's split as found now); :mod:`.calibration` (calibrate); :mod:`.records` (reading and checking
calibration records, over :mod:`.calibration_file`); :mod:`.fitted_detector`;
:mod:`.flagging` (decide), :mod:`.detection`, :mod:`.outputs` and :mod:`.detect_report` (flagging
images and writing the results); :mod:`.run_rates` (decision rates for reports).
"""

from __future__ import annotations

from .calibration import DEFAULT_N_CALIBRATION, calibrate
from .calibration_file import NoCalibrationError
from .flagging import calibrated_scorer, decide, decision_scores
from .run_rates import decision_rates, format_decision_table, operating_points_for_run
from .detection import Detection
from .outputs import check_outputs, csv_cell, summary_path_for
from .recommended import RECOMMENDED, recommended_detector
from .records import calibrated_detectors, calibration_path, calibration_scores, default_detector, load_calibration
from .scorer import DetectorScorer, make_scorer

__all__ = ["calibrate", "decide", "calibrated_scorer", "decision_scores", "load_calibration", "calibration_scores",
           "calibration_path", "calibrated_detectors", "default_detector", "recommended_detector", "RECOMMENDED",
           "DEFAULT_N_CALIBRATION", "NoCalibrationError", "Detection", "check_outputs", "csv_cell",
           "summary_path_for", "decision_rates", "format_decision_table", "operating_points_for_run",
           "DetectorScorer", "make_scorer"]
