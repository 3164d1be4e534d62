"""Flag images at a false-alarm rate you choose (:func:`decide`, ``vaeood detect``), with
the detector a run was calibrated with: the fit calibrate saved when it still rescores
its sample of calibration images, else fitted again and checked to reproduce every
calibration score."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import conformal
from .calibration_file import NoCalibrationError
from .detection import Detection
from .fitted_detector import restore_fit
from .outputs import CSV_ESCAPING, check_outputs, csv_cell
from .records import REPRODUCED, calibration_path, how_to_calibrate, load_calibration
from .scorer import DetectorScorer, companion_runs, fit_seed, make_scorer
from .training_split import training_split
from ..data.errors import DataError
from ..data.inputs import FolderImages, FolderStream, InputImages, load_input
from ..data.listing import display_name
from ..features import images_digest
from ..infra.deprecated import renamed_keywords
from ..infra.registry import UnknownNameError

log = logging.getLogger(__name__)


@renamed_keywords(fit="conform")  # its name until 0.2
def decide(run_dir: str | Path, source, detector: str | None = None, *, alpha: float = 0.05, delta: float | None = None,
           fdr: bool = False, detector_options: dict | None = None, conform: str | None = None, skip_bad: bool = False,
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
        conform: ``"pad"``/``"resize"`` for other image shapes (default: the run's recorded
            transform, ``data.conform``, if any); skip_bad: skip unreadable files.
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
    scorer = calibrated_scorer(run_dir, record, device=device, data_dir=data_dir, batch_size=batch_size)
    cal = record["scores"]
    # refuse an impossible alpha/delta before reading and scoring the input
    if fdr or delta is None:
        conformal.marginal_rank(len(cal), alpha)
    else:
        conformal.conditional_rank(len(cal), alpha, delta)
    images, scores = _score_input(scorer, record, source, conform=scorer.run.conform_for(conform),
                                  skip_bad=skip_bad, split=split, data_dir=data_dir, limit=limit)
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
                       images=images.images, calibration_scores=cal, classes=images.classes)
    if out is not None:
        result.write(out)
    return result


def calibrated_scorer(run_dir: str | Path, record: dict, *, device: str = "cpu", data_dir: str | None = None,
                      batch_size: int | None = None) -> DetectorScorer:
    """The detector of a calibration ``record`` (:func:`load_calibration`) under the run, fitted
    as at calibration: the fit calibrate saved when it rescores its sample of calibration
    images, else fitted again and checked to reproduce every calibration score. :func:`decide`
    and :class:`vaeood.ImageOODDetector` score through it, by :func:`decision_scores`."""
    scorer = make_scorer(run_dir, record["detector"], record["detector_options"], device=device, seed=record["seed"],
                         data_dir=data_dir, batch_size=batch_size)
    scorer.check_companions()
    if restore_fit(scorer, record):
        _say_if_the_calibration_images_changed(scorer, record, data_dir)
    else:
        _refit_and_check(scorer, record, data_dir)
    return scorer


def decision_scores(scorer: DetectorScorer, record: dict, images) -> np.ndarray:
    """Scores of images to decide on: the calibration seed + 1, so that an image identical to a
    calibration image does not share its noise draw (:class:`DetectorScorer`)."""
    return scorer.score_images(images, record["seed"] + 1)


def _score_input(scorer: DetectorScorer, record: dict, source, *, conform, skip_bad, split, data_dir,
                 limit) -> tuple[InputImages, np.ndarray]:
    """The images of ``source`` and their scores. A folder is streamed (:class:`FolderStream`):
    read and scored a chunk at a time, so that memory is bounded by the chunk, and its images
    kept only as files (:class:`FolderImages`, decoded again for the page)."""
    if not Path(source).is_dir() or limit:  # load_input refuses a limit on a folder
        images = load_input(source, shape=scorer.image_shape, conform=conform, skip_bad=skip_bad, split=split,
                            data_dir=data_dir, limit=limit)
        return images, decision_scores(scorer, record, images.images)
    stream = FolderStream(source, shape=scorer.image_shape, conform=conform, skip_bad=skip_bad)
    scores = [decision_scores(scorer, record, chunk) for chunk in stream.chunks() if len(chunk) and stream.usable]
    images = stream.finish(FolderImages(stream))  # refuses bad files without skip_bad
    return images, np.concatenate(scores)


def _summary(source, images: InputImages, record: dict, decision, *, alpha, delta, fdr, rank) -> dict:
    """:func:`decide`'s summary (JSON-able): the input and what was left out, skipped or
    escaped, the detector, the rule and its guarantee, the calibration it rests on."""
    return {
        "input": display_name(str(source)), "input_kind": images.kind, "input_source": images.source,
        "n_images": len(images), "skipped": [list(s) for s in images.skipped],
        "left_out": [list(s) for s in images.left_out], "fitted": images.fitted, "converted": images.converted,
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


def _say_if_the_calibration_images_changed(scorer: DetectorScorer, record: dict, data_dir: str | None) -> None:
    """With the fit calibrate saved, no calibration image is scored again, and the recorded
    scores remain those of the images calibrated on: the decisions stand. But where the file
    they came from changed since (or the folder), the user is told, once (a warning in the
    log and the detect summary). Data not found now is not a change: nothing is said."""
    a, b = record["calibration_slice"]
    where = f"{record['dataset']}/{record['split']}[{a}:{b}]"
    try:
        data, _ = training_split(scorer.run, data_dir)
    except DataError:
        log.debug("the calibration images %s are not found now; not checked", where)
        return
    except NoCalibrationError as err:  # the folder or the split changed
        reason = str(err)
    else:
        if images_digest(data.images[a:b]) == record["calibration_images_sha256"]:
            return
        reason = f"{data.source} holds other images there now"
    scorer.warnings.append(f"the calibration images {where} changed in their file since calibrate ({reason}); "
                           "the decisions use the scores recorded at calibration, which remain valid for the "
                           "images calibrated on; to calibrate on the data as it is now: "
                           f"{how_to_calibrate(scorer.run_dir, record['detector'])}")
    log.warning("%s", scorer.warnings[-1])


def _refit_and_check(scorer: DetectorScorer, record: dict, data_dir: str | None) -> None:
    """Fit the detector again on its recorded slice (features cached in the run), score
    the calibration images again through the path the images to decide on take, and
    check that this reproduces the saved calibration scores: a detector fitted
    differently, features computed by other code, or other calibration images would
    void the guarantee."""
    data, _ = training_split(scorer.run, data_dir)
    a, b = record["calibration_slice"]
    how = how_to_calibrate(scorer.run_dir, record["detector"])
    if images_digest(data.images[a:b]) != record["calibration_images_sha256"]:
        raise NoCalibrationError(f"the calibration images {record['dataset']}/{record['split']}[{a}:{b}] found now "
                                 f"differ from those calibrated on; calibrate again: {how}")
    try:  # the options come from the calibration file: a value the feature refuses is the file's fault
        scorer.fit(*(record["fit_slice"] or (0, 0)), seed=fit_seed(record))
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
