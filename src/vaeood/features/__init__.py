"""Per-image features (see :mod:`vaeood.features.core`): ``FEATURES``, the cached
:func:`compute_feature` / :func:`compute_features` and the uncached :func:`features_of`."""

from .cache import FEATURES_DIR, feature_meta, shared_feature_cache
from .core import (FEATURES, ShapeMismatchError, compute_feature, features_of, images_digest, normalise_needs,
                   pixel_stats)
from . import backbone, compression, inference, layers, model  # noqa: F401  (registers the built-in features)
from .model import is_normalised
from .api import compute_features, needs_features

__all__ = ["FEATURES", "FEATURES_DIR", "ShapeMismatchError", "compute_feature", "compute_features", "feature_meta",
           "features_of", "needs_features", "images_digest", "normalise_needs", "pixel_stats", "is_normalised",
           "shared_feature_cache"]
