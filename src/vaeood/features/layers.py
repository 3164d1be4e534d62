r"""Per-layer statistics of a hierarchical VAE (:class:`vaeood.models.hvae.HierarchicalVAE`):
the evidence each latent layer holds about an image, for detectors that read more than one
summary number (``dose_layers``, the latent detectors).

For a ladder VAE (Sønderby, Raiko, Maaløe, Sønderby & Winther 2016, "Ladder Variational
Autoencoders") with layers ``z_1`` (lowest) … ``z_L`` the ELBO splits layer by layer,

.. math::
    \mathrm{ELBO}(x) = \mathbb{E}_q \log p(x \mid z_1) - \sum_{i=1}^{L} R_i(x), \qquad
    R_i(x) = \mathbb{E}_{q(z_{>i}|x)}\, \mathrm{KL}\big(q(z_i \mid z_{i+1}, x) \,\|\, p(z_i \mid z_{i+1})\big),

(``R_L = KL(q(z_L|x) ‖ N(0, I))``): ``R_i`` is how many nats layer ``i`` spends on the image.
Havtorn, Frellsen, Hauberg & Maaløe (ICML 2021), "Hierarchical VAEs Know What They Don't
Know", show that the evidence for "out of distribution" sits in the higher layers while the
lowest ones encode pixel statistics every natural image shares; the per-layer rates and
``LLR>k`` (:mod:`vaeood.inference.llr`) separate the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..inference.estimators import is_hierarchical
from ..inference.gaussian import check_positive_int
from .core import FEATURES

__all__ = ["layer_stats", "bottom_up"]


def bottom_up(model, x: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``model.encode(x)``, checked to be one ``(mu, logvar)`` pair ``[B, Z_i]`` per layer."""
    if not is_hierarchical(model) or not hasattr(model, "num_layers"):
        raise TypeError(f"per-layer statistics need a hierarchical VAE (model.encode, model.log_weight_terms, "
                        f"model.num_layers); {type(model).__name__} has a single latent layer")
    encoded = model.encode(x)
    if not isinstance(encoded, (list, tuple)) or len(encoded) != int(model.num_layers):
        raise ValueError(f"model.encode(x) must return one (mu, logvar) pair per layer ({model.num_layers})")
    return list(encoded)


@FEATURES.register("layer_stats")
def layer_stats(model, x: Tensor, *, generator: torch.Generator | None = None, samples: int = 1
                ) -> dict[str, Tensor]:
    r"""Per-layer statistics of a hierarchical VAE, for i = 1 (lowest) … L:

    * ``rate_layer{i}_nats`` ``[B]``: ``R_i``, the analytic
      ``KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1}))`` given the parents sampled on ``samples``
      paths (:meth:`~vaeood.models.hvae.HierarchicalVAE.log_weight_terms`' ``kl``, averaged
      over the paths; the top layer's is exact). Their sum is the KL term of
      ``estimators.elbo(model, x, samples=samples)`` with the same noise, bit for bit up to
      summation order, so ``rate_layer{i}_nats`` equals that estimator's ``rate_nats_layer{i}``;
    * ``layer{i}_mu``, ``layer{i}_logvar`` ``[B, Z_i]``: the deterministic bottom-up
      parameters ``(mu_q,i, log sigma²_q,i)(x)`` of :meth:`~vaeood.models.hvae.HierarchicalVAE.encode`.
      Layer L's is its exact posterior q(z_L | x); the lower ones are the encoder's half of
      the LVAE precision-weighted merge with the conditional prior (the posterior of
      ``z_i`` also depends on the sampled ``z_{i+1}``, so it has no deterministic mean).

    Noise: ``samples`` draws per image from ``generator`` (the image's own stream, as every
    feature draws it), the same draws as ``log_px`` by ``elbo`` and ``llr`` with as many
    samples: the rates are taken on the very path whose ELBO those features report.

    Sønderby et al. (NeurIPS 2016), ladder VAE; Havtorn et al. (ICML 2021), per-layer evidence.
    """
    samples = check_positive_int("samples", samples)
    encoded = bottom_up(model, x)
    eps = model.draw_noise(samples, len(x), encoded[0][0], generator)
    terms = model.log_weight_terms(x, eps, encoded=encoded)
    out: dict[str, Tensor] = {}
    for i, kl in enumerate(terms["kl"]):
        out[f"rate_layer{i + 1}_nats"] = (kl if kl.dim() == 1 else kl.mean(dim=0)).double()
    for i, (mu, logvar) in enumerate(encoded):
        out[f"layer{i + 1}_mu"] = mu.double()
        out[f"layer{i + 1}_logvar"] = logvar.double()
    return out
