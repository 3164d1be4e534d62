"""A calibrated detector's fit, saved beside its calibration so that ``vaeood detect`` need
not fit it again on every call.

``vaeood calibrate`` fits the detector on held-out training images (for ``fused``: its
two components five times over, tens of seconds) and ``vaeood detect`` used to repeat
that fit, and rescore every calibration image, on each call, to prove that it scores as
at calibration. Instead calibrate saves the fitted detector in
``RUN/calibration/<detector>.fitted.pkl`` with a fixed sample of the calibration images
and their scores, and records the file's SHA-256 in the calibration record. Detect then:

1. reads the file only if its SHA-256 is the recorded one and it was written by this
   vaeood version (otherwise it fits again, as before);
2. unpickles it with an allowlist of globals (Python's "restricting globals" recipe):
   NumPy's array and dtype reconstructors and classes defined in ``vaeood.detectors`` or
   ``sklearn``; any other global (a function that would run code) is refused;
3. rescores the sample images through the same feature code as the images to decide on
   and checks that they reproduce the scores that code gave them at calibration, which
   proves the features, the model and the fitted detector unchanged on them.

The sample's scores are taken by ``score_images`` on the sample itself, not read from the
calibration scores: those come from the feature cache's batches of the whole slice, and a
batch of other images and another size changes float32 sums by rounding (up to 5e-4 on a
likelihood ratio of two ELBOs of thousands of nats), so a check against them failed for
most detectors and fitted them again every time.

Any failure falls back to the full fit and the check of every calibration image, so the
saved fit can only make detect faster, never change a decision.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
from pathlib import Path

import numpy as np

from .records import REPRODUCED, calibration_path
from .._version import __version__
from ..features import images_digest
from ..infra.atomic import atomic_write
from ..infra.jsonable import strict_json

log = logging.getLogger(__name__)

# 2: the check sample's scores are score_images' own (1 held its calibration scores, from the
# feature cache's batches, which rounding kept from matching)
FORMAT = 2
#: calibration images rescored by detect to check a saved fit (evenly spaced over the slice)
N_CHECK = 64

_NUMPY = {("numpy", "dtype"), ("numpy", "ndarray"),
          *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
          *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric"))}
_CLASS_PREFIXES = ("vaeood.detectors.", "sklearn.")
# sklearn's trees pickle through this one-line helper, ``newObj(obj) = obj.__new__(obj)``
_HELPERS = {(m, "newObj") for m in ("sklearn.metrics._dist_metrics", "sklearn.neighbors._kd_tree",
                                    "sklearn.neighbors._ball_tree")}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY or (module, name) in _HELPERS:
            return super().find_class(module, name)
        if module.startswith(_CLASS_PREFIXES):
            obj = super().find_class(module, name)
            # a class defined there (not one imported into the module from elsewhere)
            if isinstance(obj, type) and getattr(obj, "__module__", "").startswith(_CLASS_PREFIXES):
                return obj
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a saved detector fit")


def fitted_path(calibration_file: str | Path) -> Path:
    """``RUN/calibration/<detector>.fitted.pkl`` beside ``<detector>.npz``."""
    path = Path(calibration_file)
    return path.with_name(path.stem + ".fitted.pkl")


def check_rows(n: int) -> np.ndarray:
    """The positions, within the calibration slice, of the images detect rescores."""
    return np.unique(np.linspace(0, n - 1, min(N_CHECK, n)).round().astype(int))


def scores_digest(scores: np.ndarray) -> str:
    """The project's array digest (:func:`vaeood.features.images_digest`) of calibration scores
    as float64: ties a saved fit to the scores it was saved with."""
    return images_digest(np.asarray(scores, dtype=np.float64))


def save_fitted(path: str | Path, detector, images: np.ndarray, scores: np.ndarray, score_images) -> str | None:
    """Save the fitted ``detector`` with the digest of its calibration ``scores``, the check
    sample of its calibration ``images`` and the sample's scores by ``score_images(sample)``
    (the path detect rescores them by); return the file's SHA-256, or None (nothing saved)
    when the fit holds a global the loader would refuse."""
    rows = check_rows(len(images))
    sample = np.ascontiguousarray(images[rows])
    payload = {"format": FORMAT, "vaeood_version": __version__, "detector": detector,
               "scores_sha256": scores_digest(scores), "check_rows": rows, "check_images": sample,
               "check_scores": np.asarray(score_images(sample), dtype=np.float64)}
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as err:
        log.debug("not saving the fit of %s (%s): detect will fit it again", detector.name, err)
        return None
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def load_fitted(path: str | Path, sha256: str | None) -> dict | None:
    """The saved fit (``detector``, ``check_rows``, ``check_images``, ``check_scores``), or None
    when there is none, it is not the file the calibration recorded, or it was written by
    another vaeood version: the caller then fits again."""
    path = Path(path)
    if sha256 is None or not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        log.warning("%s is not the fit its calibration recorded (SHA-256 differs); fitting the detector again",
                    path)
        return None
    try:
        payload = _RestrictedUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # noqa: BLE001 - any unreadable fit means: fit again
        log.warning("%s cannot be read (%s); fitting the detector again", path, err)
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or \
            payload.get("vaeood_version") != __version__:
        log.info("%s was saved by another vaeood version; fitting the detector again", path)
        return None
    return payload


def restore_fit(scorer, record: dict) -> bool:
    """Give ``scorer`` (a :class:`vaeood.decisions.scorer.DetectorScorer`) the fit that calibrate
    saved for ``record`` if it is the one recorded and rescores its sample of calibration
    images to the scores they had at calibration; False (the caller fits again) otherwise."""
    path = fitted_path(calibration_path(scorer.run_dir, record["detector"]))
    saved = load_fitted(path, record.get("fitted_sha256"))
    if saved is None:
        return False
    fitted, rows = saved["detector"], np.asarray(saved["check_rows"])
    # the scores' digest ties the fit to the calibration scores it was saved with (the record's
    # digest of the file does not: the scores beside it could have been changed)
    if type(fitted) is not type(scorer.detector) or strict_json(fitted.options) != scorer.options or \
            len(rows) == 0 or rows.max() >= len(record["scores"]) or \
            saved.get("scores_sha256") != scores_digest(record["scores"]):
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
