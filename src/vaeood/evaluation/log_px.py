"""``log_px``: the estimate of log p(x) of every image of a dataset split under a trained
run — the ``log_px`` feature (:mod:`vaeood.features`), cached in ``RUN/features/`` and
reused while the checkpoint and the images are unchanged.

Kept as the documented entry point (``vaeood.log_px``) and for the experiments; detectors
reach the same cached arrays through :func:`vaeood.features.compute_features`.
``score`` and ``score_meta`` are this module's old names (``vaeood.score``), kept for one
release (0.2) with a :class:`DeprecationWarning`: a log p(x) estimate is not a detector
score (see the vocabulary in :mod:`vaeood`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..inference.estimators import ESTIMATORS
from ..features.cache import feature_meta
from ..features.core import ShapeMismatchError, compute_feature, pixel_stats
from ..infra.deprecated import deprecated_alias, renamed_keywords
from ..infra.registry import check_options

__all__ = ["log_px", "log_px_meta", "score", "score_meta", "ShapeMismatchError", "pixel_stats"]


@renamed_keywords(fit="conform")  # its name until 0.2
def log_px(run_dir: str | Path, dataset: str, split: str = "test", *, estimator: str = "elbo",
           estimator_options: dict | None = None, data_dir: str | None = None, limit: int | None = None,
           batch_size: int | None = None, device: str = "cpu", seed: int = 0, allow_sample: bool = False,
           reuse: bool = True, progress: bool | None = None, conform: str | None = None,
           skip_bad: bool = False) -> dict[str, np.ndarray]:
    """Estimate log p(x) for every image of ``dataset/split`` (the first ``limit``) with the run's model.

    Images of another shape than the model's are refused (:class:`ShapeMismatchError`)
    unless ``conform`` names how to make them fit: ``"pad"`` (zero-pad centred) or
    ``"resize"`` (bilinear), with grey ↔ RGB converted (see :mod:`vaeood.data.conform`);
    the conform applied is recorded in the saved metadata (``meta["conform"]``). By default a
    run's recorded transform (``data.conform``) applies. ``skip_bad``: skip a folder's unusable
    files (named in the log) instead of refusing it.

    Returns arrays of shape ``[N]``: ``log_px_nats`` and the estimator's diagnostics,
    ``bpd`` when the decoder is a normalised pmf over 8-bit values, and ``labels``, with
    ``meta`` (read it with :func:`log_px_meta`). Saved to ``RUN/features/`` and returned from
    there when the same request is repeated on the same checkpoint and the same images.
    """
    fn = ESTIMATORS.get(estimator)
    options = check_options(fn, estimator_options or {}, "estimator", estimator, ("model", "x", "generator"))
    return compute_feature(run_dir, dataset, split, "log_px", {"estimator": estimator, "estimator_options": options},
                           data_dir=data_dir, limit=limit, batch_size=batch_size, device=device, seed=seed,
                           conform=conform, allow_sample=allow_sample, reuse=reuse, progress=progress,
                           skip_bad=skip_bad)


def log_px_meta(estimates: dict[str, np.ndarray]) -> dict:
    """The metadata saved with the estimates (dataset, source, estimator, options, the
    checkpoint's and the images' SHA-256, conform, pixel statistics, ...)."""
    return feature_meta(estimates)


score = deprecated_alias(log_px, "score")
score_meta = deprecated_alias(log_px_meta, "score_meta", "vaeood.evaluation.log_px")
