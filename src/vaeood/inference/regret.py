r"""Likelihood regret, batched over images (Xiao, Yan & Amit 2020, "Likelihood Regret: An
Out-of-Distribution Detection Score for Variational Auto-encoder", NeurIPS).

A VAE's encoder is amortised: one network gives q(z|x) for every image, and it was
trained on in-distribution images. The *regret* of an image is how much its bound on
log p(x) improves when the inference for that image alone is optimised with the decoder
fixed:

.. math::
    \mathrm{regret}(x) = \mathcal{B}(x;\ \phi^*_x) - \mathcal{B}(x;\ \phi),
    \qquad \phi^*_x \approx \arg\max_{\phi'} \mathrm{ELBO}(x;\ \phi'),

where :math:`\mathcal{B}` is the ELBO or the IWAE-K bound (the paper: IWAE-1000, written
as NLL before minus NLL after) and :math:`\phi'` the per-image inference parameters.
In-distribution images gain little (the encoder already fits them); out-of-distribution
images gain more. Higher = more out-of-distribution.

The reference code optimises a deep copy of the whole encoder for one image at a time
(Adam, lr 2e-4, weight decay 5e-5, 100 steps of the single-sample ELBO), one optimisation
run per image. Here every image in the batch gets its own inference parameters and
its own optimiser state, optimised together by minimising the *sum* of the per-image
negative ELBOs: the gradient of that sum with respect to image b's parameters is the
gradient of image b's loss alone, and the optimisers allowed (Adam, AdamW, SGD,
RMSprop, Adagrad) update each parameter element from its own gradient history, so no
image influences another. Variants (``variant=``):

* ``"head"`` (default): per-image copies of the encoder's last ``layers`` parameterised
  modules (default 1: the linear layer that emits ``(mu, logvar)``), the rest of the
  encoder shared and frozen. For one linear layer under Adam this has a closed form
  (:func:`feature_scale`): it *is* Adam on the image's ``(mu, logvar)`` with the step
  scaled by ``1 + ||h||_1``, h the layer's input, so it costs no more than
  ``"posterior"``; deeper heads run with ``torch.func.functional_call`` + ``vmap``;
* ``"posterior"``: the per-image Gaussian parameters ``(mu, logvar)`` directly,
  initialised from the encoder, one step size for all images — 2·Z numbers per image
  (Cremer, Li & Duvenaud 2018's local inference);
* ``"encoder"``: per-image copies of the whole encoder, as in the paper, with the
  paper's settings by default (with ``vmap=False`` a plain loop over images, for
  checking the vectorised version). Memory: 4 × encoder size per image.

How the variants and step sizes compare in speed and AUROC, and why ``"head"`` is the
default, is measured by ``benchmarks/regret_speed.py`` (BENCHMARKS.md, *Likelihood regret*;
docs/detectors.md). Too large a step can make an in-distribution bound *worse* after
optimisation, which is a sharpness score, not a regret: ``keep_start`` (default for
``"head"``/``"posterior"``) then reports 0 for it.

The encoder variants need ``model.encoder`` (an ``nn.Module``) that ``model.posterior``
calls; ``"posterior"`` needs only the duck-typed protocol of :mod:`vaeood.inference.estimators`
(``posterior``, ``log_likelihood``, ``log_prior``).

The optimised loss is the paper's: the negative ELBO with ``samples`` reparameterised
draws for the reconstruction term and the closed-form KL to **N(0, I)** (it assumes a
standard-normal prior, as :func:`vaeood.inference.estimators.elbo` with ``kl="analytic"``). The
bound before and after is computed on the **same** noise (common random numbers), which
cancels most of the Monte-Carlo error of the difference; at ``steps=0`` the regret is
exactly 0. Non-finite gradient elements are set to 0 (that image's step is skipped
elementwise, others are untouched); an image whose bound is non-finite after the
optimisation gets NaN and a warning in the log.

**Randomness and batch independence.** The noise of an image comes from generators
seeded by the image's bytes and the seed (:func:`vaeood.inference.noise.image_normals`; the seed is
an :class:`vaeood.inference.noise.ImageNoise`'s, ``generator.initial_seed()``, or torch's default seed when
``generator`` is None) — not from the generator's running state — so an image's scores
do not depend on its batch, its position in it, or on earlier calls: a batched score
equals the one-image score for the same image and seed, up to float rounding of batched
kernels. Identical images get identical noise. Optimisation noise and bound noise come
from separate streams, so changing ``steps`` does not change the bound's samples.

Caveats: the regret is a difference of two stochastic bounds, so it can be slightly
negative (Monte-Carlo error, or an optimiser step that overshoots); a few optimisation
steps find a local improvement only, and the score depends on the optimiser budget
(defaults measured in ``benchmarks/regret_speed.py``). The whole-encoder variant holds
an encoder copy plus Adam state per image: memory grows as 4 × encoder size × batch, so
use ``batch_size`` to bound it.

**Arguments of** :func:`likelihood_regret`:

* ``x``: images ``[B, ...]`` as ``model.posterior`` takes them (uint8 ``[B, C, H, W]``
  for :class:`vaeood.models.VAE`);
* ``variant``: ``"head"`` (default), ``"posterior"`` or ``"encoder"``;
* ``steps``, ``lr``, ``weight_decay``, ``keep_start``, ``k``: None takes the variant's
  entry in ``DEFAULTS`` (``"head"``: 5 Adam steps of 1e-3, IWAE-8, keep_start);
  ``optimizer``: a name in ``OPTIMIZERS``, with extra keyword
  arguments in ``optimizer_options`` (e.g. ``{"betas": (0.9, 0.999)}``);
* ``samples``: reparameterised draws per step in the optimised negative ELBO;
* ``loss``: the gradient estimator of the optimised ELBO: ``"elbo"`` (the paper's:
  reconstruction by ``samples`` draws, closed-form KL to N(0, I)) or ``"stl"``
  ("sticking the landing", Roeder, Wu & Duvenaud 2017: ``log p(x, z) - log q(z)``
  with q's parameters held fixed inside ``log q``, so the gradient flows through z
  only; its variance vanishes where q equals the posterior);
* ``bound``: ``"iwae"`` (:math:`\operatorname{logsumexp}_k \log w_k - \log K`) or
  ``"elbo"`` (:math:`\frac1K\sum_k \log p(x|z_k) - \mathrm{KL}(q\,\|\,N(0, I))`),
  with ``k`` samples, the same samples before and after;
* ``layers``: for ``"head"``, how many trailing parameterised modules of the
  encoder are copied per image;
* ``head_exact``: for ``"head"`` with ``layers=1``, Adam/AdamW without weight decay
  and a last ``nn.Linear`` layer, the per-image weight copies are replaced by their
  exact equivalent, per-image ``(mu, logvar)`` with the step scaled by
  ``1 + ||h||_1`` (see :func:`feature_scale`): no per-image weights in memory and
  faster (``benchmarks/regret_speed.py``); True forces the weight copies (same
  numbers up to Adam's epsilon);
* ``keep_start``: the regret estimates a supremum over inference parameters, so the
  start is a candidate too: ``bound_after = max(bound at the end, bound before)`` and
  the regret is ``>= 0``; False (the paper) reports the last iterate, which can be
  worse than the start when the step size is large;
* ``vmap``: for the encoder variants, ``torch.func.vmap`` over the per-image copies
  (False: a loop over images, same numbers up to rounding);
* ``batch_size``: images optimised together (None: all of ``x``); a memory bound
  only, the scores do not depend on it;
* ``max_elements``: bound on decoded elements per chunk of bound samples.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import Tensor, nn

from . import gaussian
from .estimators import checked_log_joint, checked_posterior
from .gaussian import check_positive_int, kl_to_standard_normal, log_prob_from_eps
from .noise import image_normals, noise_seed
from ..infra.progress import bar

__all__ = ["likelihood_regret", "VARIANTS", "OPTIMIZERS", "DEFAULTS"]

logger = logging.getLogger(__name__)

VARIANTS = ("posterior", "head", "encoder")

# elementwise optimisers only: each parameter element's update depends on its own gradient
# history, so per-image parameters optimised on a sum of per-image losses stay independent
# (LBFGS, with its global line search, would not)
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}

# per-variant defaults for the options left as None. "head" and "posterior": measured on
# held-out tuning images (Fashion-MNIST train after the model's data.limit vs MNIST train)
# in benchmarks/regret_speed.py --sweep (BENCHMARKS.md, "Likelihood regret"); "encoder": the
# paper's settings (Adam, betas (0.9, 0.999), IWAE-1000 before and after, last iterate)
DEFAULTS: dict[str, dict] = {
    "posterior": {"steps": 10, "lr": 0.5, "weight_decay": 0.0, "keep_start": True, "k": 16},
    "head": {"steps": 5, "lr": 1e-3, "weight_decay": 0.0, "keep_start": True, "k": 8},
    "encoder": {"steps": 100, "lr": 2e-4, "weight_decay": 5e-5, "keep_start": False, "k": 1000},
}


def likelihood_regret(model, x: Tensor, *, generator: torch.Generator | None = None, variant: str = "head",
                      steps: int | None = None, lr: float | None = None, optimizer: str = "adam",
                      weight_decay: float | None = None, optimizer_options: dict | None = None, samples: int = 1,
                      loss: str = "elbo", bound: str = "iwae", k: int | None = None, layers: int = 1,
                      head_exact: bool = False, keep_start: bool | None = None, vmap: bool = True,
                      batch_size: int | None = None, max_elements: int = 2**22) -> dict[str, Tensor]:
    r"""Likelihood regret of each image of ``x`` (uint8 ``[B, C, H, W]`` for
    :class:`vaeood.models.VAE`), in nats; the module docstring gives the method and, under
    *Arguments*, every option.

    Returns ``{"regret_nats", "bound_before_nats", "bound_after_nats"}``, each ``[B]``,
    with ``regret = after - before``. Needs grad mode (it enables it internally); it
    neither changes the model's parameters nor its train/eval mode — call
    ``model.eval()`` first, as the paper does.
    """
    steps, lr, weight_decay, keep_start, k = _checked_settings(variant, optimizer, loss, bound, steps, lr,
                                                               weight_decay, keep_start, k)
    samples = check_positive_int("samples", samples)
    k = check_positive_int("k", k)
    layers = check_positive_int("layers", layers)
    max_elements = check_positive_int("max_elements", max_elements)
    opt_kwargs = dict(optimizer_options or {})
    opt_kwargs.update(lr=float(lr), weight_decay=float(weight_decay))
    opt_class = OPTIMIZERS[optimizer]

    seed = noise_seed(generator)
    n = x.shape[0]
    step = n if batch_size is None else check_positive_int("batch_size", batch_size)
    parts = []
    for start in range(0, n, max(step, 1)):
        xb = x[start:start + step]
        parts.append(_regret_batch(model, xb, seed=seed, variant=variant, steps=int(steps),
                                   opt_class=opt_class, opt_kwargs=opt_kwargs, samples=samples,
                                   loss=loss, bound=bound, k=k, layers=layers, use_vmap=vmap,
                                   head_exact=head_exact,
                                   max_elements=max_elements))
    if not parts:  # empty batch
        empty = x.new_zeros((0,), dtype=torch.float32)
        return {"regret_nats": empty, "bound_before_nats": empty, "bound_after_nats": empty}
    before = torch.cat([p[0] for p in parts])
    after = torch.cat([p[1] for p in parts])
    if keep_start:
        after = torch.where(after > before, after, before)  # a NaN end keeps the start
    bad = ~torch.isfinite(after)
    if bad.any():
        logger.warning("likelihood_regret: %d of %d images have a non-finite bound after "
                       "optimisation (regret NaN); lower lr", int(bad.sum()), n)
    return {"regret_nats": after - before, "bound_before_nats": before, "bound_after_nats": after}



def _checked_settings(variant, optimizer, loss, bound, steps, lr, weight_decay, keep_start, k):
    """:func:`likelihood_regret`'s choices checked, and its settings with the variant's
    ``DEFAULTS`` for those left None: ``(steps, lr, weight_decay, keep_start, k)``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if loss not in ("elbo", "stl"):
        raise ValueError(f"loss must be 'elbo' or 'stl', got {loss!r}")
    if bound not in ("elbo", "iwae"):
        raise ValueError(f"bound must be 'elbo' or 'iwae', got {bound!r}")
    defaults = DEFAULTS[variant]
    steps = defaults["steps"] if steps is None else steps
    lr = defaults["lr"] if lr is None else lr
    weight_decay = defaults["weight_decay"] if weight_decay is None else weight_decay
    keep_start = defaults["keep_start"] if keep_start is None else bool(keep_start)
    k = defaults["k"] if k is None else k
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    return steps, lr, weight_decay, keep_start, k


likelihood_regret.needs_grad = True  # the feature protocol: run without torch.no_grad()


# -- bounds -----------------------------------------------------------------------------------
def _bound(model, x, mu: Tensor, logvar: Tensor, eps: Tensor, bound: str, max_elements: int) -> Tensor:
    """IWAE-K or ELBO (analytic KL) of q = N(mu, diag e^logvar) at the given ``eps [K, B, Z]``."""
    k, batch, latent = eps.shape
    per_sample = getattr(model, "elements_per_sample", None) or (latent + (x[0].numel() if batch else 0))
    chunk = max(1, max_elements // max(1, batch * int(per_sample)))
    std = torch.exp(0.5 * logvar)
    acc = None
    for start in range(0, k, chunk):
        e = eps[start:start + chunk]
        z = mu + std * e
        if bound == "iwae":
            log_lik, log_prior = checked_log_joint(model, x, z)
            log_q = log_prob_from_eps(e, logvar)
            part = torch.logsumexp(log_lik + log_prior - log_q, dim=0)
            acc = part if acc is None else torch.logaddexp(acc, part)
        else:
            part = model.log_likelihood(x, z).sum(0)
            acc = part if acc is None else acc + part
    if bound == "iwae":
        return acc - math.log(k)
    return acc / k - kl_to_standard_normal(mu, logvar)


# -- the per-image inference parameters --------------------------------------------------------
class _PosteriorCall(nn.Module):
    """Wraps ``model.posterior`` as a forward, so ``functional_call`` can swap encoder weights."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.posterior(x)


def _encoder_param_names(model, variant: str, layers: int) -> list[str]:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"variant {variant!r} needs model.encoder (an nn.Module) used by model.posterior; "
                         "use variant='posterior' for other models")
    owners = [name for name, m in encoder.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError("model.encoder has no parameters")
    if variant == "head":
        if layers > len(owners):
            raise ValueError(f"layers={layers} but the encoder has {len(owners)} parameterised modules")
        owners = owners[-layers:]
    names = []
    for owner in owners:
        module = encoder.get_submodule(owner) if owner else encoder
        names += [f"model.encoder.{owner + '.' if owner else ''}{p}" for p, _ in module.named_parameters(recurse=False)]
    return names


def feature_scale(model, x, latent: int) -> Tensor | None:
    r"""``1 + ||h_b||_1`` ``[B, 1]``, h_b the input of the encoder's last layer for image b,
    or None when that layer is not an ``nn.Linear`` emitting the 2·Z posterior parameters.

    Why: let the last layer be ``o = W h + c`` with a per-image copy (W, c) optimised by
    Adam with h fixed (the rest of the encoder frozen). Its gradients are rank one,
    ``∂L/∂W = g h^T`` and ``∂L/∂c = g`` for ``g = ∂L/∂o``, so Adam's moments factorise,
    ``m_ij = m_i h_j``, ``v_ij = v_i h_j^2``, and (for Adam's epsilon → 0, no weight decay)
    its update is ``ΔW_ij = -η sign(h_j) m_i/√v_i``, ``Δc_i = -η m_i/√v_i``: the output moves by
    ``Δo_i = -η (1 + ||h||_1) m_i/√v_i``, which is Adam on o itself with the step size
    ``η (1 + ||h||_1)``. Adam is invariant to the scale of the gradient, so optimising u in
    ``o = o_0 + s u`` with step η gives exactly that step on o.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        return None
    owners = [m for m in encoder.modules() if any(True for _ in m.parameters(recurse=False))]
    last = owners[-1] if owners else None
    if not isinstance(last, nn.Linear) or last.out_features != 2 * latent:
        return None
    seen = []
    hook = last.register_forward_hook(lambda m, inputs, output: seen.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model.posterior(x)
    finally:
        hook.remove()
    if len(seen) != 1:
        return None
    return 1.0 + seen[0].float().abs().flatten(1).sum(-1, keepdim=True)


def _make_encode(model, x, variant: str, layers: int, use_vmap: bool, mu0: Tensor, logvar0: Tensor,
                 scale: Tensor | None = None
                 ) -> tuple[list[Tensor], Callable[[list[Tensor]], tuple[Tensor, Tensor]]]:
    """(initial per-image parameters, encode(params) -> (mu, logvar) [B, Z])."""
    if scale is not None:  # the head's exact equivalent: (mu, logvar) = start + scale * u
        mu0, logvar0, scale = mu0.detach(), logvar0.detach(), scale.to(mu0.dtype)
        return ([torch.zeros_like(mu0), torch.zeros_like(logvar0)],
                lambda p: (mu0 + scale * p[0], logvar0 + scale * p[1]))
    if variant == "posterior":
        return [mu0.detach().clone(), logvar0.detach().clone()], lambda p: (p[0], p[1])
    from torch.func import functional_call

    wrapper = _PosteriorCall(model)
    names = _encoder_param_names(model, variant, layers)
    own = dict(wrapper.named_parameters())
    batch = x.shape[0]
    init = [own[n].detach().unsqueeze(0).expand(batch, *own[n].shape).clone() for n in names]

    def one(params, xi):
        mu, logvar = functional_call(wrapper, dict(zip(names, params, strict=True)), (xi.unsqueeze(0),))
        return mu[0], logvar[0]

    if use_vmap:
        batched = torch.func.vmap(one, in_dims=(0, 0))

        def encode(params):
            return batched(list(params), x)
    else:
        def encode(params):
            outs = [one([p[b] for p in params], x[b]) for b in range(batch)]
            return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
    return init, encode


def _regret_batch(model, x, *, seed, variant, steps, opt_class, opt_kwargs, samples, loss, bound, k,
                  layers, use_vmap, head_exact, max_elements) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        mu0, logvar0 = checked_posterior(model, x)
        eps_bound = image_normals(x, seed, "bound", (k, mu0.shape[1]), mu0)
        before = _bound(model, x, mu0, logvar0, eps_bound, bound, max_elements)
    if steps == 0:
        return before, before.clone()
    scale = None
    if (variant == "head" and layers == 1 and not head_exact and opt_kwargs["weight_decay"] == 0
            and opt_class in (torch.optim.Adam, torch.optim.AdamW)):
        scale = feature_scale(model, x, mu0.shape[1])
    params, encode = _make_encode(model, x, variant, layers, use_vmap, mu0, logvar0, scale)
    eps_opt = image_normals(x, seed, "optimise", (steps, samples, mu0.shape[1]), mu0)
    with torch.enable_grad():
        params = [p.requires_grad_(True) for p in params]
        opt = opt_class(params, **opt_kwargs)
        for t in bar(range(steps), desc=f"regret of {len(x)} images"):
            mu, logvar = encode(params)
            z = mu + torch.exp(0.5 * logvar) * eps_opt[t]  # [S, B, Z]
            if loss == "elbo":
                log_lik = model.log_likelihood(x, z)
                neg_elbo = kl_to_standard_normal(mu, logvar) - log_lik.mean(0)  # [B]
            else:  # sticking the landing: log q at stop-gradient parameters, gradient through z only
                log_lik, log_prior = checked_log_joint(model, x, z)
                log_q = gaussian.log_prob(z, mu.detach(), logvar.detach())
                neg_elbo = (log_q - log_lik - log_prior).mean(0)
            # the sum's gradient w.r.t. image b's parameters is that of image b's loss alone
            grads = torch.autograd.grad(neg_elbo.sum(), params)
            for p, g in zip(params, grads, strict=True):
                p.grad = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
            opt.step()
    with torch.no_grad():
        mu, logvar = encode(params)
        after = _bound(model, x, mu.detach(), logvar.detach(), eps_bound, bound, max_elements)
    return before, after
