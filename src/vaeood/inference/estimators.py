r"""Per-image estimates of log p(x), in nats, from a VAE.

Every estimator is a function ``f(model, x, **options) -> dict[str, Tensor]`` registered
in ``ESTIMATORS``; every value has shape ``[B]`` (one number per image, reductions happen
at the caller) and the key ``"log_px_nats"`` holds the estimate of log p(x).

The model is duck-typed; it must provide

* ``model.posterior(x) -> (mu, logvar)``, each ``[B, Z]``: the diagonal Gaussian
  q(z|x) = N(mu, diag(exp(logvar)));
* ``model.log_likelihood(x, z) -> [S, B]`` for ``z`` of shape ``[S, B, Z]``:
  log p(x|z_{s,b}) in nats for image ``b``;
* ``model.log_prior(z) -> [S, B]`` for ``z`` of shape ``[S, B, Z]``: log p(z) in nats;
* optionally ``model.elements_per_sample`` (int): how many tensor elements one
  (sample, image) pair materialises when decoded, hidden layers included, used by
  ``iwae`` to bound memory (default ``Z + x[0].numel()``, which counts the output alone).

Hierarchical models (several latent layers, e.g. :class:`vaeood.models.hvae.HierarchicalVAE`)
provide instead a small protocol, on which ``elbo`` and ``iwae`` dispatch (``hasattr(model,
"log_weight_terms")``):

* ``model.encode(x)``: whatever the model needs to reuse across sample chunks (one pass of
  the encoder per image);
* ``model.draw_noise(S, B, like, generator) -> list`` of per-layer noise ``[S, B, Z_i]``,
  drawn per sample index (so chunking does not change a sample); ``generator`` may be a
  torch generator, None, or an :class:`vaeood.inference.noise.ImageNoise` (what the feature layer
  passes: draw from it with ``generator.normal(S, width, like)``, as
  :meth:`vaeood.models.hvae.HierarchicalVAE.draw_noise` does);
* ``model.log_weight_terms(x, eps, encoded=...) -> {"log_likelihood": [S, B], "log_ratio":
  [L × [S, B]], "kl": [L × ([B] or [S, B])]}``: log p(x|z), per layer
  ``log q(z_i|·) − log p(z_i|·)`` at the samples, and per layer the analytic KL given the
  sampled parents; ``log w = log_likelihood − Σ_i log_ratio_i``.

Their outputs add the rate per layer, ``rate_nats_layer{i}`` (i = 1 the lowest layer). A
one-layer model on a VAE's modules gives the VAE's numbers (bit for bit for the analytic
ELBO, to rounding for the MC ones: the same noise, the terms summed in another order).

Estimators neither call ``.backward`` nor change grad mode or train/eval mode: wrap them
in ``torch.no_grad()`` (and ``model.eval()``) for evaluation; ``elbo`` is differentiable
and serves as the training objective (``-elbo(model, x)["log_px_nats"].mean()``).

Randomness: the noise is drawn from ``generator`` (or torch's default generator) one
``[B, Z]`` draw per sample index, in order. So for a fixed seed the k-th sample of an
image does not depend on how the K samples are chunked, ``iwae(k=1)`` and
``elbo(kl="mc")`` see the same z, and estimates for K and K' > K share their first K
samples (common random numbers). With a torch generator the noise of an image depends on
the batch it is in; with an :class:`vaeood.inference.noise.ImageNoise` as ``generator`` (what the
feature layer passes) each image's noise is keyed on its bytes and the seed, so its
estimate does not depend on the batch, its position in it or the batch size.

**IWAE outputs** (:func:`iwae`), each ``[B]``:

* ``log_px_nats``: :math:`\mathcal{L}_K`;
* ``elbo_nats``: ``mean_k log w_k``, a K-sample estimate of the ELBO (MC KL);
* ``gap_nats``: ``log_px_nats - elbo_nats``, >= 0 by Jensen (clamped at 0 against
  rounding);
* ``ess``: effective sample size ``(sum w)^2 / sum w^2`` in [1, K] (clamped against
  rounding);
* ``ess_fraction``: ``ess / K``;
* ``q_var_ratio``: how q's variance compares with the posterior's, the geometric mean
  over latent dims j of ``Var_q[z_j] / Var_SNIS[z_j|x]``, where ``Var_SNIS`` is the
  self-normalised importance-weighted variance of the K samples with the
  reliability-weights correction ``1 / (1 - Σ w~²)`` (computed on the standardised
  ``eps``, floored at 1e-12 of q's variance); NaN where ESS ≈ 1 (one sample carries
  all the weight, so there is no variance to measure; always for K = 1). Below 1: q is
  narrower than the posterior. It inherits SNIS's bias: the weighted variance only sees
  where q put samples, so it understates how much too narrow q is, and it needs a large
  K (within a few % of the truth for a well-matched q at K = 1000, ~30% high at K = 10).

Caveats: :math:`\mathcal{L}_K` is a stochastic lower bound, biased low —
:math:`\mathbb{E}\,\mathcal{L}_K \le \mathbb{E}\,\mathcal{L}_{K+1} \le \log p(x)` — by
roughly ``Var(w) / (2 K p(x)^2)``, i.e. O(1/K), and consistent as K → ∞ when the
weights have finite variance. The bias is invisible in a single number: an ESS that is
a tiny fraction of K (a few weights dominate, typical when q(z|x) is too narrow, e.g. on
out-of-distribution inputs) means the estimate is untrustworthy and may be far below
log p(x). With ``k=1`` this is the single-sample ELBO with MC KL.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from . import passes
from .gaussian import check_positive_int, kl_to_standard_normal, log_prob_from_eps, standard_normal
from ..infra.progress import bar
from .refine import refine_posterior
from ..infra.registry import Registry

__all__ = ["ESTIMATORS", "elbo", "iwae", "bits_per_dim", "checked_posterior", "checked_log_joint", "is_hierarchical"]

logger = logging.getLogger(__name__)

ESTIMATORS: Registry = Registry("estimator")


def is_hierarchical(model) -> bool:
    """Whether ``model`` gives its log-weights layer by layer (``log_weight_terms``, the
    hierarchical protocol of the module docstring) instead of one Gaussian q(z|x)."""
    return hasattr(model, "log_weight_terms")


# -- the model protocol, checked ------------------------------------------------------------
def checked_posterior(model, x) -> tuple[Tensor, Tensor]:
    """``model.posterior(x)``, checked to be ``(mu, logvar)`` of equal shape ``[B, Z]`` (one encoder
    pass per batch among a batch's features: :mod:`.passes`)."""
    mu, logvar = passes.posterior(model, x)
    if mu.dim() != 2 or logvar.shape != mu.shape:
        raise ValueError(
            "model.posterior(x) must return (mu, logvar) of equal shape [B, Z], got "
            f"{tuple(mu.shape)} and {tuple(logvar.shape)}"
        )
    return mu, logvar


def checked_log_joint(model, x, z: Tensor) -> tuple[Tensor, Tensor]:
    """(log p(x|z), log p(z)), each checked to be ``[S, B]``."""
    log_lik = model.log_likelihood(x, z)
    log_prior = model.log_prior(z)
    expected = tuple(z.shape[:2])
    for name, value in (("log_likelihood", log_lik), ("log_prior", log_prior)):
        if tuple(value.shape) != expected:
            raise ValueError(
                f"model.{name} must return [S, B] = {list(expected)} for z of shape "
                f"{list(z.shape)}, got {list(value.shape)}"
            )
    return log_lik, log_prior


# -- estimators ---------------------------------------------------------------------------
@ESTIMATORS.register("elbo")
def elbo(
    model,
    x,
    samples: int = 1,
    kl: str = "analytic",
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""Evidence lower bound (Kingma & Welling 2014, "Auto-Encoding Variational Bayes").

    .. math::
        \log p(x) \ge \mathrm{ELBO}(x)
            = \mathbb{E}_{q(z|x)}[\log p(x|z)] - \mathrm{KL}(q(z|x) \,\|\, p(z)),

    with the expectation estimated by ``samples`` reparameterised draws
    ``z_s = mu + exp(logvar/2) * eps_s``. The KL term is

    * ``kl="analytic"`` (default): the closed form for a diagonal Gaussian against
      **N(0, I)** — it assumes the model's prior is standard normal and does not call
      ``model.log_prior``; lower variance;
    * ``kl="mc"``: ``mean_s [log q(z_s|x) - log p(z_s)]`` at the same samples, valid for
      any prior; then ``log_px_nats`` is ``mean_s log[p(x, z_s) / q(z_s|x)]``, identical to
      ``iwae(k=1)["log_px_nats"]`` for the same generator state when ``samples=1``.

    Returns ``log_px_nats`` (the ELBO), ``distortion_nats`` (``-mean_s log p(x|z_s)``) and
    ``rate_nats`` (the KL), each ``[B]``; ``log_px_nats = -(distortion + rate)`` up to
    rounding.

    Caveats: the ELBO is a lower bound on log p(x), loose by KL(q(z|x) || p(z|x)), which
    differs between images and between in- and out-of-distribution data; the MC average
    is unbiased for the ELBO, with variance falling as 1/samples. Differentiable in the
    model parameters (reparameterisation), so usable as a training loss.
    """
    samples = check_positive_int("samples", samples)
    if kl not in ("analytic", "mc"):
        raise ValueError(f"kl must be 'analytic' or 'mc', got {kl!r}")
    if is_hierarchical(model):
        return _elbo_layers(model, x, samples, kl, generator)
    mu, logvar = checked_posterior(model, x)
    eps = standard_normal(samples, mu, generator)
    z = mu + torch.exp(0.5 * logvar) * eps
    if kl == "analytic":
        log_lik = model.log_likelihood(x, z)
        if tuple(log_lik.shape) != tuple(z.shape[:2]):
            raise ValueError(
                f"model.log_likelihood must return [S, B] = {list(z.shape[:2])}, "
                f"got {list(log_lik.shape)}"
            )
        rate = kl_to_standard_normal(mu, logvar)
        mean_log_lik = log_lik.mean(dim=0)
        distortion = -mean_log_lik
        log_px = mean_log_lik - rate
    else:
        log_lik, log_prior = checked_log_joint(model, x, z)
        log_q = log_prob_from_eps(eps, logvar)
        # same expression, same order as in iwae, so iwae(k=1) matches bit for bit
        log_w = log_lik + log_prior - log_q
        log_px = log_w.mean(dim=0)
        distortion = -log_lik.mean(dim=0)
        rate = (log_q - log_prior).mean(dim=0)
    return {"log_px_nats": log_px, "distortion_nats": distortion, "rate_nats": rate}


def _elbo_layers(model, x, samples: int, kl: str, generator) -> dict[str, Tensor]:
    """``elbo`` for a hierarchical model (module docstring): the analytic KL of each layer is
    taken given its sampled parents (Sønderby et al. 2016), averaged over the samples."""
    encoded = model.encode(x)
    like = encoded[0][0] if isinstance(encoded, (list, tuple)) else encoded
    eps = model.draw_noise(samples, len(x), like, generator)
    terms = model.log_weight_terms(x, eps, encoded=encoded)
    log_lik = terms["log_likelihood"]
    if kl == "analytic":
        rates = [r if r.dim() == 1 else r.mean(dim=0) for r in terms["kl"]]
        mean_log_lik = log_lik.mean(dim=0)
        distortion = -mean_log_lik
        rate = sum(rates)
        log_px = mean_log_lik - rate
    else:
        ratio = sum(terms["log_ratio"])
        log_px = (log_lik - ratio).mean(dim=0)
        distortion = -log_lik.mean(dim=0)
        rate = ratio.mean(dim=0)
        rates = [r.mean(dim=0) for r in terms["log_ratio"]]
    return {"log_px_nats": log_px, "distortion_nats": distortion, "rate_nats": rate,
            **{f"rate_nats_layer{i + 1}": r for i, r in enumerate(rates)}}


@ESTIMATORS.register("iwae")
def iwae(model, x, k: int = 1000, chunk_size: int | None = None, max_elements: int = 2**22,
         generator: torch.Generator | None = None, refine_steps: int = 0, refine_k: int = 16,
         refine_step_size: float = 0.5) -> dict[str, Tensor]:
    r"""Importance-weighted bound IWAE-K (Burda, Grosse & Salakhutdinov 2016).

    With ``z_k ~ q(z|x)`` i.i.d. and log-weights
    ``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``,

    .. math:: \log p(x) \ge \mathcal{L}_K(x) = \log \frac1K \sum_{k=1}^K w_k
              = \operatorname{logsumexp}_k(\log w_k) - \log K .

    Each image is encoded once; the K samples are decoded in chunks of ``chunk_size``
    (default: the largest with ``chunk * B * elements_per_sample <= max_elements``, whose
    2**22 keeps a chunk's activations in a CPU's last-level cache, ``benchmarks/iwae_settings.py``;
    a GPU gets an eighth of its free memory), and ``log sum w``, ``log sum w^2`` and ``sum log w`` are
    accumulated across chunks, so memory does not grow with K and the result does not
    depend on the chunking beyond float rounding (the noise is drawn per sample index).

    Returns ``log_px_nats`` (:math:`\mathcal{L}_K`), ``elbo_nats``, ``gap_nats``, ``ess``,
    ``ess_fraction``, ``q_var_ratio`` (*IWAE outputs* in the module docstring, with caveats).

    ``refine_steps > 0`` first refines each image's q(z|x) by that many forward-KL steps
    of ``refine_k`` samples and step size ``refine_step_size`` (Jerfel et al. 2021, see
    :mod:`vaeood.inference.refine`), then samples the K importance samples from the refined q; the
    refinement draws from the same ``generator`` first and carries no gradient.

    A hierarchical model (module docstring) adds ``rate_nats`` and ``rate_nats_layer{i}``
    (K-sample means of ``log q − log p`` per layer); its ``q_var_ratio`` is NaN and
    ``refine_steps`` is refused.
    """
    k = check_positive_int("k", k)
    max_elements = check_positive_int("max_elements", max_elements)
    layered = is_hierarchical(model)
    if layered:
        if refine_steps:
            raise ValueError("refine_steps refines a single Gaussian q(z|x); a hierarchical model has none")
        encoded = model.encode(x)  # encode once
        like = encoded[0][0] if isinstance(encoded, (list, tuple)) else encoded
        batch, latent = len(x), int(getattr(model, "latent_dim", 1))
    else:
        mu, logvar = checked_posterior(model, x)  # encode once
        batch, latent = mu.shape
    chunk_size = _iwae_chunk_size(model, x, k, chunk_size, max_elements, batch, latent)
    logger.debug("iwae: k=%d, batch=%d, chunk_size=%d", k, batch, chunk_size)
    if refine_steps:
        mu, logvar = refine_posterior(model, x, mu, logvar, steps=refine_steps, k=refine_k,
                                      step_size=refine_step_size, chunk_size=chunk_size, generator=generator)
    if layered:
        def chunk(n):
            return _layered_chunk(model, x, n, batch, like, encoded, generator)
    else:
        std = torch.exp(0.5 * logvar)

        def chunk(n):
            return _gaussian_chunk(model, x, n, mu, std, logvar, generator)
    sums = _LogWeightSums()
    for start in bar(range(0, k, chunk_size), desc=f"iwae K={k}", enabled=None if k > chunk_size else False):
        sums.add(*chunk(min(chunk_size, k - start)))
    return _iwae_outputs(sums, k, layered)


def _iwae_chunk_size(model, x, k: int, chunk_size: int | None, max_elements: int, batch: int, latent: int) -> int:
    """``chunk_size``, or by default the most samples whose decoding fits ``max_elements``; at most K."""
    if chunk_size is None:
        per_sample = getattr(model, "elements_per_sample", None)
        if per_sample is None:
            per_sample = latent + (x[0].numel() if batch else 0)
        per_sample = max(1, int(per_sample))
        chunk_size = max(1, max_elements // max(1, batch * per_sample))
    return min(check_positive_int("chunk_size", chunk_size), k)


def _gaussian_chunk(model, x, n: int, mu, std, logvar, generator):
    """``n`` samples of q(z|x) = N(mu, std²): their log-weights [n, B], the SNIS first and
    second moments of their standardised noise eps within the chunk ([B, D] each), no rates."""
    eps = standard_normal(n, mu, generator)
    z = mu + std * eps
    log_lik, log_prior = checked_log_joint(model, x, z)
    log_q = log_prob_from_eps(eps, logvar)
    log_w = log_lik + log_prior - log_q  # [n, B]
    # SNIS moments of eps within the chunk, merged with the running normaliser
    c_w = torch.softmax(log_w.detach(), dim=0).unsqueeze(-1)
    return log_w, (c_w * eps).sum(0), (c_w * eps.pow(2)).sum(0), None


def _layered_chunk(model, x, n: int, batch: int, like, encoded, generator):
    """``n`` samples of a hierarchical model: their log-weights [n, B], zero moments (there is
    no single q to compare) and the chunk's per-layer sums of ``log q − log p`` [L, B]."""
    terms = model.log_weight_terms(x, model.draw_noise(n, batch, like, generator), encoded=encoded)
    log_w = terms["log_likelihood"] - sum(terms["log_ratio"])  # [n, B]
    c_rates = torch.stack(terms["log_ratio"]).sum(dim=1)  # [L, B]
    c_m = torch.zeros(batch, 1, dtype=log_w.dtype, device=log_w.device)  # no single q to compare
    return log_w, c_m, c_m, c_rates


class _LogWeightSums:
    """``log Σ w``, ``log Σ w²``, ``Σ log w``, the SNIS moments of eps and the per-layer
    rates, accumulated across chunks of samples (``torch.logaddexp`` / sums)."""

    def __init__(self):
        self.log_sum_w = self.log_sum_w2 = self.sum_log_w = self.m1 = self.m2 = self.rates = None

    def add(self, log_w, c_m1, c_m2, c_rates) -> None:
        if c_rates is not None:
            self.rates = c_rates if self.rates is None else self.rates + c_rates
        c_sum_w = torch.logsumexp(log_w, dim=0)
        c_sum_w2 = torch.logsumexp(2.0 * log_w, dim=0)
        c_sum_log_w = log_w.sum(dim=0)
        if self.log_sum_w is None:
            self.log_sum_w, self.log_sum_w2, self.sum_log_w = c_sum_w, c_sum_w2, c_sum_log_w
            self.m1, self.m2 = c_m1, c_m2
            return
        total = torch.logaddexp(self.log_sum_w, c_sum_w)
        a = torch.exp(self.log_sum_w - total).detach().unsqueeze(-1)
        b = torch.exp(c_sum_w - total).detach().unsqueeze(-1)
        self.m1, self.m2 = a * self.m1 + b * c_m1, a * self.m2 + b * c_m2
        self.log_sum_w = total
        self.log_sum_w2 = torch.logaddexp(self.log_sum_w2, c_sum_w2)
        self.sum_log_w = self.sum_log_w + c_sum_log_w


def _iwae_outputs(sums: _LogWeightSums, k: int, layered: bool) -> dict[str, Tensor]:
    """:func:`iwae`'s outputs from its accumulated sums over the K samples."""
    log_sum_w, log_sum_w2, m1, m2 = sums.log_sum_w, sums.log_sum_w2, sums.m1, sums.m2
    log_px = log_sum_w - math.log(k)
    elbo_k = sums.sum_log_w / k
    ess = torch.exp(2.0 * log_sum_w - log_sum_w2).clamp(1.0, float(k))
    # Var_SNIS / Var_q per dim, with the reliability-weights correction 1 / (1 - sum w~^2) = ESS / (ESS - 1)
    inv_ess = torch.exp(log_sum_w2 - 2.0 * log_sum_w).detach().unsqueeze(-1)
    snis_var = ((m2 - m1.pow(2)) / (1.0 - inv_ess)).clamp_min(1e-12)
    snis_var = torch.where(inv_ess < 1.0 - 1e-6, snis_var, torch.full_like(snis_var, math.nan))
    out = {
        "log_px_nats": log_px,
        "elbo_nats": elbo_k,
        "gap_nats": (log_px - elbo_k).clamp_min(0.0),
        "ess": ess,
        "ess_fraction": ess / k,
        "q_var_ratio": torch.exp(-torch.log(snis_var).mean(-1)),
    }
    if layered:  # per-layer MC rates (mean over the K samples); q_var_ratio is undefined: NaN
        out["q_var_ratio"] = torch.full_like(log_px, math.nan)
        out["rate_nats"] = sums.rates.sum(dim=0) / k
        out.update({f"rate_nats_layer{i + 1}": r / k for i, r in enumerate(sums.rates)})
    return out


# -- units --------------------------------------------------------------------------------
def bits_per_dim(log_px_nats: Tensor, num_dims: int) -> Tensor:
    r"""Bits per dimension: ``bpd = -log p(x) / (D ln 2)``.

    Defined only for decoders that give a **normalised pmf over 8-bit values**
    (``categorical``, ``dlogistic``; see ``Likelihood.normalised``), never for the
    Bernoulli decoder on grey levels.

    Convention: the model is a discrete pmf P(x) over {0, ..., 255}^D, so
    ``bpd = -log2 P(x) / D`` directly, with no dequantisation term (a uniform pmf gives
    exactly 8). A *continuous* density p_c on data scaled to [0, 1] and uniformly
    dequantised is instead reported as

    .. math:: \mathrm{bpd} = \frac{-\log p_c(y) + D \log 256}{D \ln 2},
              \qquad y = (x + u)/256,\ u \sim U[0, 1)^D,

    (the ``D log 256`` is the log-Jacobian of the scaling; the result upper-bounds the
    discrete bpd of the dequantised model). Numbers from continuous densities without
    that correction are not comparable with these.

    ``log_px_nats`` is any tensor of per-image estimates (e.g. ``[B]``); ``num_dims`` is D,
    the number of sub-pixels per image (C·H·W). Raises ``ValueError`` if D <= 0.
    """
    if isinstance(num_dims, bool) or int(num_dims) != num_dims or num_dims <= 0:
        raise ValueError(f"num_dims must be a positive integer, got {num_dims!r}")
    return -log_px_nats / (int(num_dims) * math.log(2.0))
