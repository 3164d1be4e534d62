"""``latent_gmm`` / ``latent_knn`` / ``latent_mahalanobis``: where an image lands in latent space.

Each image is summarised by the parameters of its posterior q(z|x) = N(μ, diag σ²),

    u(x) = (μ(x), log σ²(x)) ∈ R^{2Z},    t(x) = (u(x) − mean_fit) / sd_fit

(standardised per coordinate on the fit images, the ``latent`` feature), and the held-out
training images' t define what is typical:

    S(x) = −log Σ_c π_c N(t(x); m_c, Σ_c)        (``latent_gmm``: a density of the aggregate posterior)
    S(x) = ‖t(x) − t_(k)(x)‖₂                     (``latent_knn``: distance to the k-th nearest fit image)
    S(x) = (t(x) − m)ᵀ Σ⁻¹ (t(x) − m)             (``latent_mahalanobis``: one Gaussian)

- ``latent_gmm``: a full-covariance Gaussian mixture of the aggregate posterior q(z) =
  E_x q(z|x), seen through each image's posterior parameters (a density fitted to model
  statistics of held-out training images, as DoSE does with its five summary numbers,
  Morningstar et al. 2021). The number of components is chosen among ``components`` by
  the mean log-likelihood of a held-out fifth of the fit images (in-distribution data
  only), then the mixture is refitted on all of them.
- ``latent_knn``: Sun, Ming, Zhu & Li (ICML 2022), "Out-of-distribution detection with
  deep nearest neighbors": the distance to the k-th nearest training feature; k = ``k``,
  or by default the paper's ratio k = n/1000 (k = 50 for CIFAR-10's 50,000 images), at
  least 1. The paper L2-normalises its features first (t̄ = t / ‖t‖₂, ``normalise=True``):
  a classifier's feature norm is confounded with its confidence. A VAE's posterior norm
  is evidence instead (‖μ‖ and ‖σ‖ are LPath's statistics, and the prior fixes the scale),
  so by default the standardised t is used as it is (the measurement behind this default:
  docs/detectors.md).
- ``latent_mahalanobis``: the Mahalanobis distance of Lee, Lee, Lee & Shin (NeurIPS
  2018), "A simple unified framework for detecting out-of-distribution samples", with a
  single class (no labels): one Gaussian of the standardised latent parameters.

On a hierarchical VAE (``model.arch=hvae``) u(x) is every layer's bottom-up (μ_i, log σ²_i),
side by side (the ``latent`` feature; layer L's is its exact posterior, the lower ones the
encoder's half of the ladder VAE's merge), or with ``layers=[i, ...]`` only those layers'
(1 = the lowest): the higher layers hold the semantics (Havtorn et al. 2021), the lowest
one of the spatial HVAE alone has 8·H/4·W/4 numbers of mostly pixel statistics.
"""

from __future__ import annotations

import numpy as np

from ..training.config import ConfigError
from .base import DETECTORS, Detector, mahalanobis_fit, mahalanobis_score, standardise_fit

LATENT_KEYS = ("latent_mu", "latent_logvar")


def latent_keys(layers=None) -> tuple[str, ...]:
    """The feature outputs u(x) is made of: ``latent_mu, latent_logvar``, or for chosen layers
    of a hierarchical VAE ``layer{i}_mu, ..., layer{i}_logvar, ...``."""
    if layers is None:
        return LATENT_KEYS
    return (*(f"layer{i}_mu" for i in layers), *(f"layer{i}_logvar" for i in layers))


def latent_rows(features, layers=None) -> np.ndarray:
    """``[N, 2Z]``: each image's posterior mean and log-variance side by side (of ``layers``
    only, for a hierarchical VAE, when given)."""
    keys = latent_keys(layers)
    missing = [k for k in keys if k not in features]
    if missing:
        hint = ("the 'latent' feature gives them" if layers is None else
                "the 'latent' feature of a hierarchical VAE gives layer{i}_mu / layer{i}_logvar for i = 1 … L; "
                "layers applies to hierarchical runs only")
        raise KeyError(f"features {', '.join(missing)} are missing ({hint})")
    return np.concatenate([np.asarray(features[k], dtype=np.float64).reshape(len(features[k]), -1)
                           for k in keys], axis=1)


def check_layers(name: str, layers):
    """``layers`` as a sorted list of distinct layer numbers >= 1, or None (every layer)."""
    if layers is None:
        return None
    if (isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__") or not list(layers)
            or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in layers)):
        raise ConfigError(f"{name}: layers must be a non-empty list of layer numbers >= 1 (1 = the lowest) "
                          f"or None (every layer), got {layers!r}")
    return sorted(set(layers))


class LatentDetector(Detector):
    """Shared by the latent detectors: standardise ``u(x)`` on the fit images."""

    fits = True

    @property
    def needs(self):
        return {"latent": {}}

    def why_not(self, info):
        if self.options.get("layers") is not None and not info.get("hierarchical", False):
            return "option layers needs a hierarchical VAE (model.arch=hvae)"
        return super().why_not(info)

    def standardised(self, features, fitting: bool = False) -> np.ndarray:
        u = latent_rows(features, self.options.get("layers"))
        if fitting:
            self.mean, self.std = standardise_fit(u)
        return (u - self.mean) / self.std


@DETECTORS.register("latent_gmm")
class LatentGMM(LatentDetector):
    name = "latent_gmm"
    paper = "aggregate-posterior density; components chosen on held-out in-distribution images"

    def __init__(self, *, components: tuple | list = (1, 2, 4, 8, 16), seed: int = 0, layers: list | None = None):
        counts = list(components)
        if not counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ConfigError(f"latent_gmm: components must be a list of integers >= 1, got {components!r}")
        super().__init__(components=sorted(set(counts)), seed=seed, layers=check_layers("latent_gmm", layers))

    def _fit(self, features):
        t = self.standardised(features, fitting=True)
        self.n_components_, self.validation_ = choose_components(t, self.options["components"], self.options["seed"])
        self.mixture = gaussian_mixture(t, self.n_components_, self.options["seed"])
        return {"n_components": self.n_components_, "validation_log_lik": self.validation_}

    def _score(self, features):
        with one_blas_thread():
            return -self.mixture.score_samples(self.standardised(features))

    def frozen_options(self):
        return {**self.options, "components": [self.n_components_]}


def gaussian_mixture(t: np.ndarray, n_components: int, seed: int):
    """A full-covariance mixture fitted by EM from the better of two k-means starts (one start
    can split along the wrong axis; fixed seed: a refit is identical)."""
    from sklearn.mixture import GaussianMixture

    with one_blas_thread():
        return GaussianMixture(n_components=n_components, covariance_type="full", reg_covar=1e-4,
                               random_state=seed, max_iter=200, n_init=2).fit(t)


def one_blas_thread():
    """EM's small matrix products run much slower on two OpenBLAS threads than on one: the
    threads spin on work too small to share (docs/architecture.md, *Measured design choices*)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def choose_components(t: np.ndarray, candidates, seed: int) -> tuple[int, dict[int, float]]:
    """The component count with the highest mean log-likelihood on a held-out fifth of
    ``t`` (a fixed permutation), among the candidates that leave at least ``2·dim`` fit
    rows per component; ``{count: held-out mean log-likelihood}`` beside it. One candidate
    is chosen without that fit (``{}`` beside it): a refit with the full fit's count (``fused``'s
    folds) spent half its time on it."""
    if len(candidates) == 1:
        return int(candidates[0]), {}
    n, dim = t.shape
    order = np.random.default_rng(seed).permutation(n)
    held, train = t[order[: n // 5]], t[order[n // 5:]]
    usable = [c for c in candidates if len(train) >= 2 * dim * c] or [min(candidates)]
    scores = {int(c): float(gaussian_mixture(train, c, seed).score(held)) for c in usable}
    return max(scores, key=scores.get), scores


@DETECTORS.register("latent_knn")
class LatentKNN(LatentDetector):
    name = "latent_knn"
    paper = "Sun et al., ICML 2022 (deep nearest neighbors)"

    def __init__(self, *, k: int | None = None, normalise: bool = False, layers: list | None = None):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigError(f"latent_knn: k must be an integer >= 1 or None (n/1000), got {k!r}")
        super().__init__(k=k, normalise=bool(normalise), layers=check_layers("latent_knn", layers))

    def rows(self, features, fitting: bool = False) -> np.ndarray:
        t = self.standardised(features, fitting)
        if not self.options["normalise"]:
            return t
        return t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)

    def _fit(self, features):
        from sklearn.neighbors import NearestNeighbors

        rows = self.rows(features, fitting=True)
        self.k_ = self.options["k"] or max(1, round(len(rows) / 1000))
        if self.k_ > len(rows):
            raise ConfigError(f"latent_knn: k = {self.k_} but only {len(rows)} fit images")
        self.index = NearestNeighbors(n_neighbors=self.k_).fit(rows)
        return {"k": self.k_}

    def _score(self, features):
        distances, _ = self.index.kneighbors(self.rows(features))
        return distances[:, -1]


@DETECTORS.register("latent_mahalanobis")
class LatentMahalanobis(LatentDetector):
    name = "latent_mahalanobis"
    paper = "Lee et al., NeurIPS 2018 (one class, in latent space)"

    def __init__(self, *, layers: list | None = None):
        super().__init__(layers=check_layers("latent_mahalanobis", layers))

    def _fit(self, features):
        self.precision = mahalanobis_fit(self.standardised(features, fitting=True))

    def _score(self, features):
        return mahalanobis_score(self.standardised(features), self.precision)
