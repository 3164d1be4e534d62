"""``typicality``: distance of −log p(x) from the model's entropy.

    Ĥ = −(1/N) Σ_{n ∈ fit} log p(x_n)          (held-out training images)
    S(x) = | −log p(x) − Ĥ |                   (one image)

Nalisnick, Matsukawa, Teh & Lakshminarayanan (2019b), "Detecting out-of-distribution
inputs to deep generative models using typicality": samples of a high-dimensional
model lie in its typical set, where −log p(x) ≈ H; OOD images can be *more* likely
than typical ones, and a two-sided test catches them. The paper's test is on a batch
of M images: the statistic |−(1/M) Σ_m log p(x_m) − Ĥ| against a threshold ε_M set by
bootstrap over held-out training batches of size M; :func:`batch_test_power` gives its
detection power at M = 1, 2, 5, 10.
"""

from __future__ import annotations

import numpy as np

from .base import DETECTORS, Detector, estimate_need


@DETECTORS.register("typicality")
class Typicality(Detector):
    name = "typicality"
    fits = True
    paper = "Nalisnick et al. 2019b (arXiv:1906.02994)"

    def __init__(self, *, estimator: str = "elbo", estimator_options: dict | None = None):
        super().__init__(estimator=estimator, estimator_options=dict(estimator_options or {}))
        self.entropy_nats: float | None = None

    @property
    def needs(self):
        return {"log_px": estimate_need(self.options["estimator"], self.options["estimator_options"])}

    def _fit(self, features):
        self.entropy_nats = float(np.mean(-np.asarray(features["log_px_nats"], dtype=np.float64)))

    def _score(self, features):
        return np.abs(-np.asarray(features["log_px_nats"], dtype=np.float64) - self.entropy_nats)


def batch_test_power(fit_nll: np.ndarray, in_nll: np.ndarray, ood_nll: np.ndarray, ms=(1, 2, 5, 10), *,
                     alpha: float = 0.01, n_bootstrap: int = 5000, n_batches: int = 2000, seed: int = 0) -> dict:
    """The typicality test of Nalisnick et al. (2019b) on batches of M images.

    The fit images (−log p(x), nats) are split in two halves: the first gives Ĥ, the
    second the bootstrap: ``n_bootstrap`` batches of M drawn with replacement give the
    statistic's null distribution, and ε_M is its (1 − alpha) quantile. Then
    ``n_batches`` batches of M are drawn (with replacement) from the OOD images and from
    the in-distribution test images. Returns, per M, ``{"epsilon_nats", "power"`` (the
    fraction of OOD batches flagged), ``"false_alarm"`` (of in-distribution test batches,
    ≈ alpha when the test is calibrated)``}``.
    """
    rng = np.random.default_rng(seed)
    fit_nll = np.asarray(fit_nll, dtype=np.float64)
    half = len(fit_nll) // 2
    if half < 2:
        raise ValueError(f"the typicality batch test needs at least 4 fit images, got {len(fit_nll)}")
    entropy = fit_nll[:half].mean()
    boot = fit_nll[half:]

    def stat(values: np.ndarray, m: int, n: int) -> np.ndarray:
        idx = rng.integers(0, len(values), size=(n, m))
        return np.abs(values[idx].mean(axis=1) - entropy)

    out = {}
    for m in ms:
        eps = float(np.quantile(stat(boot, m, n_bootstrap), 1.0 - alpha))
        out[int(m)] = {"epsilon_nats": eps,
                       "power": float((stat(np.asarray(ood_nll, np.float64), m, n_batches) > eps).mean()),
                       "false_alarm": float((stat(np.asarray(in_nll, np.float64), m, n_batches) > eps).mean())}
    return {"alpha": alpha, "entropy_nats": float(entropy), "n_bootstrap": n_bootstrap, "n_batches": n_batches,
            "by_m": out}
