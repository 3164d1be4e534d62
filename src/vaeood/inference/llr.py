r"""The bounds ``L>k`` and the likelihood ratio ``LLR>k`` of Havtorn, Frellsen, Hauberg &
Maaløe (ICML 2021), "Hierarchical VAEs Know What They Don't Know".

For a hierarchical VAE with latent layers ``z_1`` (lowest) … ``z_L`` and top-down inference
(:class:`vaeood.models.hvae.HierarchicalVAE`), ``L>k`` is the bound obtained when the ``k``
lowest layers are drawn from the conditional prior instead of the posterior:

.. math::
    \mathcal{L}^{>k}(x) = \mathbb{E}_{q(z_{>k}|x)\, p(z_{\le k}|z_{>k})}
        \Big[\log \frac{p(x|z_1)\, p(z_{>k})}{q(z_{>k}|x)}\Big] \le \log p(x),

the ELBO of the proposal ``q(z_{>k}|x) p(z_{≤k}|z_{>k})`` (a lower bound because, with
top-down inference, ``q(z_{>k}|x)`` does not involve the lower layers). ``L>0`` is the ELBO.
The lowest layers model the low-level pixel statistics that any natural image shares;
``L>k`` asks how well the *higher*, semantic layers alone explain ``x``, and

.. math:: \mathrm{LLR}^{>k}(x) = \mathcal{L}(x) - \mathcal{L}^{>k}(x)

(the ELBO minus ``L>k``) cancels the shared low-level part; higher means more
out-of-distribution (their code scores ``elbo − elbo_k`` with OOD as the positive class).
Reported: HVAE Fashion-MNIST→MNIST AUROC 0.98 with LLR>1; CIFAR-10→SVHN 0.81 with LLR>2.

All bounds of one call share their random numbers: the noise of each layer is drawn once
per sample and used for the posterior draw (layers above k) or the prior draw (layers at
or below k), so ``LLR>k`` measures the effect of swapping the lower posteriors for the
priors, not sampling noise. With ``samples = S > 1`` each bound is its importance-weighted
version ``log (1/S) Σ_s w_s`` (Havtorn et al.'s ``iw_samples_elbo``/``iw_samples_Lk``), which
is tighter; with ``S = 1`` it is the single-sample ELBO with Monte Carlo KL.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .estimators import is_hierarchical
from .gaussian import check_positive_int

__all__ = ["llr_bounds"]


def llr_bounds(model, x: Tensor, *, generator: torch.Generator | None = None, samples: int = 1,
               prior_mean: bool = False) -> dict[str, Tensor]:
    r"""Per-image ``L>k`` for k = 0 … L−1 and ``LLR>k = ELBO − L>k``, in nats (each ``[B]``).

    ``model``: a hierarchical VAE (the ``log_weight_terms`` protocol of
    :mod:`vaeood.inference.estimators`, with ``num_layers``); ``x``: uint8 ``[B, C, H, W]``;
    ``samples``: S importance samples per bound (see the module docstring);
    ``prior_mean``: set the k lowest layers to the conditional prior's mean instead of
    sampling them (what Havtorn et al.'s code does, ``use_mode=decode_from_p``; the result
    is then not a bound).

    Returns ``elbo_nats`` (= ``L>0``), ``l_gt_{k}_nats`` and ``llr_gt_{k}_nats`` for
    k = 1 … L−1. Noise comes from ``generator`` (one ``[B, Z_i]`` draw per layer and sample
    index, as the estimators draw it), so for a fixed seed ``elbo_nats`` equals
    ``estimators.iwae(model, x, k=samples)["log_px_nats"]`` (and for ``samples = 1``
    ``estimators.elbo(model, x, kl="mc")["log_px_nats"]``, bit for bit). Differentiable; wrap it in
    ``torch.no_grad()`` for evaluation.
    """
    samples = check_positive_int("samples", samples)
    if not is_hierarchical(model) or not hasattr(model, "num_layers"):
        raise TypeError(f"llr_bounds needs a hierarchical VAE (model.log_weight_terms, model.num_layers); "
                        f"{type(model).__name__} has a single latent layer, where L>k is not defined")
    layers = int(model.num_layers)
    encoded = model.encode(x)
    like = encoded[0][0] if isinstance(encoded, (list, tuple)) else encoded
    eps = model.draw_noise(samples, len(x), like, generator)
    out: dict[str, Tensor] = {}
    bounds = []
    for k in range(layers):
        terms = model.log_weight_terms(x, eps, encoded=encoded, from_prior=k, prior_mean=prior_mean)
        # the layers drawn from the prior contribute exact zeros; summed as the estimators sum
        log_w = terms["log_likelihood"] - sum(terms["log_ratio"])
        bounds.append(torch.logsumexp(log_w, dim=0) - math.log(samples))
    out["elbo_nats"] = bounds[0]
    for k in range(1, layers):
        out[f"l_gt_{k}_nats"] = bounds[k]
    for k in range(1, layers):
        out[f"llr_gt_{k}_nats"] = bounds[0] - bounds[k]
    return out
