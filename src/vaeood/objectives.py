"""Training objectives: a name → loss function registry.

Each objective maps ``(model, x, **options)`` to a dict holding the scalar ``loss`` to
minimise (mean over the batch, nats per image) and the per-batch means worth logging.
"""

from __future__ import annotations

from torch import Tensor

from .estimators import elbo, iwae
from .registry import Registry

OBJECTIVES = Registry("objective")


@OBJECTIVES.register("elbo")
def elbo_objective(model, x: Tensor, samples: int = 1) -> dict[str, Tensor]:
    """Negative ELBO, −E_q[log p(x|z)] + KL(q(z|x) ‖ p(z)) (Kingma & Welling 2014).

    Minimising it fits q by the *reverse* KL(q ‖ p(z|x)), which is mode-seeking and
    under-estimates posterior variance. Reparameterised single-sample gradient,
    analytic Gaussian KL.
    """
    out = elbo(model, x, samples=samples)
    return {"loss": -out["log_px_nats"].mean(),
            "distortion_nats": out["distortion_nats"].mean().detach(),
            "rate_nats": out["rate_nats"].mean().detach()}


@OBJECTIVES.register("iwae")
def iwae_objective(model, x: Tensor, k: int = 5) -> dict[str, Tensor]:
    """Negative IWAE bound with K samples (Burda et al. 2016): −log (1/K) Σ_k w_k.

    Tighter than the ELBO for K > 1; its encoder gradient's signal-to-noise ratio
    falls as K grows (Rainforth et al. 2018), so K stays small in training.
    """
    out = iwae(model, x, k=k, chunk_size=k)
    return {"loss": -out["log_px_nats"].mean(), "ess": out["ess"].mean().detach()}
