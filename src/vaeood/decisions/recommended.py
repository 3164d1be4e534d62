"""The detector a user gets without asking (:data:`RECOMMENDED`, :func:`recommended_detector`)."""

from __future__ import annotations

import logging
from pathlib import Path

from .scorer import run_info
from ..detectors import DETECTORS, make_detector
from ..detectors.feature_base import FeatureDetector, check_backbone
from ..detectors.fused_content import COMPONENTS, FusedContent
from ..training.config import ConfigError
from ..training.run_dir import Run

log = logging.getLogger(__name__)

#: the content view's detectors of fused_content, each told the backbone to read
CONTENT = COMPONENTS[1:]

#: the detector a user gets without asking: the first of these that applies to the run.
#: ``fused_content`` sees pixels (``fused``: what is broken) and content (``feature_knn``, and
#: ``feature_energy`` where the fit images carry classes, on an ImageNet-pretrained backbone:
#: what is different); ``fused`` where the backbone is not
#: installed (said once); ``dose_plus`` where a latent density cannot be had (a hierarchical
#: VAE has no single q(z|x)); ``nll`` last.
RECOMMENDED = ("fused_content", "fused", "dose_plus", "nll")


def backbone_options(detector: str, backbone: str | None) -> dict | None:
    """The options that make ``detector`` read the registered ``backbone`` (None: its default):
    ``{"backbone": ...}`` for a feature-space detector, its content view's for ``fused_content``;
    None for a detector that reads no backbone. :class:`ConfigError` for an unknown backbone."""
    if backbone is None:
        return None
    check_backbone(backbone)
    kind = DETECTORS.get(detector)
    if issubclass(kind, FusedContent):
        return {"component_options": {c: {"backbone": backbone} for c in CONTENT}}
    if issubclass(kind, FeatureDetector):
        return {"backbone": backbone}
    return None


def check_backbone_applies(detector: str | None, backbone: str | None) -> None:
    """Refuse, before any training, an unknown backbone, or one asked of a named detector that reads none."""
    if backbone is None:
        return
    check_backbone(backbone)
    if detector is not None and backbone_options(detector, backbone) is None:
        raise ConfigError(f"detector {detector!r} reads no pretrained backbone, so backbone={backbone!r} would "
                          "change nothing; leave it out, or choose fused_content, feature_knn, feature_gaussian or "
                          "joint_knn")


def recommended_detector(run_dir: str | Path, device: str = "cpu", backbone: str | None = None) -> str:
    """The first detector of :data:`RECOMMENDED` that applies to the run's model (reading
    ``backbone`` where it reads one); a fallback from the first is said once, with the reason."""
    info = run_info(Run(run_dir, device).model, has_fit_data=True)
    reasons = {}
    for name in RECOMMENDED:
        reasons[name] = make_detector(name, backbone_options(name, backbone)).why_not(info)
        if reasons[name] is None:
            break
    else:  # nll applies to every model
        raise AssertionError(f"no recommended detector applies: {reasons}")
    if name != RECOMMENDED[0]:  # the command shows each distinct warning once (infra.console)
        log.warning(f"the recommended detector {RECOMMENDED[0]!r} does not apply ({reasons[RECOMMENDED[0]]}); "
                    f"using {name!r}")
    return name
