"""The detector a user gets without asking (:data:`RECOMMENDED`, :func:`recommended_detector`)."""

from __future__ import annotations

from pathlib import Path

from .scorer import run_info
from ..detectors import make_detector
from ..training.run_dir import Run


#: the detector a user gets without asking: the first of these that applies to the run.
#: ``fused`` holds far- and near-OOD evidence (Fashion-MNIST → MNIST, noise, constant images
#: 0.999–1.000 AUROC and rotated 90° 0.92 in the ood-suite); ``dose_plus`` where a latent
#: density cannot be had (a hierarchical VAE has no single q(z|x)); ``nll`` last.
RECOMMENDED = ("fused", "dose_plus", "nll")


def recommended_detector(run_dir: str | Path, device: str = "cpu") -> str:
    """The first detector of :data:`RECOMMENDED` that applies to the run's model."""
    info = run_info(Run(run_dir, device).model, has_fit_data=True)
    return next(name for name in RECOMMENDED if make_detector(name).why_not(info) is None)
