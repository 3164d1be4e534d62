"""OOD detectors, one per module, each registered by name in ``DETECTORS`` (see
:mod:`vaeood.detectors.base` for the protocol): ``nll``, ``bpd``, ``complexity``,
``complexity_jxl``, ``likelihood_ratio``, ``typicality``, ``dose``, ``dose_svm``, ``dose_layers``,
``lpath``, ``lpath_copod``, ``lpath_2m``, ``dose_plus``, ``likelihood_regret``, ``llr``, ``latent_gmm``,
``latent_knn``, ``latent_mahalanobis``, ``fused`` (the VAE's evidence), ``feature_knn``,
``feature_energy`` (with class labels) and ``feature_gaussian`` (a pretrained backbone's
features), ``feature_vae_nll``, ``feature_vae_typicality``, ``feature_vae_dose`` and
``feature_vae_latent`` (a VAE of those features, to measure with), ``fused_content`` (pixels and
content: the default to pick) and ``joint_knn`` (one kNN density over both views). Scores:
higher = more out-of-distribution."""

from .base import (DETECTORS, Detector, FitDataError, ModelSpec, check_fit_features, detector_names, make_detector,
                   per_detector_options)
from . import (bpd, complexity, dose, dose_layers, dose_plus, feature_energy, feature_gaussian,  # noqa: F401
               feature_knn, feature_vae, fused, fused_content, joint_knn, latent, likelihood_ratio, llr, lpath, nll,
               regret, typicality)
from .typicality import batch_test_power

__all__ = ["DETECTORS", "Detector", "FitDataError", "ModelSpec", "check_fit_features", "make_detector",
           "batch_test_power",
           "detector_names", "per_detector_options"]
