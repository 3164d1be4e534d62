"""Features computed with the model: log p(x) by estimator, the posterior's statistics
and the reconstruction error. Each takes uint8 ``x [B, C, H, W]`` and returns ``[B]``
tensors whose names carry their units."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ..inference.estimators import ESTIMATORS, bits_per_dim, is_hierarchical
from ..inference.passes import posterior as shared_posterior
from ..inference.gaussian import LOG_2PI
from ..infra.registry import check_options
from .core import FEATURES
from .layers import bottom_up



def memory_sized_options(fn, device: torch.device) -> dict:
    """On a GPU, let the IWAE estimator use an eighth of the free memory for its sample
    chunks (its default bound is sized for a CPU)."""
    if device.type != "cuda" or "max_elements" not in inspect.signature(fn).parameters:
        return {}
    free_bytes, _ = torch.cuda.mem_get_info(device)
    return {"max_elements": int(free_bytes // (8 * 4))}


def is_normalised(model) -> bool:
    """Whether the model's log p(x|z) is a normalised pmf over 8-bit values (bits/dim
    are defined): ``model.likelihood.normalised``, or ``model.normalised``."""
    likelihood = getattr(model, "likelihood", None)
    if likelihood is not None and hasattr(likelihood, "normalised"):
        return bool(likelihood.normalised)
    return bool(getattr(model, "normalised", False))


def num_dims(model, x: Tensor) -> int:
    return int(getattr(model, "num_dims", None) or x[0].numel())


@FEATURES.register("log_px")
def log_px(model, x: Tensor, *, generator: torch.Generator | None = None, estimator: str = "elbo",
           estimator_options: dict | None = None) -> dict[str, Tensor]:
    r"""The estimate of log p(x) by a registered estimator (:mod:`vaeood.inference.estimators`):
    ``log_px_nats`` and the estimator's diagnostics (``elbo``: ``rate_nats`` = KL(q‖p),
    ``distortion_nats`` = −E_q log p(x|z); ``iwae``: ``gap_nats``, ``ess``, ...), plus
    ``bpd`` = −log p(x) / (D ln 2) when the decoder is a normalised pmf over 8-bit values.
    """
    fn = ESTIMATORS.get(estimator)
    options = check_options(fn, estimator_options or {}, "estimator", estimator, ("model", "x", "generator"))
    out = fn(model, x, generator=generator, **{**memory_sized_options(fn, x.device), **options})
    if is_normalised(model):
        out["bpd"] = bits_per_dim(out["log_px_nats"].double(), num_dims(model, x))
    return out


@FEATURES.register("posterior")
def posterior(model, x: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    r"""Statistics of q(z|x) = N(μ, diag σ²) (deterministic; no sampling):

    * ``mu_z_norm`` = ‖μ‖₂ and ``sigma_z_norm`` = ‖σ‖₂ (LPath, Huang et al. 2024);
    * ``log_sigma_z_mean`` = mean_j log σ_j;
    * ``posterior_entropy_nats`` = H[q] = ½ Σ_j (1 + log 2π + log σ_j²);
    * ``prior_cross_entropy_nats`` = −E_q log p(z) = ½ Σ_j (μ_j² + σ_j² + log 2π) for the
      standard-normal prior, so that KL(q‖p) = cross-entropy − entropy (DoSE's posterior
      statistics, Morningstar et al. 2021).
    """
    mu, logvar = shared_posterior(model, x)
    mu, logvar = mu.double(), logvar.double()
    var = logvar.exp()
    return {
        "mu_z_norm": mu.norm(dim=-1),
        "sigma_z_norm": var.sqrt().norm(dim=-1),
        "log_sigma_z_mean": 0.5 * logvar.mean(dim=-1),
        "posterior_entropy_nats": 0.5 * (1.0 + LOG_2PI + logvar).sum(dim=-1),
        "prior_cross_entropy_nats": 0.5 * (mu.pow(2) + var + LOG_2PI).sum(dim=-1),
    }


@FEATURES.register("latent")
def latent(model, x: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    r"""Where the image lands in latent space: the parameters of q(z|x) = N(μ, diag σ²),
    deterministic (no sampling), one row per image:

    * ``latent_mu`` = μ(x) ``[B, Z]``;
    * ``latent_logvar`` = log σ²(x) ``[B, Z]``.

    The latent-space detectors (:mod:`vaeood.detectors.latent`) fit a density, nearest
    neighbours or a Gaussian to these vectors of held-out training images: the evidence
    a single summary number (‖μ‖, the rate) averages away.

    For a hierarchical VAE (:class:`~vaeood.models.hvae.HierarchicalVAE`, which has no single
    Gaussian q(z|x)) the vectors are every layer's deterministic bottom-up parameters
    ``(mu_q,i, logvar_q,i)`` side by side, lowest layer first: ``Z = Z_1 + … + Z_L``. Layer L's
    pair is its exact posterior q(z_L|x); the lower ones are the encoder's half of the LVAE
    merge with the conditional prior (see :func:`vaeood.features.layers.layer_stats`, whose
    ``layer{i}_mu`` / ``layer{i}_logvar`` are also returned here, so that a latent detector
    can read chosen layers). A one-layer HVAE on a VAE's modules gives the VAE's posterior.
    """
    if is_hierarchical(model):
        encoded = bottom_up(model, x)
        out = {"latent_mu": torch.cat([mu for mu, _ in encoded], dim=-1).double(),
               "latent_logvar": torch.cat([lv for _, lv in encoded], dim=-1).double()}
        for i, (mu, logvar) in enumerate(encoded):
            out[f"layer{i + 1}_mu"] = mu.double()
            out[f"layer{i + 1}_logvar"] = logvar.double()
        return out
    mu, logvar = shared_posterior(model, x)
    return {"latent_mu": mu.double(), "latent_logvar": logvar.double()}


def reconstruction_mean(model, x: Tensor) -> Tensor:
    """x̂ = the mean of p(x|z = μ(x)) on the [0, 1] scale: ``model.reconstruct(x)``, or
    ``model.likelihood.mean(model.decode(μ))``."""
    if hasattr(model, "reconstruct"):
        return model.reconstruct(x)
    mu, _ = shared_posterior(model, x)
    return model.likelihood.mean(model.decode(mu))


def _at_posterior_mean(model, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(x̂, log p(x | z = μ(x)) or None): from one decoder pass where the model gives both
    (``model.at_posterior_mean``, the project's VAE), else ``reconstruct`` and
    ``log_likelihood`` (a model of its own, which may lack the latter)."""
    mu, _ = shared_posterior(model, x)
    if hasattr(model, "at_posterior_mean"):
        return model.at_posterior_mean(x, mu)
    xhat = reconstruction_mean(model, x)
    try:
        return xhat, model.log_likelihood(x, mu[None])[0]
    except (AttributeError, NotImplementedError):
        return xhat, None


@FEATURES.register("reconstruction")
def reconstruction(model, x: Tensor, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    r"""Reconstruction error at the posterior mean, deterministic:

    * ``recon_l2`` = ‖x/255 − x̂‖₂ with x̂ the mean of p(x|z = μ(x)) in [0, 1];
    * ``recon_log_l2`` = log(‖x/255 − x̂‖₂ + 1e-12) (LPath's decoder statistic, Huang et al. 2024);
    * ``recon_nll_nats`` = −log p(x | z = μ(x)) (the distortion at the mean, nats).
    """
    xhat, log_lik = _at_posterior_mean(model, x)
    err = (x.double() / 255.0 - xhat.double().reshape(x.shape)).flatten(1).norm(dim=-1)
    out = {"recon_l2": err, "recon_log_l2": torch.log(err + 1e-12)}
    if log_lik is not None:
        out["recon_nll_nats"] = -log_lik.double()
    return out
