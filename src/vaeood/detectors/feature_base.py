"""Shared by the detectors that read a pretrained backbone's features
(:mod:`vaeood.features.backbone`): the feature request, the rows, and why they cannot run."""

from __future__ import annotations

import numpy as np

from ..features.backbone import DEFAULT_BACKBONE, DEFAULT_SIZE
from ..models.backbones import BACKBONES, get_backbone
from ..training.config import ConfigError
from .base import Detector

FEATURE_KEY = "backbone_features"


def check_backbone(name, prefix: str = "") -> None:
    """Refuse a backbone name that is not registered, with the registered ones."""
    if name not in BACKBONES:
        raise ConfigError(f"{prefix}backbone must be one of {', '.join(BACKBONES.names())}, got {name!r}")


class FeatureDetector(Detector):
    """A detector fitted on the backbone features ``[N, D]`` of held-out training images;
    options ``backbone`` and ``size`` (None: the defaults of :mod:`vaeood.features.backbone`)."""

    fits = True

    def __init__(self, **options):
        # the defaults are written into the options when the detector is made, not read when it
        # scores: a saved fit keeps the backbone and size it was fitted with if the defaults move
        options.update(backbone=options.get("backbone") or DEFAULT_BACKBONE, size=options.get("size") or DEFAULT_SIZE)
        check_backbone(options["backbone"], f"{self.name}: ")  # when the detector is made, not after the VAE trained
        super().__init__(**options)

    # .get: a fit saved before the defaults were written into the options holds None; it is then
    # read at today's defaults, and detect refuses it unless it reproduces its calibration scores
    @property
    def backbone(self) -> str:
        return self.options.get("backbone") or DEFAULT_BACKBONE

    @property
    def needs(self):
        return {"backbone": {"name": self.backbone, "size": self.options.get("size") or DEFAULT_SIZE}}

    def why_not(self, info):
        reason = get_backbone(self.backbone).why_unavailable()
        return f"needs the pretrained backbone {self.backbone!r}: {reason}" if reason else super().why_not(info)

    def rows(self, features) -> np.ndarray:
        if FEATURE_KEY not in features:
            raise KeyError(f"features {FEATURE_KEY} are missing (the 'backbone' feature gives them)")
        f = np.asarray(features[FEATURE_KEY], dtype=np.float64)
        return f.reshape(len(f), -1)
