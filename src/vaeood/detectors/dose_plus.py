"""``dose_plus``: DoSE's density on the evidence the other detectors use.

    T(x) = (log p(x) [ELBO], L_PNG(x) / D, log ‖x − x̂(x)‖₂)
    t(x) = (T(x) − mean_fit) / sd_fit                (standardised on the fit images)
    S(x) = −log q̂(t(x))                             (one joint 3-D Gaussian KDE q̂, Scott's bandwidth)

The density-of-states detector of Morningstar et al. (AISTATS 2021), "Density of States
Estimation for Out-of-Distribution Detection", on three statistics taken from the
detectors that work on their own: the likelihood, the image's lossless PNG code length
in bits/dim (the complexity of Serrà et al., ICLR 2020) and the log reconstruction error
at the posterior mean (the decoder statistic of LPath, Huang et al. 2024). ``complexity``
fixes the likelihood and the code length to one linear combination, and ``lpath`` ignores
both; a density of the three lets the held-out training images say which combination is
typical (how it compares with ``dose`` on the paper's five ELBO/posterior statistics, measured:
docs/detectors.md). ``stats`` takes any outputs of the features ``log_px`` (ELBO),
``posterior``, ``reconstruction`` and ``compressed`` (PNG).
"""

from __future__ import annotations

from .base import DETECTORS
from .dose import DoSE

DOSE_PLUS_STATS = ("log_px_nats", "png_bpd", "recon_log_l2")


@DETECTORS.register("dose_plus")
class DoSEPlus(DoSE):
    name = "dose_plus"
    paper = "Morningstar et al., AISTATS 2021; statistics of Serrà et al. 2020 and Huang et al. 2024"

    def __init__(self, *, method: str | None = None, stats: tuple | list | None = None,
                 bandwidth: str | float = "scott", kde: str = "joint", nu: float = 0.1):
        # one joint KDE, not dose's default product of 1-D ones: what separates is where an
        # image lies relative to the joint typical set of its likelihood and its code length,
        # which are strongly correlated on in-distribution images
        super().__init__(method=method, stats=stats or DOSE_PLUS_STATS, bandwidth=bandwidth, kde=kde, nu=nu)

    @property
    def needs(self):
        return {"log_px": {"estimator": "elbo", "estimator_options": {}}, "posterior": {}, "reconstruction": {},
                "compressed": {"codec": "png"}}
