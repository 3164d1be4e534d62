r"""A hierarchical VAE with top-down inference (Sønderby, Raiko, Maaløe, Sønderby & Winther
2016, "Ladder Variational Autoencoders"), the model family of Havtorn, Frellsen, Hauberg
& Maaløe (ICML 2021), "Hierarchical VAEs Know What They Don't Know".

L stochastic layers ``z_1`` (lowest, next to the image) … ``z_L`` (top), each a diagonal
Gaussian vector of ``Z_i`` numbers.

* Generative model (top-down): ``p(z_L) = N(0, I)``,
  ``p(z_i | z_{i+1}) = N(mu_p,i(z_{i+1}), diag exp(logvar_p,i(z_{i+1})))`` by a small MLP,
  and the decoder likelihood ``p(x | z_1)`` (any of vaeood's likelihoods).
* Inference: a deterministic bottom-up path ``d_1 = trunk(x)``, ``d_{i+1} = up_i(d_i)``
  gives each layer a Gaussian "likelihood term" ``(mu_q,i, logvar_q,i) = head_i(d_i)``;
  the posterior is built top-down, in the same order as the generative model, by the
  LVAE precision-weighted merge of that term with the conditional prior:

  .. math::
      \sigma_i^{-2} = \sigma_{q,i}^{-2} + \sigma_{p,i}^{-2}, \qquad
      \mu_i = \sigma_i^2 \big(\mu_{q,i}\sigma_{q,i}^{-2} + \mu_{p,i}\sigma_{p,i}^{-2}\big),
      \qquad q(z_i \mid z_{>i}, x) = N(\mu_i, \sigma_i^2),

  and ``q(z_L | x) = N(mu_q,L, sigma_q,L^2)`` at the top. So
  ``q(z|x) = q(z_L|x) Π_{i<L} q(z_i|z_{i+1}, x)`` and ``q(z_{>k}|x)`` does not depend on the
  layers below k, which is what makes Havtorn et al.'s bound ``L>k`` (``vaeood.inference.llr``) a
  proper lower bound on log p(x).

With ``L = 1`` the model is exactly vaeood's single-layer :class:`~vaeood.models.vae.VAE`
(trunk + head = its encoder, standard-normal prior, same decoder):
:meth:`HierarchicalVAE.from_vae` builds it on a VAE's own modules.

The ELBO and IWAE estimators of :mod:`vaeood.inference.estimators` work with this model through
:meth:`HierarchicalVAE.log_weight_terms` (per-layer ``log q - log p`` and analytic KL at S
samples), so they report the rate per layer; the training loop, resume, DDP and the NaN
guard use it as they use the VAE (objectives ``elbo``, ``iwae`` and ``elbo_warmup``, which adds
the KL warm-up and free nats of Sønderby et al. 2016 and Kingma et al. 2016).

Config (``model.arch = "hvae"``, ``model.arch_options``):

* ``latent_dims``: ``Z_1 … Z_L``, lowest layer first (default
  ``[2·latent_dim, latent_dim, latent_dim // 2]``, i.e. ``[32, 16, 8]`` for the default
  ``model.latent_dim = 16``);
* ``widths``: ``L - 1`` widths, ``widths[i]`` the width of the bottom-up block above layer
  ``i + 1`` and of the hidden layer of the MLP for ``p(z_{i+1} | z_{i+2})`` (default 256 each);
* ``trunk``: ``"conv"`` (default; vaeood's conv encoder/decoder with ``model.base_channels``)
  or ``"mlp"`` (``model.hidden_dim``), the image-side networks of layer 1;
* ``bottom``: ``"dense"`` (default: ``z_1`` a vector) or ``"spatial"`` (conv trunk only: ``z_1``
  has ``latent_dims[0]`` channels at a quarter of the image's height and width, as the
  convolutional lowest layer of Havtorn et al.'s HVAE, 8×7×7 for 28×28 images).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..infra.errors import ConfigError
from ..inference.gaussian import kl_to_standard_normal, log_prob, log_prob_from_eps, log_standard_normal
from ..inference.noise import ImageNoise
from .conv import MIN_STAGES, OutputConvTranspose2d, check_divisible, conv_decoder, conv_encoder
from .likelihoods import Likelihood
from .mlp import mlp_decoder, mlp_encoder


__all__ = ["HierarchicalVAE", "build_hvae"]


def _kl_gaussians(mu: Tensor, logvar: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    r"""KL(N(mu, e^logvar) ‖ N(mu_p, e^logvar_p)) summed over the last dim:
    ``½ Σ (logvar_p − logvar + (e^logvar + (mu − mu_p)²) e^{−logvar_p} − 1)``."""
    return 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0).sum(-1)


class HierarchicalVAE(nn.Module):
    """L-layer top-down VAE (see the module docstring). Inputs are uint8 ``[B, C, H, W]``.

    Modules: ``trunk`` (x in [0, 1] → d_1), ``up[i]`` (d_{i+1} → d_{i+2}), ``q_heads[i]``
    (d_{i+1} → 2·Z_{i+1}: bottom-up mean and log-variance of layer i + 1), ``p_heads[i]``
    (z_{i+2} → 2·Z_{i+1}: the conditional prior of layer i + 1), ``decoder`` (z_1 → the
    likelihood's parameters). Lists are indexed from the lowest layer.
    """

    def __init__(self, trunk: nn.Module, up: list[nn.Module], q_heads: list[nn.Module], p_heads: list[nn.Module],
                 decoder: nn.Module, likelihood: Likelihood, latent_dims, image_shape):
        super().__init__()
        latent_dims = tuple(int(z) for z in latent_dims)
        n = len(latent_dims)
        if n < 1 or len(q_heads) != n or len(up) != n - 1 or len(p_heads) != n - 1:
            raise ValueError(f"a {n}-layer HVAE needs {n} q heads, {n - 1} up blocks and {n - 1} p heads, got "
                             f"{len(q_heads)}, {len(up)} and {len(p_heads)}")
        self.trunk = trunk
        self.up = nn.ModuleList(up)
        self.q_heads = nn.ModuleList(q_heads)
        self.p_heads = nn.ModuleList(p_heads)
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dims = latent_dims
        self.latent_dim = sum(latent_dims)
        self.image_shape = tuple(image_shape)
        self._elements_per_sample: int | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_vae(cls, vae) -> HierarchicalVAE:
        """A one-layer HVAE on a single-layer VAE's own modules (shared, not copied): the
        encoder minus its last (linear) layer is the trunk, that layer the head, the decoder
        and likelihood are the VAE's. Its bounds equal the VAE's for the same noise."""
        layers = list(vae.encoder.children())
        return cls(nn.Sequential(*layers[:-1]), [], [layers[-1]], [], vae.decoder, vae.likelihood,
                   [vae.latent_dim], vae.image_shape)

    # -- properties the estimators and scoring use --------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.latent_dims)

    @property
    def num_dims(self) -> int:
        """D = C·H·W, the number of 8-bit values per image (for bits/dim)."""
        return math.prod(self.image_shape)

    @property
    def elements_per_sample(self) -> int:
        """Tensor elements one (image, sample) pair allocates in the top-down pass and the
        decoder (measured once with forward hooks, as ``VAE.elements_per_sample``), plus
        four per latent number (z, the merged mean and log-variance, the noise). The IWAE
        estimator sizes its chunks by it."""
        if self._elements_per_sample is None:
            sizes = []

            def record(module, inputs, output):
                if not any(isinstance(i, Tensor) and i.data_ptr() == output.data_ptr() for i in inputs):
                    sizes.append(output.numel())

            nets = [*self.p_heads, self.decoder]
            leaves = [m for net in nets for m in net.modules() if next(m.children(), None) is None]
            hooks = [m.register_forward_hook(record) for m in leaves]
            weight = next(self.decoder.parameters())
            try:
                with torch.no_grad():
                    for i, head in enumerate(self.p_heads):
                        head(torch.zeros(1, self.latent_dims[i + 1], device=weight.device, dtype=weight.dtype))
                    self.decoder(torch.zeros(1, self.latent_dims[0], device=weight.device, dtype=weight.dtype))
            finally:
                for hook in hooks:
                    hook.remove()
            self._elements_per_sample = 4 * self.latent_dim + sum(sizes)
        return self._elements_per_sample

    # -- inference and generation ----------------------------------------------------------
    def posterior(self, x: Tensor):
        raise TypeError("a hierarchical VAE has no single Gaussian posterior (mu, logvar): its q(z|x) is built "
                        "top-down, layer by layer. Use model.encode / model.log_weight_terms, or the estimators "
                        "elbo and iwae and the objectives elbo, iwae and elbo_warmup, which support it")

    def encode(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The bottom-up path: ``[(mu_q,i, logvar_q,i)]`` for i = 1 … L (lowest first), each
        ``[B, Z_i]`` in fp32. Layer L's pair is its posterior; the others are merged with the
        conditional prior in :meth:`log_weight_terms`."""
        d = self.trunk(x.float() / 255.0)
        out = []
        for i, head in enumerate(self.q_heads):
            if i:
                d = self.up[i - 1](d)
            mu, logvar = head(d).float().chunk(2, dim=-1)  # fp32 even under bf16 autocast
            out.append((mu, logvar))
        return out

    def draw_noise(self, samples: int, batch: int, like: Tensor, generator: torch.Generator | None = None
                   ) -> list[Tensor]:
        """Standard-normal noise ``[S, B, Z_i]`` per layer (lowest first), drawn sample index by
        sample index and, within one, from the top layer down, one ``[B, Z_i]`` draw each. So a
        sample's noise does not depend on how the samples are chunked, and a one-layer model
        draws exactly what the single-layer VAE's estimators draw. With an
        :class:`vaeood.inference.noise.ImageNoise` as ``generator``, each image's rows (all layers,
        top first, in one row) come from its own stream, keyed on its bytes and the seed."""
        if isinstance(generator, ImageNoise):
            rows = generator.normal(samples, sum(self.latent_dims), like)  # [S, B, Z_L + … + Z_1]
            return list(rows.split(list(reversed(self.latent_dims)), dim=-1))[::-1]
        per_sample = []
        for _ in range(samples):
            draws = [torch.randn((batch, z), dtype=like.dtype, device=like.device, generator=generator)
                     for z in reversed(self.latent_dims)]
            per_sample.append(draws[::-1])
        return [torch.stack([s[i] for s in per_sample]) for i in range(self.num_layers)]

    def conditional_prior(self, i: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu_p, logvar_p)`` of ``p(z_{i+1} | z_{i+2})`` (0-based layer index ``i < L - 1``)
        for ``z_above`` ``[..., Z_{i+2}]``; ``[..., Z_{i+1}]`` each, fp32."""
        lead = z_above.shape[:-1]
        h = self.p_heads[i](z_above.reshape(-1, z_above.shape[-1])).float()
        mu, logvar = h.view(*lead, h.shape[-1]).chunk(2, dim=-1)
        return mu, logvar

    def log_weight_terms(self, x: Tensor, eps: list[Tensor], *, encoded=None, from_prior: int = 0,
                         prior_mean: bool = False) -> dict:
        r"""The pieces of the importance weights at S samples, for the estimators and ``llr``.

        ``eps``: noise per layer ``[S, B, Z_i]`` (lowest first, :meth:`draw_noise`); ``encoded``:
        :meth:`encode`'s output (computed when None). Layers are sampled top-down, ``z_i = mu_i
        + sigma_i eps_i`` from ``q(z_i | z_{i+1}, x)``, except the ``from_prior`` lowest, drawn
        from the prior ``p(z_i | z_{i+1})`` with the same noise (or its mean when ``prior_mean``,
        as Havtorn et al.'s code does): bounds for different ``from_prior`` share their noise.

        Returns ``log_likelihood``: ``[S, B]``, log p(x | z_1); ``log_ratio``: L tensors ``[S, B]``,
        ``log q(z_i | ·) − log p(z_i | ·)`` at the sample (0 for prior-drawn layers); ``kl``: L
        tensors, ``KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1}))`` given the sampled parent (``[B]``
        for the top layer, ``[S, B]`` below; 0 for prior-drawn layers). ``log w = log_likelihood
        − Σ_i log_ratio_i`` is the log weight of the proposal ``q(z_{>k} | x) p(z_{≤k} | z_{>k})``,
        ``k = from_prior``.
        """
        nl = self.num_layers
        if isinstance(from_prior, bool) or int(from_prior) != from_prior or not 0 <= from_prior <= nl:
            raise ValueError(f"from_prior must be an integer in [0, {nl}], got {from_prior!r}")
        if len(eps) != nl:
            raise ValueError(f"eps must hold one noise tensor per layer ({nl}), got {len(eps)}")
        if encoded is None and from_prior < nl:
            encoded = self.encode(x)
        samples, batch = eps[0].shape[:2]
        zero = eps[0].new_zeros(samples, batch)
        log_ratio: list[Tensor] = [zero] * nl
        kl: list[Tensor] = [zero] * nl
        z = None
        for i in reversed(range(nl)):
            e = eps[i]
            top = i == nl - 1
            if top:
                mu_p = logvar_p = None  # standard normal
            else:
                mu_p, logvar_p = self.conditional_prior(i, z)
            if i < from_prior:  # drawn from the (conditional) prior: p and q coincide
                if top:
                    z = torch.zeros_like(e) if prior_mean else e
                else:
                    z = mu_p.expand_as(e) if prior_mean else mu_p + torch.exp(0.5 * logvar_p) * e
                continue
            mu_b, logvar_b = encoded[i]
            if top:
                mu, logvar = mu_b, logvar_b
            else:  # LVAE precision-weighted merge, in log space
                logvar = -torch.logaddexp(-logvar_b, -logvar_p)
                mu = mu_b * torch.exp(logvar - logvar_b) + mu_p * torch.exp(logvar - logvar_p)
            z = mu + torch.exp(0.5 * logvar) * e
            log_q = log_prob_from_eps(e, logvar)
            if top:
                log_p = log_standard_normal(z)
                kl[i] = kl_to_standard_normal(mu, logvar)  # the VAE's expression: L = 1 is bit-exact
            else:
                log_p = log_prob(z, mu_p, logvar_p)
                kl[i] = _kl_gaussians(mu, logvar, mu_p, logvar_p)
            log_ratio[i] = log_q - log_p
        params = self.decoder(z.reshape(samples * batch, -1)).float()  # log-likelihoods stay fp32
        log_lik = self.likelihood.log_prob(params.view(samples, batch, *params.shape[1:]), x)
        return {"log_likelihood": log_lik, "log_ratio": log_ratio, "kl": kl}

    def _top_down_means(self, x: Tensor | None, n: int, generator=None, from_prior: int = 0) -> Tensor:
        """z_1 ``[n, Z_1]`` by the top-down pass (posterior means when ``x`` is given, prior samples otherwise)."""
        device = next(self.parameters()).device
        z = None
        encoded = self.encode(x) if x is not None else None
        for i in reversed(range(self.num_layers)):
            top = i == self.num_layers - 1
            mu_p, logvar_p = (None, None) if top else self.conditional_prior(i, z)
            if encoded is None:
                e = torch.randn(n, self.latent_dims[i], generator=generator, device=device)
                z = e if top else mu_p + torch.exp(0.5 * logvar_p) * e
            else:
                mu_b, logvar_b = encoded[i]
                if top:
                    z = mu_b
                else:
                    logvar = -torch.logaddexp(-logvar_b, -logvar_p)
                    z = mu_b * torch.exp(logvar - logvar_b) + mu_p * torch.exp(logvar - logvar_p)
        return z

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x|z) at the top-down posterior means, floats in [0, 1] (for figures)."""
        return self.likelihood.mean(self.decoder(self._top_down_means(x, len(x))))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Means of p(x|z) for z ~ p(z) (ancestral sampling), floats in [0, 1] (for figures)."""
        return self.likelihood.mean(self.decoder(self._top_down_means(None, n, generator)))


# -- the builder the model registry calls --------------------------------------------------
def _positive_ints(name: str, values, length: int | None = None) -> list[int]:
    if not isinstance(values, (list, tuple)) or not values or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"model.arch_options.{name} must be a non-empty list of positive integers, got {values!r}")
    if length is not None and len(values) != length:
        raise ConfigError(f"model.arch_options.{name} needs {length} entries (one per layer above the lowest), "
                          f"got {len(values)}: {values!r}")
    return [int(v) for v in values]


def build_hvae(cfg, image_shape: tuple[int, int, int], likelihood: Likelihood, *, latent_dims=None, widths=None,
               trunk: str = "conv", bottom: str = "dense") -> HierarchicalVAE:
    """The HVAE that ``model.arch = "hvae"`` and ``model.arch_options`` describe (see the
    module docstring for the options and their defaults)."""

    c, h, w = image_shape
    if latent_dims is None:
        z = cfg.latent_dim
        latent_dims = [2 * z, z, max(1, z // 2)]
    latent_dims = _positive_ints("latent_dims", latent_dims)
    n = len(latent_dims)
    widths = _positive_ints("widths", [256] * (n - 1) if widths is None else widths, n - 1) if n > 1 else []
    if trunk not in ("conv", "mlp"):
        raise ConfigError(f"model.arch_options.trunk must be 'conv' or 'mlp', got {trunk!r}")
    if bottom not in ("dense", "spatial"):
        raise ConfigError(f"model.arch_options.bottom must be 'dense' or 'spatial', got {bottom!r}")
    if bottom == "spatial" and trunk != "conv":
        raise ConfigError("model.arch_options.bottom='spatial' needs trunk='conv'")
    ppc = likelihood.params_per_channel
    if trunk == "conv":
        encoder = conv_encoder(c, h, w, cfg.base_channels, latent_dims[0], stages=MIN_STAGES)  # the study's two
    else:
        encoder = mlp_encoder(c, h, w, cfg.hidden_dim, latent_dims[0])
    layers = list(encoder.children())
    if bottom == "dense":
        trunk_net = nn.Sequential(*layers[:-1])  # up to the flattened features
        first_head = layers[-1]
        first_width = layers[-1].in_features
        dims = list(latent_dims)
        decoder = (conv_decoder(c, h, w, cfg.base_channels, dims[0], ppc, stages=MIN_STAGES) if trunk == "conv"
                   else mlp_decoder(c, h, w, cfg.hidden_dim, dims[0], ppc))
    else:
        check_divisible(h, w)
        hq, wq, base = h // 4, w // 4, cfg.base_channels
        channels = latent_dims[0]
        trunk_net = nn.Sequential(*layers[:-2])  # the feature map [2·base, H/4, W/4]
        first_head = nn.Sequential(nn.Conv2d(2 * base, 2 * channels, 3, padding=1), nn.Flatten())
        first_width = 2 * base * hq * wq
        dims = [channels * hq * wq, *latent_dims[1:]]
        decoder = nn.Sequential(
            nn.Unflatten(1, (channels, hq, wq)),
            nn.Conv2d(channels, 2 * base, 3, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * base, base, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            OutputConvTranspose2d(base, c * ppc, 4, stride=2, padding=1),
        )
    up, q_heads, p_heads = [], [first_head], []
    below = first_width
    for i in range(1, n):
        up.append(nn.Sequential(nn.Flatten(), nn.Linear(below, widths[i - 1]), nn.ReLU(inplace=True)))
        q_heads.append(nn.Linear(widths[i - 1], 2 * dims[i]))
        p_heads.append(nn.Sequential(nn.Linear(dims[i], widths[i - 1]), nn.ReLU(inplace=True),
                                     nn.Linear(widths[i - 1], 2 * dims[i - 1])))
        below = widths[i - 1]
    return HierarchicalVAE(trunk_net, up, q_heads, p_heads, decoder, likelihood, dims, image_shape)
