"""``lpath`` / ``lpath_copod`` / ``lpath_2m``: the likelihood path's statistics.

    u(x) = (log ‖x − x̂(x)‖₂, ‖μ_z(x)‖₂, ‖σ_z(x)‖₂)        x̂: mean of p(x | z = μ_z(x))
    S(x) = (u − m)ᵀ Σ⁻¹ (u − m)                             (``lpath``: Mahalanobis; m, Σ on the fit images)
    S(x) = COPOD(u)                                         (``lpath_copod``: COPOD, Li et al. 2020)

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

from .base import DETECTORS, Detector, ModelSpec, mahalanobis_fit, mahalanobis_score, stack, standardise_fit

LPATH_STATS = ("recon_log_l2", "mu_z_norm", "sigma_z_norm")


def copod_scores(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    r"""COPOD (Li et al. 2020) of each row of ``x`` [m, d] against the rows of ``train``
    [n, d], each row scored as if alone: with Z = train ∪ {x_i} (N = n + 1 rows),

        U_l = −log F̂_Z(x_id),   F̂_Z(v) = #{z ∈ Z_·d : z ≤ v} / N   (left tail)
        U_r = −log F̂_{−Z}(−x_id) = −log #{z ≥ x_id} / N           (right tail)
        U_s = U_l if skew(Z_·d) < 0, U_r if > 0, U_l + U_r if 0
        S(x_i) = Σ_d max(U_s, (U_l + U_r) / 2).

    This is pyod's ``COPOD().fit(train).decision_function(x_i[None])`` row by row (a test
    checks it), computed for all rows at once: pyod's own batch call puts every scored
    row into the ECDFs and skewness, so a batch of OOD images shifts them towards itself,
    and its row-by-row call is slow (docs/architecture.md, *Measured design choices*).
    The skewness of Z uses the fit columns' central moments, shifted to Z's mean."""
    n = len(train)
    ranked = np.sort(train, axis=0)
    le = np.stack([np.searchsorted(ranked[:, j], x[:, j], side="right") for j in range(x.shape[1])], axis=1)
    ge = n - np.stack([np.searchsorted(ranked[:, j], x[:, j], side="left") for j in range(x.shape[1])], axis=1)
    u_l, u_r = -np.log((le + 1) / (n + 1)), -np.log((ge + 1) / (n + 1))
    mu = train.mean(axis=0)
    c2, c3 = ((train - mu) ** 2).sum(axis=0), ((train - mu) ** 3).sum(axis=0)
    delta = (x - mu) / (n + 1)  # mean(Z) − mean(train), per row
    m2 = (c2 + n * delta**2 + (x - mu - delta) ** 2) / (n + 1)
    m3 = (c3 - 3 * delta * c2 - n * delta**3 + (x - mu - delta) ** 3) / (n + 1)
    # scipy.stats.skew's test for a constant column (its skewness is then nan → 0 in pyod)
    constant = m2 <= (np.finfo(np.float64).resolution * (mu + delta)) ** 2
    sign = np.where(constant, 0.0, np.sign(m3))
    u_skew = u_l * -np.sign(sign - 1) + u_r * np.sign(sign + 1)
    return np.maximum(u_skew, (u_l + u_r) / 2).sum(axis=1)


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
            self.fit_rows = t
            return
        self.precision = mahalanobis_fit(t)

    def _score(self, features):
        t = (stack(features, self.columns()) - self.mean) / self.std
        if self.options["method"] == "copod":
            return copod_scores(self.fit_rows, t)  # each image against the fit images alone
        return mahalanobis_score(t, self.precision)  # standardised: the fit mean is 0


@DETECTORS.register("lpath_copod")
class LPathCOPOD(LPath):
    """``lpath`` with COPOD as the density estimator."""

    name = "lpath_copod"
    default_method = "copod"


@DETECTORS.register("lpath_2m")
class LPath2M(LPath):
    """``lpath`` on the statistics of two VAEs: this run and ``second_run``."""

    name = "lpath_2m"
    required = ("second_run",)
    # one very wide and one very small latent (Huang et al. 2024): this run wide, the second small
    runs_on = ModelSpec("wide", {"model.latent_dim": "128"})
    companions = {"second_run": ModelSpec("small", {"model.latent_dim": "2"})}

    def companion_warnings(self, option, companion, run):
        """Huang et al. pair two VAEs of very different latent sizes: equal ones are said, not refused."""
        if companion.model.latent_dim == run.model.latent_dim and companion.model.arch == run.model.arch:
            return [f"second_run has the run's latent size ({run.model.latent_dim}); LPath pairs a very wide "
                    "and a very small latent (Huang et al. 2024), so the two models' statistics may add little"]
        return []

    def __init__(self, *, second_run=None, method: str | None = None, stats: tuple | list | None = None):
        super().__init__(method=method, stats=stats)
        is_path = second_run is not None and not hasattr(second_run, "posterior")  # a run dir, not a model
        self.options["second_run"] = str(second_run) if is_path else second_run

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
