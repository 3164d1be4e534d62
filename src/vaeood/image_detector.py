"""An OOD detector for images as one Python object, in the conventions of scikit-learn and
PyOD: :class:`ImageOODDetector` and :func:`load`.

    >>> det = vaeood.ImageOODDetector(epochs=10, alpha=0.05).fit(images)   # doctest: +SKIP
    >>> det.predict(new_images)            # 1 = out-of-distribution, 0 = not  # doctest: +SKIP

It is a thin layer over ``vaeood fit`` and ``vaeood detect``, with no code path of its own:

* ``fit`` is :func:`vaeood.pipeline.fit`: it trains the conv VAE into a run directory,
  holding out a fifth of the images (at most 7,000), and fits and calibrates the
  recommended detector (:data:`vaeood.decisions.recommended.RECOMMENDED`) on them. Images in
  memory are written first into the run as ``RUN/data/images_train.npz`` (a dataset
  called ``images``, :mod:`vaeood.data.npz`); a folder or a dataset name is read as
  ``vaeood fit`` reads it.
* ``score_samples``, ``p_values`` and ``predict`` are ``vaeood detect``'s scores, conformal
  p-values and flags at false-alarm rate ``alpha`` (:func:`vaeood.decisions.calibrated_scorer`,
  :func:`vaeood.decisions.decision_scores`, :func:`vaeood.decisions.conformal.decide`):
  an in-distribution image is flagged with probability ≤ ``alpha``.
* ``save(path)`` copies the run directory to ``path`` and writes ``path/detector.json``:
  the object's settings and the SHA-256 of every file its decisions rest on (config,
  checkpoint, calibration, saved fit, training images). ``load(path)`` refuses a file
  changed or missing since; the checkpoint loads with ``torch.load(weights_only=True)``
  and the saved fit through the restricted unpickler of
  :mod:`vaeood.decisions.fitted_detector`, so loading runs no pickled code.
  ``path`` is an ordinary run: ``vaeood detect path FOLDER`` decides with it.

Unlike scikit-learn's ``score_samples`` (lower = more abnormal), the score is vaeood's and
PyOD's: higher = more out-of-distribution. How arrays are read (layout, ``channels``,
``value_range``): :mod:`vaeood.image_arrays`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from . import pipeline
from ._version import __version__
from .data.checksums import file_hexdigest
from .data.errors import DataError
from .data.conform import conform_array
from .data.folder_cache import CACHE_DIR
from .data.locate import is_folder_name
from .data.regular_files import open_regular_file
from .decisions import calibrated_scorer, calibration_path, decision_scores, load_calibration
from .decisions.conformal import decide, p_values
from .decisions.fitted_detector import fitted_path
from .decisions.recommended import check_backbone_applies
from .detectors import DETECTORS
from .image_arrays import as_images, hash_order
from .infra.atomic import atomic_write, atomic_write_text
from .infra.runlock import LOCK_NAME, run_lock
from .training.checkpoint import CHECKPOINT_NAME
from .training.run_dir import CONFIG_NAME, Run
from .training.train import resumable

MANIFEST = "detector.json"
FORMAT = 1
#: the dataset name of images given in memory, saved in the run as data/images_train.npz
ARRAY_DATASET = "images"
DATA_FOLDER = "data"


def class_labels(y, n: int) -> np.ndarray:
    """``y`` as int64 class labels ``[n]``, or a ValueError that says what was expected."""
    arr = np.asarray(y)
    if arr.shape != (n,):
        raise ValueError(f"y: expected one class label per image, shape ({n},), got shape {arr.shape}")
    if arr.dtype.kind not in "iub" and not (arr.dtype.kind == "f" and np.all(np.isfinite(arr))
                                            and np.all(arr == np.round(arr))):
        raise ValueError(f"y: expected integer class labels, got dtype {arr.dtype}")
    if n and arr.min() < 0:
        raise ValueError(f"y: expected class labels >= 0, got {arr.min()}")
    return arr.astype(np.int64)


class SavedDetectorError(ValueError):
    """A saved detector whose files are missing, changed or not vaeood's."""


class ImageOODDetector(BaseEstimator):
    """Out-of-distribution detection for images: fit on in-distribution images, then score,
    p-value and flag new ones (module docstring).

    Args:
        epochs: training epochs of the VAE (``train.epochs``).
        alpha: the false-alarm rate of :meth:`predict`: an in-distribution image is flagged
            with probability ≤ alpha (conformal, over the calibration images).
        detector: a detector name of :data:`vaeood.DETECTORS`; None: the recommended one.
        channels: the layout of arrays: None (inferred where unambiguous), ``"first"``
            (N×C×H×W), ``"last"`` (N×H×W×C) or ``"none"`` (N×H×W grey).
        value_range: what the values of non-uint8 arrays mean, ``(0, 1)`` or ``(0, 255)``.
        conform: ``"pad"`` or ``"resize"`` images of another size or mode than the model's
            (and, fitting on a folder, its images of another shape); None: the run's recorded
            transform (``data.conform``: ``resize`` for a detector fitted on a folder of photos,
            said once), as ``vaeood detect`` applies it; refused where there is none.
        overrides: other config settings, dotted: ``{"model.latent_dim": 32}``.
        run_dir: where ``fit`` trains the run; None: a temporary folder, removed with the object
            (keep it with :meth:`save`).
        device: ``"cpu"`` or ``"cuda"``.
        backbone: the pretrained network the detector's content view reads, a name of
            ``vaeood.models.backbones.BACKBONES``; None: the default (EfficientNet-Lite0).
    """

    def __init__(self, epochs: int = 10, alpha: float = 0.05, *, detector: str | None = None,
                 channels: str | None = None, value_range: tuple | None = None, conform: str | None = None,
                 overrides: dict | None = None, run_dir: str | os.PathLike | None = None, device: str = "cpu",
                 backbone: str | None = None):
        self.epochs, self.alpha, self.detector, self.backbone = epochs, alpha, detector, backbone
        self.channels, self.value_range, self.conform = channels, value_range, conform
        self.overrides, self.run_dir, self.device = overrides, run_dir, device

    def fit(self, X, y=None) -> ImageOODDetector:  # noqa: N803 (scikit-learn's name)
        """Train and calibrate on in-distribution images ``X``: an array or tensor (see the
        class), a folder of PNG/JPEG images, or a dataset name. ``y``: optional class labels of
        an array's images (integers ≥ 0, one per image); with two or more classes the
        recommended detector's content view also reads a classifier of them
        (:mod:`vaeood.detectors.feature_energy`). The array is stored in the run in a fixed
        pseudo-random order (:func:`vaeood.image_arrays.hash_order`), as a folder's images are,
        so that the held-out images the detectors fit and calibrate on are drawn from all of it,
        even where it is sorted by class. A folder's labels are its class folders."""
        if isinstance(X, (str, os.PathLike)) and Path(X).is_dir() and not is_folder_name(str(X)):
            X = os.path.join(X, "")  # a folder, with the '/' that makes it one to vaeood fit
        if y is not None and isinstance(X, (str, os.PathLike)):
            raise ValueError(f"y: labels are for images given as an array; {str(X)!r} is a folder or dataset name, "
                             "whose labels are its class folders or its own")
        y = None if y is None else class_labels(y, len(X))  # refused before a run folder is made
        check_backbone_applies(self.detector, self.backbone)  # before a run folder is made
        run_dir, self._scorer = self._new_run_dir(), None
        with run_lock(run_dir, "fit"):  # a second fit into the same run_dir is refused before it writes there
            return self._fit_into(run_dir, X, y)

    def _fit_into(self, run_dir: Path, X, y=None) -> ImageOODDetector:  # noqa: N803
        if self.run_dir is not None and resumable(run_dir):  # refused before the training array could overwrite it
            raise FileExistsError(f"run_dir={str(self.run_dir)!r} already holds a run; choose a new folder "
                                  "(or leave run_dir out for a temporary one)")
        settings = {"train.epochs": str(self.epochs), **{k: v if isinstance(v, str) else json.dumps(v)
                                                         for k, v in (self.overrides or {}).items()}}
        if isinstance(X, (str, os.PathLike)):
            source, data_dir = str(X), None
            if self.conform is not None:
                settings.setdefault("data.conform", self.conform)
        else:
            images = as_images(X, channels=self.channels, value_range=self.value_range)
            labels = np.zeros(len(images), dtype=np.int64) if y is None else y  # y: checked by fit
            order = hash_order(images)  # not the given order, which may be sorted by class (see hash_order)
            provenance = (f"an array of {len(images)} images given to ImageOODDetector.fit, stored in the order of "
                          "the SHA-256 of each image's bytes ('order' holds each stored image's position in the array)")
            data_dir = run_dir / DATA_FOLDER
            data_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(data_dir / f"{ARRAY_DATASET}_train.npz", lambda f: np.savez(
                f, x=images[order], y=labels[order], order=order, provenance=np.array(provenance)))
            source = ARRAY_DATASET
        done = pipeline.fit(source, run_dir, overrides=settings, detector=self.detector,
                            data_dir=None if data_dir is None else str(data_dir), device=self.device,
                            backbone=self.backbone)
        self.run_dir_, self.detector_ = Path(done["run"]), done["detector"]
        self.image_shape_ = tuple(Run(self.run_dir_).image_shape)
        self.n_images_ = done["n_images"]
        self._ready()
        return self

    def score_samples(self, X) -> np.ndarray:  # noqa: N803
        """The detector's score of each image, float64 ``[N]``: higher = more out-of-distribution."""
        return self._scores(X)[0]

    def p_values(self, X) -> np.ndarray:  # noqa: N803
        """Conformal p-values ``[N]`` against the calibration scores: (1 + #{calibration scores
        ≥ s}) / (n + 1); ``p ≤ alpha`` for an in-distribution image with probability ≤ alpha."""
        scores, record = self._scores(X)
        return p_values(record["scores"], scores)

    def predict(self, X) -> np.ndarray:  # noqa: N803
        """1 for an image flagged out-of-distribution at false-alarm rate ``alpha`` (its p-value
        ≤ alpha), 0 otherwise, int64 ``[N]`` (PyOD's labels)."""
        scores, record = self._scores(X)
        return decide(record["scores"], scores, self.alpha).flagged.astype(np.int64)

    def save(self, path: str | os.PathLike) -> None:
        """Copy the fitted run to ``path`` (a new or empty folder; the run's own folder is kept
        in place) and write ``path/detector.json``. ``vaeood.load(path)``
        reads it back, and ``vaeood detect path FOLDER`` decides with it."""
        self._ready()
        path = Path(path)
        if path.resolve() != self.run_dir_.resolve():
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise FileExistsError(f"save({str(path)!r}): {path} exists and is not an empty folder; choose a new "
                                      "folder (a saved detector is a whole run directory)")
            skip = shutil.ignore_patterns(LOCK_NAME, CACHE_DIR)  # a folder's decoded copy is made again if needed
            shutil.copytree(self.run_dir_, path, dirs_exist_ok=True, ignore=skip)
        manifest = {"format": FORMAT, "kind": "vaeood.ImageOODDetector", "vaeood_version": __version__,
                    "params": {k: v for k, v in self.get_params().items() if k != "run_dir"},
                    "detector": self.detector_, "image_shape": list(self.image_shape_), "n_images": self.n_images_,
                    "files": {name: file_hexdigest(path / name, "sha256") for name in self._files()}}
        atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=1) + "\n")

    # -- internals ------------------------------------------------------------------------

    def _new_run_dir(self) -> Path:
        if self.run_dir is not None:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            return Path(self.run_dir)
        path = Path(tempfile.mkdtemp(prefix="vaeood-detector-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, path, ignore_errors=True)
        return path

    def _data_dir(self) -> str | None:
        folder = self.run_dir_ / DATA_FOLDER
        return str(folder) if folder.is_dir() else None

    def _candidates(self) -> list[str]:
        """The run's files that the decisions rest on, relative to it, where they may exist."""
        cal = calibration_path(Path(), self.detector_)  # relative: calibration/<detector>.npz
        names = [CONFIG_NAME, CHECKPOINT_NAME, cal, fitted_path(cal), Path(DATA_FOLDER, f"{ARRAY_DATASET}_train.npz")]
        return [str(name) for name in names]

    def _files(self) -> list[str]:
        """:meth:`_candidates` that exist (a detector that fits nothing saves no fit)."""
        return [name for name in self._candidates() if (self.run_dir_ / name).is_file()]

    def _ready(self):
        """The calibrated detector and its calibration record, loaded once."""
        if not hasattr(self, "run_dir_"):
            raise DataError("this ImageOODDetector is not fitted: call fit(X) first, or vaeood.load(path)")
        if getattr(self, "_scorer", None) is None:
            self._record = load_calibration(self.run_dir_, self.detector_)
            self._scorer = calibrated_scorer(self.run_dir_, self._record, device=self.device,
                                             data_dir=self._data_dir())
        return self._scorer, self._record

    def _scores(self, X) -> tuple[np.ndarray, dict]:  # noqa: N803
        """``vaeood detect``'s scores of ``X``, and the calibration record they are compared with."""
        scorer, record = self._ready()
        conform = Run(self.run_dir_).conform_for(self.conform)  # the run's recorded transform by default, as detect
        images = conform_array(as_images(X, channels=self.channels, value_range=self.value_range), self.image_shape_,
                               conform, "X")[0]
        return decision_scores(scorer, record, images), record


def load(path: str | os.PathLike, *, device: str = "cpu") -> ImageOODDetector:
    """The detector :meth:`ImageOODDetector.save` wrote to ``path``, every file checked against
    the SHA-256 it was saved with (:class:`SavedDetectorError` when one is missing or changed)."""
    path = Path(path)
    manifest = _read_manifest(path)
    try:
        det = ImageOODDetector(**{**manifest["params"], "device": device, "run_dir": path})
    except TypeError as err:
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST} field 'params' ({err}); save the detector "
                                 "again") from None
    det.run_dir_, det.detector_ = path, manifest["detector"]
    det.image_shape_, det.n_images_ = tuple(manifest["image_shape"]), manifest["n_images"]
    listed, present = manifest["files"], det._files()
    unknown = sorted(set(listed) - set(det._candidates()))
    if unknown:
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST} lists {unknown[0]!r}, not a file of a saved "
                                 f"{manifest['detector']} detector; save the detector again")
    for name, sha256 in listed.items():
        if name not in present:
            raise SavedDetectorError(f"saved detector {path}: {name} is missing; save the detector again")
        if file_hexdigest(path / name, "sha256") != sha256:
            raise SavedDetectorError(f"saved detector {path}: {name} changed since it was saved (its SHA-256 is not "
                                     f"the one in {MANIFEST}); save the detector again, or fit it again")
    added = sorted(set(present) - set(listed))
    if added:
        raise SavedDetectorError(f"saved detector {path}: {added[0]} is not in {MANIFEST}: it changed since the "
                                 "detector was saved; save the detector again")
    det._ready()
    return det


def _read_manifest(path: Path) -> dict:
    file = path / MANIFEST
    if not path.exists():
        raise SavedDetectorError(f"{path}: no such file or folder (give the folder det.save(path) wrote)")
    if not file.exists():
        raise SavedDetectorError(f"{path}: no {MANIFEST}, so not a saved ImageOODDetector (a run from `vaeood fit` "
                                 "works with `vaeood detect`; save a detector with det.save(path))")
    try:
        with open_regular_file(file) as f:  # a FIFO is refused, never waited on
            manifest = json.loads(f.read().decode("utf-8"))
    except DataError as err:
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST}: {err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST} is not JSON ({err}); save the detector "
                                 "again") from None
    expected = {"format": int, "params": dict, "detector": str, "image_shape": list, "n_images": int, "files": dict}
    for key, kind in expected.items():
        if not isinstance(manifest, dict) or not isinstance(manifest.get(key), kind):
            raise SavedDetectorError(f"saved detector {path}: {MANIFEST} field {key!r} is missing or not a "
                                     f"{kind.__name__}; save the detector again")
    if manifest["detector"] not in DETECTORS.names():
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST} field 'detector' is {manifest['detector']!r}, "
                                 "not a detector this vaeood knows; save the detector again")
    if manifest["format"] != FORMAT:
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST} of format {manifest['format']}, but this "
                                 f"vaeood reads format {FORMAT}; fit and save it again")
    needed = {CONFIG_NAME, CHECKPOINT_NAME}
    if not needed <= set(manifest["files"]):
        raise SavedDetectorError(f"saved detector {path}: {MANIFEST} lists no SHA-256 of "
                                 f"{', '.join(sorted(needed - set(manifest['files'])))}; save the detector again")
    return manifest
