"""A detector as :func:`vaeood.evaluation.evaluate` fitted and scored it, kept for the
decisions made on the same run right after (:class:`KeptFit`).

The ood-suite evaluates each detector (fit on held-out training images, scores of every
test set) and then calibrates it and computes its decision rates on the same images. What
evaluate made is kept so that neither the fit nor the test sets' scores are made twice:
:func:`vaeood.decisions.calibrate` takes the fit (``fitted=``) and
:func:`vaeood.decisions.run_rates.decision_rates` the scores (``fits=``), each only where
they are of the same detector, options, images and seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detectors import Detector
from ..infra.jsonable import strict_json


@dataclass
class KeptFit:
    """``detector`` (evaluate's detector ``name``) fitted on images [start, stop) of
    ``dataset/split`` with features of ``seed``, and its ``scores`` of each set evaluate scored,
    made with ``score_args`` (split, limit, conform, seed and the folders of the sets)."""

    name: str
    detector: Detector
    dataset: str
    split: str
    start: int
    stop: int
    seed: int
    scores: dict[str, np.ndarray]
    score_args: dict

    def is_fit_of(self, name: str, options: dict, split: tuple[str, str], fit_slice) -> bool:
        """Whether this is detector ``name`` with these (JSON) ``options``, fitted on ``fit_slice``
        of ``split`` (dataset, split): :func:`vaeood.decisions.calibrate` takes the fit then, and
        :func:`vaeood.decisions.run_rates.decision_rates` asks the same of the record it made."""
        return (self.name == name and strict_json(self.detector.options) == options
                and (self.dataset, self.split) == tuple(split) and list(fit_slice or ()) == [self.start, self.stop])

    def scores_of(self, sets: list[str], score_args: dict) -> dict[str, np.ndarray] | None:
        """The scores of ``sets`` if evaluate scored each of them with the same ``score_args``, else None."""
        if score_args != self.score_args or not all(s in self.scores for s in sets):
            return None
        return {s: self.scores[s] for s in sets}


def score_args(*, split: str, limit, conform, allow_sample: bool, skip_bad: bool, seed: int, folders: dict) -> dict:
    """What a set's scores depend on besides the detector, in one comparable form (``folders``:
    set name → the folder it is read from, or None)."""
    return {"split": split, "limit": limit, "conform": conform, "allow_sample": bool(allow_sample),
            "skip_bad": bool(skip_bad), "seed": int(seed),
            "folders": {k: None if v is None else str(v) for k, v in folders.items()}}
