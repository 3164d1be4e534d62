"""A detector from a folder of images in one call: ``vaeood fit SOURCE --out MODEL``.

It trains the VAE on SOURCE with the last images of it held out, then fits and
calibrates the recommended detector (:data:`vaeood.decisions.recommended.RECOMMENDED`) on those
held-out images, so that ``vaeood detect MODEL IMAGES`` needs nothing more:

    SOURCE:  [0, n − h)        training images of the VAE
             [n − h, n)        held out: the detector's fitting images, then its calibration
                               images (vaeood.decisions), never seen in training

The held-out count is ``h = min(7000, n // 5)``, of which ``min(2000, h // 2)`` calibrate
and the rest fit the detector: 5,000 to fit and 2,000 to calibrate once n ≥ 35,000 (the
counts ``vaeood calibrate`` takes at most by default); for a smaller set a fifth, half to
fit and half to calibrate. A folder's files are in a
fixed pseudo-random order (by a hash of their names, :mod:`vaeood.data`), so the held-out
images are not one class; a labelled file whose classes differ across the split (sorted by
class) gets a warning (:mod:`vaeood.data.split_order`). The model is the conv VAE with a
discretised-logistic decoder (a normalised pmf over 8-bit values, so bits/dim are defined),
10 epochs; any setting can be overridden (``--train.epochs=20``, ``--model.latent_dim=32``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .training.config import Config, ConfigError
from .data.load import load_for_run, names_a_folder
from .data.split_order import unmixed_split
from .data.working_size import TRANSFORM, working_size
from .decisions import calibrate, recommended_detector
from .decisions.recommended import backbone_options, check_backbone_applies
from .decisions.records import CALIBRATION_DIR, calibration_path
from .infra.runlock import run_lock
from .training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from .training.run_dir import CONFIG_NAME
from .training.train import train

log = logging.getLogger(__name__)

#: the model ``fit`` trains unless told otherwise
MODEL = {"model.arch": "conv", "model.likelihood": "dlogistic", "train.epochs": "10"}
MAX_HOLDOUT = 7000
CALIBRATION_IMAGES = 2000
#: fewer images leave too few to calibrate at α = 0.05 (a fifth held out, half of it to calibrate)
MIN_IMAGES = 200


def holdout_for(n: int) -> int:
    """Images of ``n`` held out of training for the detector (module docstring)."""
    return min(MAX_HOLDOUT, n // 5)


def fit(source: str | Path, out: str | Path, *, split: str = "train", overrides: dict[str, str] | None = None,
        detector: str | None = None, data_dir: str | None = None, device: str = "cpu", resume: bool = False,
        backbone: str | None = None) -> dict:
    """Train a VAE on ``source`` (a folder of images, a dataset name) into ``out`` with the
    held-out split of the module docstring, then calibrate ``detector`` (default: the
    recommended one) on the held-out images, its content view reading the registered
    ``backbone`` (None: the default, EfficientNet-Lite0). Returns what was done: ``run``,
    ``n_images``, ``holdout``, ``detector``, the ``backbone`` it reads (None: its default, or
    none) and the calibration ``record``."""
    check_backbone_applies(detector, backbone)  # before any training
    overrides = dict(overrides or {})
    if "data.name" in overrides or "data.holdout" in overrides:
        raise ConfigError("vaeood fit chooses data.name (its SOURCE) and data.holdout (a fifth, at most 7,000); "
                          "use vaeood train for other splits")
    name = str(source)
    folder = names_a_folder(name, split, overrides.get("data.data_dir") or data_dir)
    settings = {"data.name": name, "data.split": split, **MODEL, **(_working_size(name, overrides) if folder else {}),
                **overrides}
    if device != "cpu":
        settings["train.device"] = device
    config = Config().override(settings)
    new_out = not Path(out).exists()
    Path(out).mkdir(parents=True, exist_ok=True)
    # the whole fit holds the run's lock: a second fit on the same out is refused before it writes there
    with run_lock(out, "fit"):
        return _fit_locked(config, settings, out, name, new_out, detector=detector, data_dir=data_dir,
                           device=device, resume=resume, backbone=backbone)


def _fit_locked(config: Config, settings: dict, out, name: str, new_out: bool, *, detector, data_dir, device,
                resume, backbone) -> dict:
    if not resume and (Path(out) / CHECKPOINT_NAME).exists():  # before the folder is read
        raise FileExistsError(_holds_a_fit(Path(out), detector))
    if resume:
        _check_same_source(Path(out), name)
    # read as training will read it (data.conform, data.skip_bad), to count what it holds; a folder is decoded
    # into the run's cache/ once, for training and calibration to reuse (removed with a new out if refused)
    try:
        data = load_for_run(config.data, data_dir=config.data.data_dir or data_dir, run_dir=out)
        n = len(data.images)
        if n < MIN_IMAGES:
            raise ConfigError(f"{data.source}: {n} images; vaeood fit needs at least {MIN_IMAGES} (a fifth of them "
                              "is held out to fit and calibrate the detector)")
    except Exception:
        if new_out:
            shutil.rmtree(out, ignore_errors=True)
        raise
    h = holdout_for(n)
    n_calibration = min(CALIBRATION_IMAGES, h // 2)
    _warn_if_unmixed(data, n, h, n_calibration)
    settings["data.holdout"] = str(h)
    config = config.override({"data.holdout": str(h)})
    run = train(config, out, resume=resume, data_dir=data_dir, given=list(settings))
    detector = detector or recommended_detector(run, device, backbone)
    options = backbone_options(detector, backbone)
    record = calibrate(run, detector, detector_options=options, n_calibration=n_calibration, n_fit=h - n_calibration,
                       data_dir=data_dir, device=device)
    return {"run": Path(run), "n_images": n, "holdout": h, "trained": n - h, "detector": detector, "record": record,
            "backbone": backbone if options else None,  # None also where the detector fell back to one without
            "source": name, "provenance": data.source, "epochs": config.train.epochs,
            "image_shape": data.images.shape[1:], "folder": data.folder}


def _warn_if_unmixed(data, n: int, h: int, n_calibration: int) -> None:
    """Warn where the source's classes are not mixed across the split (a file sorted by class):
    the detector would be calibrated on the file's last classes alone (:mod:`vaeood.data.split_order`)."""
    parts = {"the training images": (0, n - h), "the fit images": (n - h, n - n_calibration),
             "the calibration images": (n - n_calibration, n)}
    unmixed = unmixed_split(data.labels, parts)
    if unmixed:
        log.warning("%s: its classes are not mixed across vaeood fit's split (trained on its first %d images, fitted "
                    "and calibrated on the last %d): %s. The false-alarm guarantee holds only for images like the "
                    "last ones; if the file is sorted (by class, camera or date), shuffle its images and labels "
                    "together and fit again", data.source, n - h, h, unmixed)


def _check_same_source(out: Path, name: str) -> None:
    """``--resume`` finishes a stopped fit on the source it started on: another SOURCE is refused
    (training would go on with the saved source while the summary named the new one)."""
    if not (out / CONFIG_NAME).exists():
        return
    then = Config.from_file(out / CONFIG_NAME).data.name
    if then == name or (Path(then).is_dir() and Path(name).is_dir() and Path(then).resolve() == Path(name).resolve()):
        return
    raise ConfigError(f"{out} holds a fit of {then!r}, not of {name!r}: --resume finishes a stopped fit on its own "
                      f"source; give {then!r} to finish it, or fit {name!r} into another --out")


def _holds_a_fit(out: Path, detector: str | None) -> str:
    """Why a fit without ``--resume`` refuses ``out``, a run already, and what to do: use a finished
    fit, finish a stopped one with ``--resume`` (the model an uninterrupted fit gives), or delete ``out``."""
    state = load_checkpoint(out)
    epochs = state["config"]["train"]["epochs"]
    calibrations = [calibration_path(out, detector)] if detector else (out / CALIBRATION_DIR).glob("*.npz")
    if state["epoch"] < epochs:
        stopped = f"after {state['epoch']} of its {epochs} epochs"
    elif not any(path.exists() for path in calibrations):
        stopped = f"after training, before its detector{f' {detector}' if detector else ''} was calibrated"
    else:
        return (f"{out} already holds a fitted model (vaeood detect {out} IMAGES uses it); to fit again, delete "
                f"{out} or choose another --out")
    return (f"{out} holds a fit that was stopped {stopped}: run the same command with --resume to finish it, "
            f"or delete {out} to start afresh")


def _working_size(name: str, overrides: dict) -> dict[str, str]:
    """For a folder: the working resolution (``data.image_size``, chosen from the folder
    unless given) and the transform to it (``data.conform``, :data:`TRANSFORM` unless given;
    the overrides win), :mod:`vaeood.data.working_size`."""
    if "data.image_size" in overrides:  # checked with the rest of the config
        return {"data.conform": TRANSFORM}
    height, width = working_size(name)
    log.info("working resolution %d×%d (H×W) from the folder's median size; every image of another size is "
             "brought to it by %s", height, width, overrides.get("data.conform", TRANSFORM))
    return {"data.image_size": json.dumps([height, width]), "data.conform": TRANSFORM}
