r"""Test-time refinement of the proposal q(z|x) by the forward KL, before importance
sampling (Jerfel, Wang, Wong-Fannjiang, Heller, Ma & Jordan 2021, "Variational
refinement for importance sampling using the forward Kullback-Leibler divergence").

An encoder trained by the ELBO fits q by the reverse KL(q ‖ p(z|x)) and gives proposals
that are too narrow for importance sampling (light tails, low effective sample size).
:func:`refine_posterior` moves each image's ``(mu, logvar)`` a few steps down the forward
KL(p(z|x) ‖ q) with the model frozen, batched over images. Each step draws K samples
from the current q, weighs them by ``w_k = p(x, z_k) / q(z_k|x)``, and follows the
self-normalised importance-sampling (SNIS) gradient of ``-Σ_k w~_k log q(z_k|x)``,
preconditioned by the inverse Fisher information of the diagonal Gaussian (a
natural-gradient step, which makes the step size scale-free). With
``eps_k = (z_k - mu) / sigma``:

.. math::
    \mu \leftarrow \mu + \eta\,\sigma \sum_k \tilde w_k\, \epsilon_k, \qquad
    \log\sigma^2 \leftarrow \log\sigma^2 + \operatorname{clip}\Big(\eta \big(\textstyle\sum_k \tilde w_k\,
        \epsilon_k^2 - 1\big), -1, 1\Big).

At ``η = 1`` the mean update is SNIS moment matching; the fixed point is the
forward-KL-optimal Gaussian (SNIS mean and variance of the posterior, per dimension).
The log-variance moves at most 1 per step (a trust region against a few huge weights).

The gradient of ``log q`` at fixed samples is closed-form, so refinement needs no
backward pass through the decoder: each step costs K decoder evaluations per image,
run in chunks of at most ``chunk_size`` samples. The refined proposal is used with
*fresh* samples by the IWAE estimator, so its estimate stays a stochastic lower bound
(any proposal gives one). Caveats: the SNIS gradient is biased for finite K and noisy
when the ESS is small — exactly when q is poor — so a few damped steps help most where
q is already in the right region and cannot find modes that q misses entirely.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gaussian import check_positive_int, log_prob_from_eps, standard_normal


def refine_posterior(model, x, mu: Tensor, logvar: Tensor, *, steps: int, k: int = 16,
                     step_size: float = 0.5, chunk_size: int | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Return ``(mu, logvar)`` after ``steps`` forward-KL steps (see the module docstring).

    ``mu``, ``logvar``: ``[B, Z]``, the encoder's q(z|x) for images ``x``; the model is
    only evaluated (``log_likelihood``, ``log_prior``), never changed. Noise comes from
    ``generator``, one ``[B, Z]`` draw per sample index. Runs under ``torch.no_grad``; the
    result carries no gradient.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"refine steps must be a non-negative integer, got {steps!r}")
    k = check_positive_int("refine k", k)
    if not (isinstance(step_size, (int, float)) and 0 < step_size <= 1):
        raise ValueError(f"refine step_size must be in (0, 1], got {step_size!r}")
    chunk_size = int(min(chunk_size or k, k))
    with torch.no_grad():
        mu, logvar = mu.detach().clone(), logvar.detach().clone()
        for _ in range(int(steps)):
            std = torch.exp(0.5 * logvar)
            log_w, eps = [], []
            for start in range(0, k, chunk_size):
                n = min(chunk_size, k - start)
                e = standard_normal(n, mu, generator)  # the estimators' per-index draws
                z = mu + std * e
                log_q = log_prob_from_eps(e, logvar)
                log_w.append(model.log_likelihood(x, z) + model.log_prior(z) - log_q)
                eps.append(e)
            w = torch.softmax(torch.cat(log_w), 0).unsqueeze(-1)  # [K, B, 1]
            eps_all = torch.cat(eps)  # [K, B, Z]
            ok = torch.isfinite(w).all(0)  # an image whose weights are NaN/inf keeps its proposal
            m1 = torch.where(ok, (w * eps_all).sum(0), torch.zeros_like(mu))
            m2 = torch.where(ok, (w * eps_all.pow(2)).sum(0), torch.ones_like(mu))
            mu = mu + step_size * std * m1
            logvar = logvar + (step_size * (m2 - 1.0)).clamp(-1.0, 1.0)
    return mu, logvar
