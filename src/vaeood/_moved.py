"""The modules that moved into the layer subpackages (or were renamed there), importable by
their old names for one release (0.2), with a :class:`DeprecationWarning` that names the
new place.

``import vaeood.estimators`` then gives the very module object of
``vaeood.inference.estimators`` (one module, not a copy, so patches and registries are
shared). Nothing inside vaeood imports an old name (the import-layer test checks it).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module (under ``vaeood.``) → its new place
MOVED = {
    "allocator": "infra.allocator",
    "atomic": "infra.atomic",
    "calibration_file": "decisions.calibration_file",
    "checkpoint": "training.checkpoint",
    "companions": "evaluation.companions",
    "config": "training.config",
    "conformal": "decisions.conformal",
    "data.fit": "data.conform",  # making images fit a model is to conform them, not to fit
    # its listing and header pass; decode_into is now in data.decode, the choice of the target
    # shape (choose_target, conform_record) in data.conform
    "data.image_files": "data.listing",
    "data.folder": "data.inputs",  # the images to score (a folder, an .npz or a dataset), not only folders
    "data.image_folder": "data.folder_dataset",  # a folder read as a dataset split
    "console": "infra.console",
    "detect_report": "decisions.detect_report",
    "distributed": "infra.distributed",
    "errors": "infra.errors",
    "estimators": "inference.estimators",
    "evaluate": "evaluation.evaluate",
    "fitdata": "evaluation.fitdata",
    "fitted_detector": "decisions.fitted_detector",
    "gaussian": "inference.gaussian",
    "intervals": "evaluation.intervals",
    "llr": "inference.llr",
    "metrics": "evaluation.metrics",
    "noise": "inference.noise",
    "objectives": "inference.objectives",
    "progress": "infra.progress",
    "refine": "inference.refine",
    "registry": "infra.registry",
    "regret": "inference.regret",
    "report": "evaluation.report",
    "run": "training.run",
    "runlock": "infra.runlock",
    "scoring": "evaluation.log_px",
    "evaluation.scoring": "evaluation.log_px",  # log p(x) estimates are log_px, not scores
    "train": "training.train",
    "variance": "evaluation.variance",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``vaeood.OLD`` and loads it as the module now at ``vaeood.NEW``."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("vaeood.")
        if fullname.startswith("vaeood.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = "vaeood." + MOVED[spec.name.removeprefix("vaeood.")]
        warnings.warn(f"{spec.name} moved to {new}; the old name goes in vaeood 0.3", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # the module ran already, under its new name


#: old names that are also functions of ``vaeood`` (``vaeood.train``, ``vaeood.evaluate``):
#: loading them through the finder would make ``vaeood.train`` the module, so they are
#: aliased up front instead (no warning can be given for them)
SHADOWED = ("train", "evaluate")


def install() -> None:
    """Put the finder on ``sys.meta_path`` once, and alias the shadowed names."""
    for old in SHADOWED:
        sys.modules.setdefault(f"vaeood.{old}", importlib.import_module(f"vaeood.{MOVED[old]}"))
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
