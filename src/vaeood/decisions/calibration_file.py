"""Calibration files (``RUN/calibration/<detector>.npz``) read as untrusted input.

A calibration file carries the scores a conformal guarantee rests on and the slices of
the training split they come from; a file edited by hand, cut short, or made for another
run must not be read as a valid calibration. :func:`read_calibration_file` checks every
array (``scores``: float64 ``[n]``, finite; ``meta``: a JSON object) and every field of
the record (its type, and that the sizes agree), and :func:`check_slices` checks the
recorded slices against the run's own training range, computed from the run's config and
checkpoint, not from the file: calibration and fitting images must lie in the held-out
part of the split, disjoint from each other. Every refusal names the file and the field.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..data.errors import DataError
from ..data.regular_files import open_regular_file

__all__ = ["NoCalibrationError", "FIELDS", "read_calibration_file", "check_slices"]

HEX64 = "a SHA-256 (64 hexadecimal digits)"


class NoCalibrationError(ValueError):
    """The run has no (valid) calibration for the requested detector; the message says
    how to make one."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_slice(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(i) for i in v) and 0 <= v[0] < v[1]


def _is_hex64(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


# field → (check, what was expected)
FIELDS = {
    "format": (_is_int, "an integer"),
    "detector": (lambda v: isinstance(v, str), "a detector name"),
    "detector_options": (lambda v: isinstance(v, dict), "a JSON object"),
    "dataset": (lambda v: isinstance(v, str), "a dataset name"),
    "split": (lambda v: isinstance(v, str), "a split name"),
    "source": (lambda v: isinstance(v, str), "a text"),
    "is_sample": (lambda v: isinstance(v, bool), "true or false"),
    "n_split": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "train_slice": (lambda v: isinstance(v, list) and len(v) == 2 and v[0] == 0 and _is_slice(v), "[0, n]"),
    "heldout": (_is_slice, "[start, stop] with 0 ≤ start < stop"),
    "fit_slice": (lambda v: v is None or _is_slice(v), "null or [start, stop]"),
    "calibration_slice": (_is_slice, "[start, stop] with 0 ≤ start < stop"),
    "n_calibration": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "calibration_images_sha256": (_is_hex64, HEX64),
    "checkpoint_sha256": (_is_hex64, HEX64),
    "seed": (_is_int, "an integer"),
    "score_direction": (lambda v: v == "higher = more out-of-distribution", "'higher = more out-of-distribution'"),
}


def _refuse(path: Path, field: str, problem: str, how: str) -> NoCalibrationError:
    return NoCalibrationError(f"{path}: field {field!r} {problem}: not a valid calibration file; calibrate again: "
                              f"{how}")


def _arrays(path: Path, how: str) -> tuple[np.ndarray, object]:
    """The file's ``scores`` and parsed ``meta``, each checked for what it must be."""
    try:
        with open_regular_file(path) as raw, np.load(raw, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise ValueError("a single array, not an .npz archive")
            missing = [k for k in ("scores", "meta") if k not in f.files]
            if missing:
                raise _refuse(path, missing[0], f"is missing (the file holds {sorted(f.files)})", how)
            extra = sorted(set(f.files) - {"scores", "meta"})
            if extra:
                raise _refuse(path, extra[0], "is not a field of a calibration file", how)
            scores, meta = f["scores"], f["meta"]
    except NoCalibrationError:
        raise
    except DataError as err:  # not a regular file: never opened
        raise NoCalibrationError(f"{path}: {err}; make it again with {how}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise NoCalibrationError(f"{path}: unreadable calibration file ({err}); make it again with {how}") from None
    if scores.dtype != np.float64 or scores.ndim != 1 or len(scores) == 0:
        raise _refuse(path, "scores", f"is {scores.dtype} of shape {list(scores.shape)}, expected float64 [n], n ≥ 1",
                      how)
    if not np.isfinite(scores).all():
        raise _refuse(path, "scores", f"holds {int((~np.isfinite(scores)).sum())} values that are not finite", how)
    if meta.ndim != 0 or meta.dtype.kind != "U":
        raise _refuse(path, "meta", f"is {meta.dtype} of shape {list(meta.shape)}, expected one JSON text", how)
    try:
        record = json.loads(str(meta))
    except json.JSONDecodeError as err:
        raise _refuse(path, "meta", f"is not JSON ({err})", how) from None
    if not isinstance(record, dict):
        raise _refuse(path, "meta", f"is JSON {type(record).__name__}, expected an object", how)
    return scores, record


def read_calibration_file(path: Path, detector: str, fmt: int, format_change: str, how: str) -> dict:
    """The record of the calibration file ``path`` with its ``scores`` (float64 ``[n]``),
    every array and field checked (module docstring); :class:`NoCalibrationError` naming
    the file and the field otherwise, or a file of another ``fmt`` (saying why formats
    changed, ``format_change``)."""
    scores, record = _arrays(path, how)
    if record.get("format") != fmt:
        raise NoCalibrationError(f"{path}: calibration file of format {record.get('format')!r}, but this vaeood "
                                 f"reads format {fmt} ({format_change}); calibrate again: {how}")
    for name, (check, expected) in FIELDS.items():
        if name not in record:
            raise _refuse(path, name, "is missing", how)
        if not check(record[name]):
            raise _refuse(path, name, f"is {json.dumps(record[name])}, expected {expected}", how)
    if record["detector"] != detector:
        raise _refuse(path, "detector", f"is {record['detector']!r}, but the file is that of detector {detector!r}",
                      how)
    fitted = record.get("fitted_sha256")  # optional: calibrations made before fits were saved have none
    if fitted is not None and not _is_hex64(fitted):
        raise _refuse(path, "fitted_sha256", f"is {json.dumps(fitted)}, expected null or {HEX64}", how)
    # optional: the seed of the fit slice's features where it is not the calibration's (a fit made
    # beside the calibration, by the ood-suite's evaluate); absent in older files: the seed
    if "fit_seed" in record and not _is_int(record["fit_seed"]):
        raise _refuse(path, "fit_seed", f"is {json.dumps(record['fit_seed'])}, expected an integer", how)
    a, b = record["calibration_slice"]
    if not b - a == record["n_calibration"] == len(scores):
        raise _refuse(path, "scores", f"holds {len(scores)} scores, but calibration_slice [{a}, {b}] and "
                      f"n_calibration {record['n_calibration']} say {b - a} and {record['n_calibration']}", how)
    return {**record, "scores": scores}


def check_slices(path: Path, record: dict, *, split: tuple[str, str], split_size: int, trained: int,
                 heldout: tuple[int, int], how: str) -> None:
    """The recorded split and slices against the run's own (``split`` its dataset and split,
    ``split_size`` images, the first ``trained`` trained on, ``heldout`` never trained on):
    the calibration and fitting slices lie in the held-out range and do not overlap."""
    if (record["dataset"], record["split"]) != split:
        raise _refuse(path, "dataset", f"is {record['dataset']}/{record['split']}, but the run trained on "
                      f"{split[0]}/{split[1]}", how)
    if record["n_split"] != split_size:
        raise _refuse(path, "n_split", f"is {record['n_split']}, but the run's split has {split_size} images", how)
    expected = {"train_slice": [0, trained], "heldout": list(heldout)}
    for name, value in expected.items():
        if record[name] != value:
            raise _refuse(path, name, f"is {record[name]}, but the run's is {value}", how)
    first, last = heldout
    for name in ("fit_slice", "calibration_slice"):
        s = record[name]
        if s is not None and not first <= s[0] < s[1] <= last:
            raise _refuse(path, name, f"is {s}, outside the images the model never trained on [{first}, {last})"
                          f" (it trained on [0, {trained}))", how)
    fit, cal = record["fit_slice"], record["calibration_slice"]
    if fit is not None and fit[0] < cal[1] and cal[0] < fit[1]:
        raise _refuse(path, "calibration_slice", f"{cal} overlaps the detector's fitting slice {fit}", how)
