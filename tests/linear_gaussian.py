"""An analytic linear-Gaussian VAE, to test log-likelihood estimators against exact answers.

Generative model (Tipping & Bishop 1999, probabilistic PCA):

    p(z) = N(0, I_Z),    p(x|z) = N(W z + b, sigma^2 I_D),

so the marginal is exact, ``log p(x) = log N(x; b, W W^T + sigma^2 I_D)``, and so is the
posterior ``p(z|x) = N(m(x), S)`` with

    S = (I_Z + W^T W / sigma^2)^{-1},    m(x) = S W^T (x - b) / sigma^2.

``posterior(x)`` — the "encoder" the estimators use — returns a deliberately imperfect
*diagonal* Gaussian: ``N(m(x) + mean_shift, diag(S) * var_scale)``. With orthogonal
columns of W, S is diagonal, and ``mean_shift=0, var_scale=1`` makes q the exact posterior.
Everything is float64 and implements the duck-typed model interface of
``vaeood.inference.estimators`` (``x`` is a float tensor ``[B, D]`` here, not an image).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_LOG_2PI = math.log(2.0 * math.pi)


class LinearGaussianVAE(nn.Module):
    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        sigma: float,
        mean_shift: float | Tensor = 0.0,
        var_scale: float | Tensor = 1.0,
    ):
        super().__init__()
        self.weight = nn.Parameter(weight.to(torch.float64).clone())  # [D, Z]
        self.bias = nn.Parameter(bias.to(torch.float64).clone())  # [D]
        self.sigma = float(sigma)
        self.mean_shift = mean_shift
        self.var_scale = var_scale

    @property
    def data_dim(self) -> int:
        return self.weight.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.weight.shape[1]

    # -- exact quantities ----------------------------------------------------------------
    def marginal(self) -> torch.distributions.MultivariateNormal:
        cov = self.weight @ self.weight.T + self.sigma**2 * torch.eye(
            self.data_dim, dtype=torch.float64
        )
        return torch.distributions.MultivariateNormal(self.bias, covariance_matrix=cov)

    def exact_log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, ``[B]``."""
        return self.marginal().log_prob(x)

    def exact_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(m [B, Z], S [Z, Z]) of the exact posterior p(z|x) = N(m, S)."""
        w, s2 = self.weight, self.sigma**2
        precision = torch.eye(self.latent_dim, dtype=torch.float64) + w.T @ w / s2
        cov = torch.linalg.inv(precision)
        mean = (x - self.bias) @ w @ cov.T / s2
        return mean, cov

    def exact_elbo(self, x: Tensor) -> Tensor:
        """The ELBO of ``posterior(x)`` in closed form, ``[B]``:

        E_q log p(x|z) = -(||x - W mu - b||^2 + tr(W diag(v) W^T)) / (2 sigma^2)
                         - D/2 log(2 pi sigma^2),   minus KL(q || N(0, I)).
        """
        mu, logvar = self.posterior(x)
        var = logvar.exp()
        resid = x - (mu @ self.weight.T + self.bias)
        trace = (var * self.weight.pow(2).sum(0)).sum(-1)  # tr(W diag(v) W^T)
        s2 = self.sigma**2
        expected_log_lik = -(resid.pow(2).sum(-1) + trace) / (2 * s2) - 0.5 * self.data_dim * (
            _LOG_2PI + math.log(s2)
        )
        kl = 0.5 * (mu.pow(2) + var - 1.0 - logvar).sum(-1)
        return expected_log_lik - kl

    def exact_posterior_kl(self, x: Tensor) -> Tensor:
        """KL(q(z|x) || p(z|x)) in closed form, ``[B]`` (= log p(x) - ELBO)."""
        q_mean, q_logvar = self.posterior(x)
        p_mean, p_cov = self.exact_posterior(x)
        p_prec = torch.linalg.inv(p_cov)
        diff = p_mean - q_mean
        trace = (torch.diagonal(p_prec) * q_logvar.exp()).sum(-1)
        maha = ((diff @ p_prec) * diff).sum(-1)
        logdet = torch.logdet(p_cov) - q_logvar.sum(-1)
        return 0.5 * (trace + maha - self.latent_dim + logdet)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws x ~ p(x), ``[n, D]``."""
        z = torch.randn(n, self.latent_dim, dtype=torch.float64, generator=generator)
        noise = torch.randn(n, self.data_dim, dtype=torch.float64, generator=generator)
        with torch.no_grad():
            return z @ self.weight.T + self.bias + self.sigma * noise

    # -- the model interface used by vaeood.inference.estimators ----------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, cov = self.exact_posterior(x)
        var = torch.diagonal(cov) * self.var_scale
        return mean + self.mean_shift, torch.log(var).expand_as(mean)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log N(x; W z + b, sigma^2 I) for z ``[S, B, Z]`` → ``[S, B]``."""
        resid = (x - (z @ self.weight.T + self.bias)) / self.sigma
        return -0.5 * (resid.pow(2) + _LOG_2PI).sum(-1) - self.data_dim * math.log(self.sigma)

    def log_prior(self, z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2) + _LOG_2PI).sum(-1)


def make_linear_gaussian(
    data_dim: int = 5,
    latent_dim: int = 3,
    sigma: float = 0.5,
    orthogonal: bool = False,
    mean_shift: float = 0.0,
    var_scale: float = 1.0,
    seed: int = 0,
) -> LinearGaussianVAE:
    """A random model; ``orthogonal=True`` gives W orthogonal columns (diagonal posterior)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, dtype=torch.float64, generator=g)
    if orthogonal:
        q, r = torch.linalg.qr(weight)
        q = q * torch.sign(torch.diagonal(r))  # the unique QR with diag(R) > 0: LAPACK builds differ in signs
        scales = torch.linspace(0.5, 2.0, latent_dim, dtype=torch.float64)
        weight = q * scales
    bias = torch.randn(data_dim, dtype=torch.float64, generator=g)
    return LinearGaussianVAE(weight, bias, sigma, mean_shift=mean_shift, var_scale=var_scale)
