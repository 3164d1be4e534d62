"""Decoder likelihoods p(x|z) over 8-bit images.

A likelihood turns the decoder's output tensor (its *parameters*) into a log-probability
of an image of integer pixel values 0..255. Every likelihood here:

* takes ``params`` of shape ``[..., C * P, H, W]`` (``P = params_per_channel``), viewed
  channel-major as ``[..., C, P, H, W]``: the ``P`` parameters of channel ``c`` are the
  contiguous slice ``params[..., c * P:(c + 1) * P, :, :]``;
* takes ``x`` as an integer tensor (``torch.uint8`` for images) of shape
  ``[..., C, H, W]`` whose leading dimensions broadcast against those of ``params``
  (so ``params`` of shape ``[S, B, C*P, H, W]`` and ``x`` of shape ``[B, C, H, W]`` give
  ``[S, B]`` with no copy of ``x``);
* returns log-probabilities in **nats**, summed over channels and pixels
  (``log_prob``) or per sub-pixel (``log_prob_pixels``);
* says with ``normalised`` whether ``log_prob`` is the log of a normalised probability
  mass function over ``{0, ..., 255}^D``. Only then are bits per dimension defined
  (see ``vaeood.inference.estimators.bits_per_dim``).

Floating-point ``x`` is refused: a float image in [0, 1] would otherwise be read as
pixel values 0 and 1 without any error.

Registered names (``LIKELIHOODS``): ``bernoulli``, ``categorical``, ``dlogistic``.

Apart from them, :class:`GaussianFeatureLikelihood` is a density on continuous feature
vectors (the feature VAE of :mod:`vaeood.models.feature_vae`), not on pixels: it is not in
``LIKELIHOODS``, which a run's config picks from for its images.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaeood.inference.gaussian import log_prob as gaussian_log_prob
from vaeood.infra.registry import Registry

__all__ = [
    "LIKELIHOODS",
    "Likelihood",
    "BernoulliLikelihood",
    "CategoricalLikelihood",
    "DiscretizedLogisticLikelihood",
    "GaussianFeatureLikelihood",
    "NUM_LEVELS",
]

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")

NUM_LEVELS = 256
"""Number of values an 8-bit sub-pixel can take."""
#: on a CPU, :meth:`Likelihood.log_prob` sums the per-pixel terms this many images at a time: the
#: dozen elementwise temporaries of a chunk then stay in the processor's cache, where a batch of
#: 1,000 64×64 RGB images streams 49 MB through memory for each (the discretised logistic: 3.4×
#: faster on 2 cores). Each image's terms and sum are computed as before: the same numbers.
CPU_CHUNK_IMAGES = 32


class Likelihood(nn.Module):
    """Base class: a per-pixel likelihood p(x|z) parameterised by the decoder output.

    Subclasses set ``normalised`` and ``params_per_channel`` and implement
    ``_log_prob_pixels`` (on the ``[..., C, P, H, W]`` view) and ``_mean``.
    ``forward`` is ``log_prob``.
    """

    normalised: bool = False
    """True iff ``log_prob`` is a normalised pmf over the 256 values of each sub-pixel."""

    params_per_channel: int = 1
    """The decoder must emit ``channels * params_per_channel`` feature maps."""

    def __init__(self, channels: int, **options):
        super().__init__()
        if options:
            raise TypeError(
                f"{type(self).__name__} got unknown options: {', '.join(sorted(options))}"
            )
        if int(channels) != channels or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        self.channels = int(channels)

    @property
    def out_channels(self) -> int:
        """Number of feature maps the decoder must output: ``channels * params_per_channel``."""
        return self.channels * self.params_per_channel

    # -- public API -------------------------------------------------------------------
    def log_prob_pixels(self, params: Tensor, x: Tensor) -> Tensor:
        """Per-sub-pixel log p(x_i|z) in nats, shape ``[..., C, H, W]`` (broadcast)."""
        p = self._split(params)
        xi = self._check_x(x, p)
        return self._log_prob_pixels(p, xi)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) in nats, summed over channels and pixels.

        ``params`` is ``[..., C*P, H, W]`` float, ``x`` is integer (uint8) ``[..., C, H, W]``
        with values 0..255; returns ``[...]`` (the broadcast leading shape, ``[N]`` for
        ``[N, ...]`` inputs).
        """
        n = params.shape[-4] if params.dim() >= 4 else 0
        if params.device.type != "cpu" or n <= CPU_CHUNK_IMAGES:
            return self.log_prob_pixels(params, x).sum(dim=(-3, -2, -1))
        per_image = x.dim() >= 4 and x.shape[-4] == n  # else x broadcasts whole against every chunk
        return torch.cat([self.log_prob_pixels(params[..., i:i + CPU_CHUNK_IMAGES, :, :, :],
                                               x[..., i:i + CPU_CHUNK_IMAGES, :, :, :] if per_image else x)
                          .sum(dim=(-3, -2, -1)) for i in range(0, n, CPU_CHUNK_IMAGES)], dim=-1)

    def forward(self, params: Tensor, x: Tensor) -> Tensor:  # noqa: D401 - nn.Module hook
        return self.log_prob(params, x)

    def mean(self, params: Tensor) -> Tensor:
        """The mean image ``[..., C, H, W]`` as floats in [0, 1] (for reconstruction figures)."""
        return self._mean(self._split(params)).clamp(0.0, 1.0)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, normalised={self.normalised}"

    # -- helpers ------------------------------------------------------------------------
    def _split(self, params: Tensor) -> Tensor:
        if params.dim() < 3 or params.shape[-3] != self.out_channels:
            raise ValueError(
                f"{type(self).__name__} expects params of shape [..., {self.out_channels}, H, W] "
                f"(channels={self.channels} x params_per_channel={self.params_per_channel}), "
                f"got {tuple(params.shape)}"
            )
        if not params.is_floating_point():
            raise TypeError(f"params must be floating point, got {params.dtype}")
        return params.unflatten(-3, (self.channels, self.params_per_channel))

    def _check_x(self, x: Tensor, p: Tensor) -> Tensor:
        """Validate x (integer levels) against the split params and return it unchanged."""
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(
                "x must hold integer pixel values 0..255 (torch.uint8), got "
                f"{x.dtype}; convert float images in [0, 1] with (x * 255).round().to(torch.uint8)"
            )
        if x.dim() < 3 or x.shape[-3:] != (p.shape[-4], p.shape[-2], p.shape[-1]):
            raise ValueError(
                f"x has shape {tuple(x.shape)}, expected [..., {p.shape[-4]}, {p.shape[-2]}, "
                f"{p.shape[-1]}] to match params"
            )
        return x

    def _log_prob_pixels(self, p: Tensor, x: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def _mean(self, p: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    r"""Bernoulli "likelihood" on grey levels — the study's baseline (Keras-blog VAE).

    One logit ``l`` per sub-pixel; with target ``t = x / 255`` in [0, 1]

    .. math:: \log p(x|z) = \sum_i t_i \log\sigma(l_i) + (1 - t_i)\log(1 - \sigma(l_i))
              = -\mathrm{BCEWithLogits}(l, t),

    computed with ``F.binary_cross_entropy_with_logits`` (stable for any logit).

    **Not a normalised density** (``normalised = False``). A Bernoulli pmf is defined on
    {0, 1}; here it is evaluated at continuous targets in [0, 1]. Summed over the 256 grey
    levels ``exp(log_prob)`` is not one (with ``sigma(l) = 1/2`` every level has
    "probability" 1/2, totalling 128), and the value depends on the image's contrast
    rather than on how probable it is. Its negative is therefore a reconstruction loss,
    not a negative log-likelihood, and **bits per dimension are not defined** for it;
    do not compare its "nats" with those of the normalised decoders.
    """

    normalised = False
    params_per_channel = 1

    def _log_prob_pixels(self, p: Tensor, x: Tensor) -> Tensor:
        logits = p.squeeze(-3)
        target = x.to(logits.dtype) / (NUM_LEVELS - 1)
        shape = torch.broadcast_shapes(logits.shape, target.shape)
        logits, target = logits.expand(shape), target.expand(shape)
        return -F.binary_cross_entropy_with_logits(logits, target, reduction="none")

    def _mean(self, p: Tensor) -> Tensor:
        return torch.sigmoid(p.squeeze(-3))


@LIKELIHOODS.register("categorical")
class CategoricalLikelihood(Likelihood):
    r"""256-way categorical pmf per sub-pixel (van den Oord et al. 2016, PixelRNN).

    256 logits ``l_{i,v}`` per sub-pixel ``i``; channels and pixels independent given z:

    .. math:: \log p(x|z) = \sum_i \big(l_{i,x_i} - \log\textstyle\sum_{v=0}^{255} e^{l_{i,v}}\big).

    Normalised over {0..255} by construction (``log_softmax``); all-zero logits give the
    uniform pmf, ``-D ln 256`` nats, i.e. exactly 8 bits per dimension.
    Params layout per channel: the 256 logits for levels 0..255 in order.
    """

    normalised = True
    params_per_channel = NUM_LEVELS

    def _log_prob_pixels(self, p: Tensor, x: Tensor) -> Tensor:
        logp = torch.log_softmax(p, dim=-3)  # [..., C, 256, H, W]
        lead = torch.broadcast_shapes(logp.shape[:-4], x.shape[:-3])
        logp = logp.expand(*lead, *logp.shape[-4:])
        index = x.long().expand(*lead, *x.shape[-3:]).unsqueeze(-3)  # [..., C, 1, H, W]
        return logp.gather(-3, index).squeeze(-3)

    def _mean(self, p: Tensor) -> Tensor:
        levels = torch.arange(NUM_LEVELS, dtype=p.dtype, device=p.device) / (NUM_LEVELS - 1)
        return torch.einsum("...cvhw,v->...chw", torch.softmax(p, dim=-3), levels)


def _log1mexp_neg(t: Tensor, log_scales: Tensor) -> Tensor:
    """``log(1 - exp(-t))`` for ``t = 2/(255 s) >= 0``, given ``log s``.

    For small ``t`` uses ``log t - t/2 + t^2/24`` with ``log t = log(2/255) - log s``
    (error < 1e-13 below 1e-3), so it is finite — and its gradient is finite — even when
    ``t`` underflows to 0. On a CPU, where no bin is that narrow (the usual case), the
    expansion is not computed at all: the same numbers and gradients with six fewer passes
    over the pixels. Not on a GPU (asking whether any bin is narrow would wait for it) nor
    under torch.compile (the question would break the traced graph; the compiler fuses the
    passes anyway).
    """
    small = t < 1e-3
    if t.device.type == "cpu" and not torch.compiler.is_compiling() and not bool(small.any()):
        return torch.log(-torch.expm1(-t))
    t_safe = torch.where(small, 1.0, t)  # keep the unused branch finite
    large = torch.log(-torch.expm1(-t_safe))
    log_t = math.log(2.0 / (NUM_LEVELS - 1)) - log_scales
    return torch.where(small, log_t - t / 2 + t * t / 24, large)


@LIKELIHOODS.register("dlogistic")
class DiscretizedLogisticLikelihood(Likelihood):
    r"""Discretised logistic (mixture) per sub-pixel (Salimans et al. 2017, PixelCNN++).

    Pixels are rescaled to ``y = 2x/255 - 1`` in [-1, 1]; bin ``x`` covers
    ``[y - 1/255, y + 1/255]`` and the edge bins take the whole tails:

    .. math::
        P(x \mid \mu, s) = \begin{cases}
            \sigma\big((y + 1/255 - \mu)/s\big) & x = 0 \\
            1 - \sigma\big((y - 1/255 - \mu)/s\big) & x = 255 \\
            \sigma\big((y + 1/255 - \mu)/s\big) - \sigma\big((y - 1/255 - \mu)/s\big)
                & \text{otherwise,}
        \end{cases}

    and with ``n_mix = K > 1`` components ``P(x) = \sum_k \pi_k P(x|\mu_k, s_k)``,
    ``\pi = \mathrm{softmax}(\text{mixture logits})``. So ``P`` sums to exactly one over
    the 256 levels (``normalised = True``).

    Log-space evaluation. With ``a = (y + 1/255 - \mu)/s``, ``b = (y - 1/255 - \mu)/s``
    and ``t = a - b = 2/(255 s)`` the interior bin is evaluated through the identity

    .. math:: \log(\sigma(a) - \sigma(b)) = \log\sigma(a) + \log\sigma(-b) + \log(1 - e^{-t}),

    which is exact and stable in both tails (no cancellation of two CDFs near 0 or 1);
    the edges use ``log σ(a)`` and ``log σ(-b) = -softplus(b)``. When the bin is narrow
    relative to the scale (``t < 1e-3``, where ``σ(a) - σ(b)`` would underflow or cancel)
    ``log(1 - e^{-t})`` is replaced by its expansion ``log t - t/2 + t²/24`` with
    ``log t = log(2/255) - log s``: this is PixelCNN++'s mid-bin density fallback
    ``log pdf(y) + log(2/255)`` made exact to second order instead of being switched on
    at a CDF-difference threshold, so normalisation holds even at extreme parameters and
    every branch has a finite gradient. ``log s`` is clamped below at -7 as in PixelCNN++.

    Params per channel: ``n_mix = 1``: ``[mean, log_scale]`` (P = 2); ``n_mix = K > 1``:
    ``[K mixture logits, K means, K log-scales]`` (P = 3K). Means live on the [-1, 1]
    scale. Channels are **independent given z**: there is no autoregressive coupling of
    the colour channels (PixelCNN++ conditions G on R and B on R, G; we do not), and each
    channel has its own mixture weights.
    """

    normalised = True
    min_log_scale = -7.0

    def __init__(self, channels: int, n_mix: int = 1):
        super().__init__(channels)
        if int(n_mix) != n_mix or n_mix < 1:
            raise ValueError(f"n_mix must be a positive integer, got {n_mix!r}")
        self.n_mix = int(n_mix)
        self.params_per_channel = 2 if self.n_mix == 1 else 3 * self.n_mix

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_mix={self.n_mix}"

    def _components(self, p: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """Split ``[..., C, P, H, W]`` into (mixture logits or None, means, log-scales)."""
        if self.n_mix == 1:
            return None, p[..., 0:1, :, :], p[..., 1:2, :, :]
        k = self.n_mix
        return p[..., :k, :, :], p[..., k : 2 * k, :, :], p[..., 2 * k :, :, :]

    def _log_prob_pixels(self, p: Tensor, x: Tensor) -> Tensor:
        mix_logits, means, log_scales = self._components(p)  # each [..., C, K, H, W]
        log_scales = log_scales.clamp(min=self.min_log_scale)
        inv_scale = torch.exp(-log_scales)

        xk = x.unsqueeze(-3)  # [..., C, 1, H, W]; integer
        two_x = 2.0 * xk.to(p.dtype)
        half = 1.0 / (NUM_LEVELS - 1)
        # bin edges computed from the integer level, so the upper edge of bin v equals
        # the lower edge of bin v + 1 bit for bit (the masses telescope).
        upper = (two_x + 1.0) * half - 1.0
        lower = (two_x - 1.0) * half - 1.0
        a = (upper - means) * inv_scale
        minus_b = (means - lower) * inv_scale  # −b for b = (lower − means)/s, exactly (IEEE negation)
        t = (2.0 * half) * inv_scale

        log_cdf_upper = F.logsigmoid(a)  # log P(X <= upper edge): bin 0
        log_sf_lower = F.logsigmoid(minus_b)  # log P(X >= lower edge): bin 255
        log_interior = log_cdf_upper + log_sf_lower + _log1mexp_neg(t, log_scales)

        log_p = torch.where(
            xk == 0,
            log_cdf_upper,
            torch.where(xk == NUM_LEVELS - 1, log_sf_lower, log_interior),
        )
        if mix_logits is None:
            return log_p.squeeze(-3)
        return torch.logsumexp(log_p + torch.log_softmax(mix_logits, dim=-3), dim=-3)

    def _mean(self, p: Tensor) -> Tensor:
        """Mean of the continuous logistic mixture, mapped to [0, 1] (edges not folded in)."""
        mix_logits, means, _ = self._components(p)
        if mix_logits is None:
            m = means.squeeze(-3)
        else:
            m = (torch.softmax(mix_logits, dim=-3) * means).sum(dim=-3)
        return (m + 1.0) / 2.0


class GaussianFeatureLikelihood(nn.Module):
    r"""A diagonal Gaussian **density on continuous features** (not a pmf on 8-bit pixels).

    The decoder gives the mean μ(z) ∈ R^D; the log-variance ℓ is one learned number per
    dimension, shared by every z (``logvar``, starting at 0):

    .. math:: \log p(t|z) = -\tfrac12 \sum_{d=1}^{D} \big[(t_d - \mu_d(z))^2 e^{-\ell_d} + \ell_d + \log 2\pi\big].

    A density on R^D in nats: it can exceed one, it changes with the features' units, and it
    gives no bits per dimension (``normalised = False``: there are no 8-bit values to count;
    ``continuous = True`` says what it is). ``log_prob`` takes float ``mean [..., D]`` and
    float ``x [..., D]`` whose leading dimensions broadcast, and returns ``[...]``.
    """

    normalised = False
    continuous = True

    def __init__(self, dim: int):
        super().__init__()
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.logvar = nn.Parameter(torch.zeros(int(dim)))

    def log_prob(self, mean: Tensor, x: Tensor) -> Tensor:
        """log N(x; mean, diag e^logvar) in nats, summed over the last axis."""
        if not x.is_floating_point():
            raise TypeError(f"x must hold continuous features (a float tensor), got {x.dtype}: this density is "
                            "for feature vectors, not for 8-bit pixels")
        dim = len(self.logvar)
        if mean.shape[-1] != dim or x.shape[-1] != dim:
            raise ValueError(f"GaussianFeatureLikelihood of {dim} features got mean {tuple(mean.shape)} and x "
                             f"{tuple(x.shape)} (expected [..., {dim}] for both)")
        return gaussian_log_prob(x, mean, self.logvar)

    def forward(self, mean: Tensor, x: Tensor) -> Tensor:  # noqa: D401 - nn.Module hook
        return self.log_prob(mean, x)

    def extra_repr(self) -> str:
        return f"dim={len(self.logvar)}, continuous density (no bits/dim)"
