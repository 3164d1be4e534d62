"""The detector a user gets without asking (:data:`RECOMMENDED`, :func:`recommended_detector`)."""

from __future__ import annotations

import logging
from pathlib import Path

from .scorer import run_info
from ..detectors import make_detector
from ..training.run_dir import Run

log = logging.getLogger(__name__)

#: the detector a user gets without asking: the first of these that applies to the run.
#: ``fused_content`` sees pixels (``fused``: what is broken) and content (``feature_knn`` on an
#: ImageNet-pretrained backbone: what is different); ``fused`` where the backbone is not
#: installed (said once); ``dose_plus`` where a latent density cannot be had (a hierarchical
#: VAE has no single q(z|x)); ``nll`` last.
RECOMMENDED = ("fused_content", "fused", "dose_plus", "nll")


def recommended_detector(run_dir: str | Path, device: str = "cpu") -> str:
    """The first detector of :data:`RECOMMENDED` that applies to the run's model; a fallback
    from the first is said once, with the reason."""
    info = run_info(Run(run_dir, device).model, has_fit_data=True)
    reasons = {}
    for name in RECOMMENDED:
        reasons[name] = make_detector(name).why_not(info)
        if reasons[name] is None:
            break
    else:  # nll applies to every model
        raise AssertionError(f"no recommended detector applies: {reasons}")
    if name != RECOMMENDED[0]:  # the command shows each distinct warning once (infra.console)
        log.warning(f"the recommended detector {RECOMMENDED[0]!r} does not apply ({reasons[RECOMMENDED[0]]}); "
                    f"using {name!r}")
    return name
