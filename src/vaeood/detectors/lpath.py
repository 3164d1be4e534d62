"""``lpath`` / ``lpath_copod`` / ``lpath_2m``: the likelihood path's statistics.

    u(x) = (log ‖x − x̂(x)‖₂, ‖μ_z(x)‖₂, ‖σ_z(x)‖₂)        x̂: mean of p(x | z = μ_z(x))
    S(x) = (u − m)ᵀ Σ⁻¹ (u − m)                             (``lpath``: Mahalanobis; m, Σ on the fit images)
    S(x) = COPOD(u)                                         (``lpath_copod``: pyod's COPOD, Li et al. 2020)

Huang, He & Lui (2024), "Inference, fast and slow: reinterpreting VAEs for OOD
detection" (the Likelihood Path principle): the likelihood is a single number in which
the encoder's and decoder's evidence can cancel; the statistics on the path to it —
the encoder's posterior mean and scale, the decoder's reconstruction error — keep it,
and a classical density estimator on these few numbers detects OOD inputs.

``lpath_2m`` is their two-model variant: the statistics u of the model and of a second
VAE (``second_run``) of very different latent size (one very wide, one very small:
the small latent's reconstruction error and the wide one's posterior norms carry
different evidence), concatenated (6 numbers), then Mahalanobis (or ``method="copod"``).
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector, stack, standardise_fit

LPATH_STATS = ("recon_log_l2", "mu_z_norm", "sigma_z_norm")


@DETECTORS.register("lpath")
class LPath(Detector):
    name = "lpath"
    fits = True
    paper = "Huang, He & Lui 2024 (Inference, fast and slow)"
    default_method = "mahalanobis"

    def __init__(self, *, method: str | None = None, stats: tuple | list | None = None):
        method = method or self.default_method
        if method not in ("mahalanobis", "copod"):
            raise ValueError(f"{self.name}: method must be 'mahalanobis' or 'copod', got {method!r}")
        super().__init__(method=method, stats=list(stats or LPATH_STATS))

    @property
    def needs(self):
        return {"reconstruction": {}, "posterior": {}}

    def columns(self) -> list[str]:
        return list(self.options["stats"])

    def _fit(self, features):
        x = stack(features, self.columns())
        self.mean, self.std = standardise_fit(x)
        t = (x - self.mean) / self.std
        if self.options["method"] == "copod":
            from pyod.models.copod import COPOD

            self.model = COPOD().fit(t)
            return
        cov = np.cov(t, rowvar=False).reshape(t.shape[1], t.shape[1])
        self.precision = np.linalg.pinv(cov + 1e-6 * np.eye(len(cov)))

    def _score(self, features):
        t = (stack(features, self.columns()) - self.mean) / self.std
        if self.options["method"] == "copod":
            # pyod's COPOD.decision_function recomputes its ECDFs (and skewness) over the fit
            # rows *and the rows scored with them*: a batch of 2,000 OOD images shifted the ECDF
            # towards itself and came out less outlying than the fit images (AUROC 0.25-0.3 on
            # every pair). One row at a time, each score depends on its image and the fit data only.
            return np.array([self.model.decision_function(row[None])[0] for row in t])
        d = t - 0.0  # standardised: the fit mean is 0
        return np.einsum("ni,ij,nj->n", d, self.precision, d)


@DETECTORS.register("lpath_copod")
class LPathCOPOD(LPath):
    """``lpath`` with COPOD (pyod) as the density estimator."""

    name = "lpath_copod"
    default_method = "copod"


@DETECTORS.register("lpath_2m")
class LPath2M(LPath):
    """``lpath`` on the statistics of two VAEs: this run and ``second_run``."""

    name = "lpath_2m"
    required = ("second_run",)

    def __init__(self, *, second_run=None, method: str | None = None, stats: tuple | list | None = None):
        super().__init__(method=method, stats=stats)
        self.options["second_run"] = str(second_run) if second_run is not None and not hasattr(second_run, "posterior") \
            else second_run

    @property
    def needs(self):
        other = self.options["second_run"]
        return {"reconstruction": {}, "posterior": {},
                "second_reconstruction": {"feature": "reconstruction", "run": other},
                "second_posterior": {"feature": "posterior", "run": other}}

    def columns(self) -> list[str]:
        stats = list(self.options["stats"])
        second = [f"second_reconstruction/{s}" if s.startswith("recon") else f"second_posterior/{s}" for s in stats]
        return stats + second
