"""Training objectives: a name → loss registry.

Each objective maps ``(model, x, **options)`` to a dict holding the scalar ``loss`` to
minimise (mean over the batch, nats per image) and the per-batch means worth logging.
An objective that keeps per-example state across steps (``msc``) is registered as a
class: :func:`make_objective` makes one instance per run, its ``__call__`` also takes
``index`` (the batch's positions in the training set), and its ``state_dict`` /
``load_state_dict`` travel in the checkpoint so that a resumed run retraces an
uninterrupted one. ``train`` passes ``index=`` to every objective whose signature has it.

Reverse and forward KL. The ELBO and IWAE objectives fit the encoder q(z|x) by (a
tightened form of) the *reverse* KL(q ‖ p(z|x)), which is mode-seeking and under-estimates
posterior variance, giving importance-sampling proposals with light tails. ``rws``,
``rws_dreg`` and ``msc`` fit the encoder by the *forward* (inclusive) KL(p(z|x) ‖ q),
mass-covering, whose optimal mean-field Gaussian matches the posterior's marginal
means and variances. Forward KL only changes the encoder: for the decoder, the
"forward" objective is maximum likelihood itself, which these objectives approximate
with the IWAE bound (``rws``, ``rws_dreg``) or a Fisher-identity estimate (``msc``).

Notation used by the docstrings: ``z_k = mu + sigma * eps_k``, ``eps_k ~ N(0, I)``,
``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``, self-normalised weights
``w~_k = w_k / sum_j w_j``, and ``sg(.)`` is stop-gradient (``.detach()``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .estimators import checked_log_joint, checked_posterior, elbo, iwae
from .gaussian import check_positive_int, log_prob, standard_normal
from ..infra.registry import Registry, check_options

OBJECTIVES = Registry("objective")

def make_objective(name: str, options: dict | None = None, *, num_examples: int | None = None):
    """The callable ``train`` runs for objective ``name``: the registered function, or a
    fresh instance of a registered class (per-run state, ``num_examples`` rows of it).

    ``options`` (the config's ``train.objective_options``) are checked against the
    objective's signature here, so a mistyped option fails before training starts.
    """
    entry = OBJECTIVES.get(name)
    objective = entry(num_examples=num_examples) if isinstance(entry, type) else entry
    check_options(objective, options or {}, "objective", name, ("model", "x", "index"))
    return objective


def objective_state(objective) -> dict:
    """What a checkpoint stores of an objective (``{}`` for a stateless one)."""
    return objective.state_dict() if hasattr(objective, "state_dict") else {}


def load_objective_state(objective, state: dict | None) -> None:
    """Restore :func:`objective_state` into a fresh objective (no-op for stateless ones)."""
    if hasattr(objective, "load_state_dict"):
        objective.load_state_dict(state or {})


def _ess(log_w: Tensor) -> Tensor:
    """Effective sample size (sum w)^2 / sum w^2 per image, from log-weights [K, B]."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def _value_zero(surrogate: Tensor) -> Tensor:
    """``surrogate - sg(surrogate)``: value 0, gradient that of ``surrogate``. Added to a
    loss it contributes a gradient without changing the logged value."""
    return surrogate - surrogate.detach()


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


@OBJECTIVES.register("elbo_warmup")
class AnnealedElbo:
    r"""Negative ELBO with KL warm-up and free nats per latent layer, the training tricks of
    hierarchical VAEs (Sønderby et al. 2016, "Ladder Variational Autoencoders"; Kingma et al.
    2016, "Improved Variational Inference with Inverse Autoregressive Flow"; schedules as in
    Havtorn et al. 2021, "Hierarchical VAEs Know What They Don't Know"):

    .. math::
        \mathcal{L}_e = -\mathbb{E}_q[\log p(x|z)] + \beta_e \sum_i \max(\mathrm{KL}_i(x), \lambda_e),

    with ``KL_i`` the analytic KL of layer i given its sampled parents, per image (the
    ``rate_nats_layer{i}`` of ``estimators.elbo``; ``rate_nats`` for a single-layer VAE),
    ``β_e = min(1, (e + 1) / warmup_epochs)`` in epoch e (0-based; 1 throughout when
    ``warmup_epochs = 0``), and free nats ``λ_e = free_nats`` for the first half of
    ``free_nats_epochs``, then linearly down to 0 over the second half, 0 afterwards. With
    the defaults it is the ``elbo`` objective.

    The epoch comes from ``train``, which calls :meth:`set_epoch` at the start of every
    epoch (so a resumed run continues the schedule). ``loss`` is the annealed objective;
    ``elbo_nats`` (the true ELBO), ``rate_nats``, ``distortion_nats``, ``beta`` and
    ``free_nats`` are logged beside it. Caveat: while β < 1 or λ > 0 the loss is not a
    bound on −log p(x); compare runs by ``elbo_nats`` or by scoring.
    """

    def __init__(self, num_examples: int | None = None):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def schedule(self, warmup_epochs: int = 0, free_nats: float = 0.0, free_nats_epochs: int = 0
                 ) -> tuple[float, float]:
        """``(β, λ)`` for the current epoch."""
        beta = 1.0 if warmup_epochs <= 0 else min(1.0, (self.epoch + 1) / warmup_epochs)
        hold = free_nats_epochs // 2
        cool = free_nats_epochs - hold
        if self.epoch < hold:
            lam = free_nats
        elif self.epoch < free_nats_epochs:  # linspace(free_nats, 0, cool), as Havtorn et al.'s cooldown
            lam = free_nats * (1.0 - (self.epoch - hold) / (cool - 1)) if cool > 1 else free_nats
        else:
            lam = 0.0
        return beta, float(lam)

    def __call__(self, model, x: Tensor, *, samples: int = 1, warmup_epochs: int = 0, free_nats: float = 0.0,
                 free_nats_epochs: int = 0) -> dict[str, Tensor]:
        for name, value in (("warmup_epochs", warmup_epochs), ("free_nats_epochs", free_nats_epochs)):
            if isinstance(value, bool) or int(value) != value or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not free_nats >= 0:
            raise ValueError(f"free_nats must be >= 0, got {free_nats!r}")
        beta, lam = self.schedule(warmup_epochs, free_nats, free_nats_epochs)
        out = elbo(model, x, samples=samples)
        layers = sorted((k for k in out if k.startswith("rate_nats_layer")), key=lambda k: int(k[15:])) or ["rate_nats"]
        kl = [out[k].clamp_min(lam) if lam > 0 else out[k] for k in layers]
        total = kl[0]
        for term in kl[1:]:
            total = total + term
        loss = (out["distortion_nats"] + beta * total).mean()
        return {"loss": loss, "elbo_nats": out["log_px_nats"].mean().detach(),
                "distortion_nats": out["distortion_nats"].mean().detach(),
                "rate_nats": out["rate_nats"].mean().detach(),
                "beta": torch.tensor(beta, device=loss.device), "free_nats": torch.tensor(lam, device=loss.device)}


@OBJECTIVES.register("rws")
def rws_objective(model, x: Tensor, k: int = 5) -> dict[str, Tensor]:
    r"""Reweighted Wake-Sleep, wake-θ + wake-φ (Bornschein & Bengio 2015; Le et al. 2019,
    "Revisiting Reweighted Wake-Sleep for Models with Stochastic Control Flow").

    One scalar whose single backward gives each network its own update:

    .. math::
        \mathcal{L} = -\frac1B\sum_b \Big[\log\frac1K\sum_k e^{\log p_\theta(x, z_k) - sg(\log q_\phi(z_k|x))}
                      \;+\; \big(S_b - sg(S_b)\big)\Big],
        \qquad S_b = \sum_k sg(\tilde w_k)\, \log q_\phi(sg(z_k)|x),

    with ``z_k`` drawn from q and **detached** (no reparameterisation path):

    * decoder θ (wake-θ): ``∇_θ = Σ_k w~_k ∇_θ log p_θ(x, z_k)``, the gradient of the
      IWAE-K bound (``log q`` is stopped, so the bound gives the encoder nothing);
    * encoder φ (wake-φ): ``∇_φ = -Σ_k w~_k ∇_φ log q_φ(z_k|x)``, the self-normalised
      importance-sampling (SNIS) estimate of ``∇_φ KL(p(z|x) ‖ q_φ) = -E_p[∇_φ log q_φ(z)]``.

    ``loss`` has the value of −IWAE_K (comparable with the ``iwae`` objective); also
    logged: ``ess`` and ``wake_phi_nats`` = ``-Σ w~_k log q(z_k|x)``, the SNIS estimate of
    the cross-entropy E_p[−log q(z|x)] = H[p(z|x)] + KL(p ‖ q).

    Caveats: SNIS is biased for finite K (the bias of ``w~`` is O(1/K)), so the wake-φ
    gradient is that of a K-dependent surrogate, consistent as K → ∞; unlike the IWAE
    encoder gradient its signal-to-noise ratio does not vanish as K grows, so larger K
    helps (Le et al. 2019). The score-function form has high variance; ``rws_dreg`` is
    the lower-variance estimator of the same expectation. When ESS ≈ 1 (q far too
    narrow) the update follows a single sample.
    """
    k = check_positive_int("k", k)
    mu, logvar = checked_posterior(model, x)
    eps = standard_normal(k, mu, None)
    z = (mu + torch.exp(0.5 * logvar) * eps).detach()  # [K, B, Z], no path to φ
    log_lik, log_prior = checked_log_joint(model, x, z)  # θ only
    log_q = log_prob(z, mu, logvar)  # φ only (z fixed): the score function
    log_w = log_lik + log_prior - log_q.detach()  # [K, B]
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    w = torch.softmax(log_w.detach(), 0)
    wake_phi = -(w * log_q).sum(0)  # [B]
    return {"loss": -bound.mean() + _value_zero(wake_phi).mean(),
            "ess": _ess(log_w.detach()).mean(),
            "wake_phi_nats": wake_phi.mean().detach()}


@OBJECTIVES.register("rws_dreg")
def rws_dreg_objective(model, x: Tensor, k: int = 5) -> dict[str, Tensor]:
    r"""Reweighted Wake-Sleep with the doubly-reparameterised wake-φ gradient (Tucker,
    Lawson, Gu & Maddison 2019, "Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives", Sec. 5).

    The decoder gets the IWAE-K gradient ``Σ_k w~_k ∇_θ log p_θ(x, z_k)``, as in ``rws``.
    The encoder gets the same expectation as ``rws``'s wake-φ update, rewritten with the
    reparameterisation ``z_k = mu_φ + sigma_φ eps_k`` (the identity
    ``E_q[f(z) ∇_φ log q_φ(z)] = E_eps[∇_z f(z) ∂z/∂φ]`` applied to ``f = w~_k``):

    .. math::
        \nabla_\phi \mathcal{L} = -\sum_k \big(\tilde w_k - \tilde w_k^2\big)\,
            \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi},
        \qquad \log w_k = \log p_\theta(x, z_k) - \log q_{sg(\phi)}(z_k|x).

    Implementation: ``loss = -(logsumexp_k log w_k - log K)`` with reparameterised ``z``
    and q's parameters stopped inside ``log w``. Its θ-gradient is IWAE's; its gradient
    into ``z_k`` is ``-w~_k ∂log w_k/∂z_k``, which a hook on ``z`` multiplies by
    ``(1 - w~_k)`` to give the formula above (the weights are known only after the
    decoder has run, hence a hook rather than a forward-time rescaling).

    Caveats: unbiased for the same K-sample SNIS surrogate as ``rws`` (same mean, lower
    variance; it vanishes when q equals the posterior, where the score-function form does
    not), but it needs ∂log p(x, z)/∂z, i.e. a backward pass through the decoder into z,
    and a continuous, reparameterisable latent. ``loss`` has the value of −IWAE_K.
    """
    k = check_positive_int("k", k)
    mu, logvar = checked_posterior(model, x)
    eps = standard_normal(k, mu, None)
    z = mu + torch.exp(0.5 * logvar) * eps  # reparameterised: the encoder's only path
    log_lik, log_prior = checked_log_joint(model, x, z)
    log_q = log_prob(z, mu.detach(), logvar.detach())
    log_w = log_lik + log_prior - log_q  # [K, B]
    w = torch.softmax(log_w.detach(), 0)
    if z.requires_grad:
        z.register_hook(lambda grad: grad * (1.0 - w).unsqueeze(-1))
    bound = torch.logsumexp(log_w, 0) - math.log(k)
    return {"loss": -bound.mean(), "ess": _ess(log_w.detach()).mean()}


@OBJECTIVES.register("msc")
class MarkovianScoreClimbing:
    r"""Markovian Score Climbing with the conditional importance sampling (CIS) kernel
    (Naesseth, Lindsten & Blei 2020, "Markovian Score Climbing: Variational Inference with
    KL(p‖q)", Alg. 2 with Rao-Blackwellisation).

    Each training example n keeps a latent ``z[n]`` (the chain state) across steps and
    epochs. A step on example n draws K fresh ``z_2..z_{K+1} ~ q(z|x_n)``, puts the
    retained ``z_1 = z[n]`` beside them, weighs all K+1 by ``w_s = p(x, z_s) / q(z_s|x)``
    under the *current* model and encoder, and moves the chain to ``z_J``,
    ``J ~ Categorical(w~)``. This kernel leaves p(z|x) invariant for any q, so the chain
    state tends to exact posterior samples. Updates, from a single scalar loss:

    * encoder: ``∇_φ = -Σ_s w~_s ∇_φ log q_φ(z_s|x)`` (``rao_blackwell=True``, default) or
      ``-∇_φ log q_φ(z_J|x)`` (the plain estimator of the paper's Alg. 2): a stochastic
      gradient of KL(p(z|x) ‖ q);
    * decoder: ``∇_θ = -Σ_s w~_s ∇_θ log p_θ(x, z_s)`` (or ``-∇_θ log p_θ(x, z_J)``), Fisher's
      identity ``∇_θ log p_θ(x) = E_{p(z|x)}[∇_θ log p_θ(x, z)]`` with the same chain.

    On an example's first visit there is no retained sample and the step is plain
    sampling-importance-resampling over the K fresh samples.

    ``loss`` has the value of −IWAE_K over the K fresh samples (a stochastic lower bound
    comparable with the other objectives); the gradients come from zero-valued surrogates.
    Also logged: ``ess`` (of the K+1 CIS weights), ``chain_moved`` (fraction of examples
    whose chain left its retained sample) and ``wake_phi_nats``.

    Caveats: the gradients are biased at any finite time because the chain state lags
    behind the moving target, but MSC is asymptotically unbiased — with step sizes
    satisfying Robbins–Monro it converges to a local optimum of the forward KL, unlike
    RWS, whose SNIS bias stays for fixed K. Each example is visited once per epoch, so
    the chain mixes slowly in epochs (a chain that rarely moves, ``chain_moved`` ≈ 0,
    means q is too narrow for the retained sample to be beaten). The state costs
    ``N × Z`` floats. A step skipped by ``train`` for a NaN/inf gradient still moves the
    chain (a valid CIS move). Under DistributedDataParallel each process keeps its own
    chain states and the checkpoint holds rank 0's, so a resumed multi-process MSC run is
    not exact.
    """

    def __init__(self, num_examples: int | None = None):
        self.num_examples = num_examples
        self.z: Tensor | None = None  # [N, Z] chain state
        self.visited: Tensor | None = None  # [N] bool: has example n a retained sample?

    def __call__(self, model, x: Tensor, *, index: Tensor | None = None, k: int = 5,
                 rao_blackwell: bool = True) -> dict[str, Tensor]:
        k = check_positive_int("k", k)
        if index is None:
            raise ValueError("the msc objective keeps one chain per training example and needs the "
                             "batch's dataset positions: call it as objective(model, x, index=...)")
        mu, logvar = checked_posterior(model, x)
        self._allocate(mu, index)
        index = index.to(mu.device)
        fresh = (mu + torch.exp(0.5 * logvar) * standard_normal(k, mu, None)).detach()  # [K, B, Z]
        retained = self.z[index].to(mu.dtype)
        z = torch.cat([retained[None], fresh])  # [K+1, B, Z]; slot 0 is the chain state
        log_lik, log_prior = checked_log_joint(model, x, z)
        log_q = log_prob(z, mu, logvar)
        log_p = log_lik + log_prior
        log_w = log_p.detach() - log_q.detach()
        seen = self.visited[index]
        log_w[0] = torch.where(seen, log_w[0], torch.full_like(log_w[0], -math.inf))
        w = torch.softmax(log_w, 0)  # CIS weights [K+1, B]
        gumbel = -torch.log(-torch.log(torch.rand(log_w.shape, dtype=log_w.dtype, device=log_w.device)))
        j = torch.argmax(log_w + gumbel, 0)  # J ~ Categorical(w~), Gumbel-max: no error on NaN rows
        cols = torch.arange(len(j), device=j.device)
        if rao_blackwell:
            surrogate = -(w * (log_p + log_q)).sum(0)
        else:
            surrogate = -(log_p[j, cols] + log_q[j, cols])
        ok = torch.isfinite(w).all(0)  # a NaN/inf row keeps its old state
        self.z[index[ok]] = z[j, cols][ok].detach().to(self.z.dtype)
        self.visited[index[ok]] = True
        bound = torch.logsumexp(log_w[1:], 0) - math.log(k)
        return {"loss": -bound.mean() + _value_zero(surrogate).mean(),
                "ess": _ess(log_w).mean(),
                "chain_moved": ((j != 0) & seen).to(mu.dtype).sum() / seen.sum().clamp_min(1),
                "wake_phi_nats": -(w * log_q.detach()).sum(0).mean()}

    def _allocate(self, mu: Tensor, index: Tensor) -> None:
        n = self.num_examples if self.num_examples is not None else int(index.max()) + 1
        if self.z is None:
            self.z = torch.zeros(n, mu.shape[1], dtype=mu.dtype, device=mu.device)
            self.visited = torch.zeros(n, dtype=torch.bool, device=mu.device)
        elif self.z.device != mu.device:  # restored from a checkpoint (kept on the CPU)
            self.z, self.visited = self.z.to(mu.device), self.visited.to(mu.device)
        if self.z.shape[1] != mu.shape[1]:
            raise ValueError(f"msc chain state has {self.z.shape[1]} latent dims, the model {mu.shape[1]}")
        if len(index) and int(index.max()) >= len(self.z):
            raise ValueError(f"msc: index {int(index.max())} is out of range for {len(self.z)} chain states")

    def state_dict(self) -> dict:
        """The chain states, on the CPU (``{}`` before the first step)."""
        if self.z is None:
            return {}
        return {"z": self.z.detach().cpu().clone(), "visited": self.visited.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.z = self.visited = None
            return
        self.z, self.visited = state["z"].clone(), state["visited"].clone().bool()
        if self.num_examples is not None and len(self.z) != self.num_examples:
            raise ValueError(f"msc chain state holds {len(self.z)} examples, this run has {self.num_examples}")
