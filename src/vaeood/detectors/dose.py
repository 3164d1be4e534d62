"""``dose`` / ``dose_svm``: density of states of the model's summary statistics.

    T(x) = (log p(x) [ELBO], rate KL(q‖p), distortion −E_q log p(x|z),
            posterior entropy H[q(z|x)], cross-entropy −E_q log p(z))
    t(x) = (T(x) − mean_fit) / sd_fit                (standardised on the fit images)
    S(x) = −Σ_i log q̂_i(t_i(x))                     (``dose``: a 1-D Gaussian KDE q̂_i per statistic)
    S(x) = −log q̂(t(x))                             (``dose`` with ``kde="joint"``: one 5-D KDE)
    S(x) = −f(t(x))                                  (``dose_svm``: one-class SVM decision f)

Morningstar, Ham, Gallagher, Lakshminarayanan, Alemi & Dillon (AISTATS 2021), "Density
of States Estimation for Out-of-Distribution Detection": the model's likelihood alone
is not a good test statistic, but the joint density of several of its summary
statistics, estimated non-parametrically on held-out training images, is. The KDE
treats the statistics as independent by default (a product of one-dimensional KDEs,
DoSE_KDE as we read the paper); ``kde="joint"`` fits one KDE on the joint statistics.
The five are far from independent (rate = cross-entropy − entropy, log p = −(rate +
distortion)), and on a Fashion-MNIST VAE the joint KDE separated MNIST worse (AUROC
0.76 against 0.89 for the product). The bandwidth is Scott's rule on the standardised
statistics (h = n^(−1/(d+4))), Silverman's, a number, or chosen by 5-fold
cross-validated likelihood (``bandwidth="cv"``); the SVM is RBF with ``gamma="scale"``
and ``nu``.
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector, stack, standardise_fit

DOSE_STATS = ("log_px_nats", "rate_nats", "distortion_nats", "posterior_entropy_nats", "prior_cross_entropy_nats")


@DETECTORS.register("dose")
class DoSE(Detector):
    name = "dose"
    fits = True
    paper = "Morningstar et al., AISTATS 2021"
    default_method = "kde"

    def __init__(self, *, method: str | None = None, stats: tuple | list | None = None,
                 bandwidth: str | float = "scott", kde: str = "independent", nu: float = 0.1):
        method = method or self.default_method
        if kde not in ("independent", "joint"):
            raise ValueError(f"dose: kde must be 'independent' or 'joint', got {kde!r}")
        if method not in ("kde", "svm"):
            raise ValueError(f"dose: method must be 'kde' or 'svm', got {method!r}")
        if not (isinstance(bandwidth, (int, float)) and bandwidth > 0 or bandwidth in ("scott", "silverman", "cv")):
            raise ValueError("dose: bandwidth must be 'scott', 'silverman', 'cv' or a positive number, "
                             f"got {bandwidth!r}")
        super().__init__(method=method, stats=list(stats or DOSE_STATS), bandwidth=bandwidth, nu=nu,
                         **({"kde": kde} if method == "kde" else {}))

    @property
    def needs(self):
        # the ELBO's rate/distortion split, with one sample (the paper's statistics)
        return {"log_px": {"estimator": "elbo", "estimator_options": {}}, "posterior": {}}

    def stat_names(self, features) -> list[str]:
        """The statistics T(x) is made of (the ``stats`` option; a subclass may choose them
        from the fit features)."""
        return list(self.options["stats"])

    def _fit(self, features):
        self.stats_ = self.stat_names(features)
        x = stack(features, self.stats_)
        self.mean, self.std = standardise_fit(x)
        t = (x - self.mean) / self.std
        if self.options["method"] == "svm":
            from sklearn.svm import OneClassSVM

            self.model = OneClassSVM(kernel="rbf", gamma="scale", nu=self.options["nu"]).fit(t)
            return
        columns = [t] if self.options["kde"] == "joint" else [t[:, [i]] for i in range(t.shape[1])]
        self.kdes = [_kde(c, self.options["bandwidth"]) for c in columns]
        self.bandwidth_ = [float(k.bandwidth) for k in self.kdes]

    def _score(self, features):
        t = (stack(features, self.stats_) - self.mean) / self.std
        if self.options["method"] == "svm":
            return -self.model.decision_function(t)
        if self.options["kde"] == "joint":
            return -self.kdes[0].score_samples(t)
        return -sum(k.score_samples(t[:, [i]]) for i, k in enumerate(self.kdes))


def _kde(t: np.ndarray, bandwidth):
    """A Gaussian KDE on standardised data ``t [n, d]`` with the bandwidth rule asked for."""
    from sklearn.neighbors import KernelDensity

    n, d = t.shape
    if bandwidth == "cv":
        from sklearn.model_selection import GridSearchCV

        grid = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.5, 0.5, 12)}, cv=5)
        bw = float(grid.fit(t).best_params_["bandwidth"])
    elif bandwidth == "scott":
        bw = n ** (-1.0 / (d + 4))
    elif bandwidth == "silverman":
        bw = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
    else:
        bw = float(bandwidth)
    return KernelDensity(kernel="gaussian", bandwidth=bw).fit(t)


@DETECTORS.register("dose_svm")
class DoSESVM(DoSE):
    """``dose`` with a one-class SVM instead of the KDE."""

    name = "dose_svm"
    default_method = "svm"
