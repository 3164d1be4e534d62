"""Known-answer tests of the decoder likelihoods p(x|z) over 8-bit pixels.

Normalisation is checked by brute force: a batch of 256 one-pixel images, one per value,
scored under the same parameters, must have probabilities summing to one.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaeood.models.likelihoods import (
    CPU_CHUNK_IMAGES,
    LIKELIHOODS,
    BernoulliLikelihood,
    Likelihood,
)

ALL_LEVELS = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)  # 256 images, 1x1x1


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def total_mass(lik: Likelihood, pixel_params: torch.Tensor) -> torch.Tensor:
    """Sum over the 256 values of exp(log_prob) for one 1x1 single-channel pixel."""
    params = pixel_params.reshape(1, -1, 1, 1).expand(256, -1, 1, 1)
    log_p = lik.log_prob(params, ALL_LEVELS)
    assert log_p.shape == (256,)
    assert torch.isfinite(log_p).all() or (log_p == -math.inf).any()
    return torch.logsumexp(log_p.double(), dim=0).exp()


def dlogistic_params(n_mix: int, means, log_scales, logits=None, dtype=torch.float32) -> torch.Tensor:
    means = torch.as_tensor(means, dtype=dtype).reshape(n_mix)
    log_scales = torch.as_tensor(log_scales, dtype=dtype).reshape(n_mix)
    if n_mix == 1:
        return torch.cat([means, log_scales])
    logits = torch.zeros(n_mix, dtype=dtype) if logits is None else torch.as_tensor(logits, dtype=dtype)
    return torch.cat([logits, means, log_scales])


def make(name: str, channels: int = 1, **options) -> Likelihood:
    return LIKELIHOODS.get(name)(channels, **options)


# -- registry and metadata ------------------------------------------------------------------
def test_registry_and_flags():
    assert set(LIKELIHOODS.names()) >= {"bernoulli", "categorical", "dlogistic"}
    assert LIKELIHOODS.get("bernoulli") is BernoulliLikelihood
    assert make("bernoulli").normalised is False
    assert make("categorical").normalised is True
    assert make("dlogistic").normalised is True
    assert make("bernoulli").params_per_channel == 1
    assert make("categorical").params_per_channel == 256
    assert make("dlogistic").params_per_channel == 2
    assert make("dlogistic", n_mix=1).params_per_channel == 2
    assert make("dlogistic", 3, n_mix=5).params_per_channel == 15
    assert make("dlogistic", 3, n_mix=5).out_channels == 45
    with pytest.raises(TypeError):
        make("categorical", n_mix=3)  # unknown option
    with pytest.raises(ValueError):
        make("dlogistic", n_mix=0)
    with pytest.raises(ValueError):
        make("bernoulli", 0)


# -- categorical ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_categorical_is_8_bits_per_dim(dtype):
    c, h, w = 3, 5, 4
    d = c * h * w
    x = torch.randint(0, 256, (6, c, h, w), dtype=torch.uint8, generator=seeded(0))
    log_p = make("categorical", c).log_prob(torch.zeros(6, c * 256, h, w, dtype=dtype), x)
    expected = torch.full((6,), -d * math.log(256.0), dtype=dtype)
    torch.testing.assert_close(log_p, expected, rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)
    bpd = -log_p / (d * math.log(2.0))
    torch.testing.assert_close(bpd, torch.full_like(bpd, 8.0), rtol=1e-6 if dtype == torch.float32 else 1e-14, atol=0)


def test_categorical_gathers_the_right_logit():
    lik = make("categorical", 2)
    logits = torch.randn(3, 2 * 256, 2, 2, generator=seeded(1))
    x = torch.randint(0, 256, (3, 2, 2, 2), dtype=torch.uint8, generator=seeded(2))
    per = lik.log_prob_pixels(logits, x)
    view = logits.view(3, 2, 256, 2, 2)  # channel-major layout
    for n, c, i, j in [(0, 0, 0, 0), (1, 1, 0, 1), (2, 0, 1, 1), (2, 1, 1, 0)]:
        ref = torch.log_softmax(view[n, c, :, i, j], 0)[x[n, c, i, j].long()]
        torch.testing.assert_close(per[n, c, i, j], ref)
    torch.testing.assert_close(lik.log_prob(logits, x), per.sum((1, 2, 3)))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_categorical_normalised(scale):
    lik = make("categorical")
    for seed in range(3):
        logits = torch.randn(256, generator=seeded(seed)) * scale
        torch.testing.assert_close(total_mass(lik, logits).item(), 1.0, rtol=0, atol=1e-5)


# -- discretised logistic -------------------------------------------------------------------
EXTREMES = [
    (0.0, -7.0), (0.0, -20.0), (0.0, 0.0), (0.0, 5.0), (0.0, 100.0),
    (1.0, -7.0), (-1.0, -7.0), (0.999, -5.0), (0.5, -3.0), (-0.3, -6.0),
    (3.0, -1.0), (-40.0, 0.5), (1e4, -7.0), (-1e4, 2.0), (1e6, 50.0),
]


@pytest.mark.parametrize("mean,log_scale", EXTREMES)
def test_dlogistic_normalised_single(mean, log_scale):
    lik = make("dlogistic")
    mass = total_mass(lik, dlogistic_params(1, mean, log_scale))
    torch.testing.assert_close(mass.item(), 1.0, rtol=0, atol=2e-6)


def test_dlogistic_normalised_mixture_extremes():
    lik = make("dlogistic", n_mix=3)
    for mean, log_scale in EXTREMES:
        params = dlogistic_params(3, [mean, -0.5, 0.7], [log_scale, -7.0, 3.0], logits=[40.0, -40.0, 0.0])
        torch.testing.assert_close(total_mass(lik, params).item(), 1.0, rtol=0, atol=2e-6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_mix=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31 - 1),
    mean_scale=st.sampled_from([0.5, 2.0, 50.0]),
    log_scale_shift=st.floats(-12.0, 12.0),
)
def test_dlogistic_normalised_random(n_mix, seed, mean_scale, log_scale_shift):
    lik = make("dlogistic", n_mix=n_mix)
    params = torch.randn(lik.params_per_channel, generator=seeded(seed)) * mean_scale
    # the last n_mix entries are the log-scales (layout: [logits,] means, log-scales)
    params[-n_mix:] = params[-n_mix:] / mean_scale * 2 + log_scale_shift
    torch.testing.assert_close(total_mass(lik, params).item(), 1.0, rtol=0, atol=2e-6)


def _reference_log_dlogistic(mean: float, log_scale: float) -> torch.Tensor:
    """log P(x) for all 256 values as plain CDF differences in 60-digit arithmetic."""
    mp = mpmath.mp.clone()
    mp.dps = 60
    s = mp.exp(max(log_scale, -7.0))
    m = mp.mpf(mean)

    def cdf(edge):  # P(X <= edge)
        return 1 / (1 + mp.exp(-(edge - m) / s))

    def sf(edge):  # P(X > edge), accurate in the upper tail where cdf rounds to 1
        return 1 / (1 + mp.exp((edge - m) / s))

    out = []
    for v in range(256):
        y = mp.mpf(2 * v) / 255 - 1
        lo, hi = y - mp.mpf(1) / 255, y + mp.mpf(1) / 255
        if v == 0:
            mass = cdf(hi)
        elif v == 255:
            mass = sf(lo)
        elif y <= m:
            mass = cdf(hi) - cdf(lo)
        else:
            mass = sf(lo) - sf(hi)
        out.append(float(mp.log(mass)))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(
    "mean,log_scale", [(0.0, -2.0), (0.3, -4.0), (-0.8, -1.0), (0.1, -7.0), (0.2, -9.0), (0.9, 3.0)]
)
def test_dlogistic_matches_high_precision_reference(mean, log_scale):
    """Every bin, tails included, against an arbitrary-precision evaluation (float64)."""
    lik = make("dlogistic")
    params = dlogistic_params(1, mean, log_scale, dtype=torch.float64).reshape(1, 2, 1, 1).expand(256, 2, 1, 1)
    log_p = lik.log_prob(params, ALL_LEVELS)
    ref = _reference_log_dlogistic(mean, log_scale)
    torch.testing.assert_close(log_p, ref, rtol=1e-12, atol=1e-10)


def test_dlogistic_matches_pixelcnnpp_where_no_fallback():
    """Agrees with the PixelCNN++ formulation (Salimans et al. 2017) on ordinary params."""
    lik = make("dlogistic")
    g = seeded(3)
    means = torch.rand(256, generator=g) * 2 - 1
    log_scales = torch.rand(256, generator=g) * 4 - 5
    params = torch.stack([means, log_scales], 1).view(256, 2, 1, 1)
    ours = lik.log_prob(params, ALL_LEVELS)

    x = ALL_LEVELS.view(256).float() / 127.5 - 1
    inv = torch.exp(-log_scales.clamp(min=-7))
    centered = x - means
    plus, minus = inv * (centered + 1 / 255), inv * (centered - 1 / 255)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv * centered
    log_pdf_mid = mid - log_scales - 2 * F.softplus(mid)
    ref = torch.where(
        x < -0.999, plus - F.softplus(plus),
        torch.where(x > 0.999, -F.softplus(minus),
                    torch.where(cdf_delta > 1e-5, cdf_delta.clamp(min=1e-12).log(), log_pdf_mid - math.log(127.5))),
    )
    ordinary = cdf_delta > 1e-3
    torch.testing.assert_close(ours[ordinary], ref[ordinary], rtol=1e-4, atol=1e-4)


def test_dlogistic_edges_take_the_tails():
    lik = make("dlogistic")
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    # a mean far below -1 puts all mass on 0, far above 1 on 255
    low = dlogistic_params(1, -50.0, -3.0).view(1, 2, 1, 1).expand(2, 2, 1, 1)
    high = dlogistic_params(1, 50.0, -3.0).view(1, 2, 1, 1).expand(2, 2, 1, 1)
    torch.testing.assert_close(lik.log_prob(low, x)[0].item(), 0.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(lik.log_prob(high, x)[1].item(), 0.0, atol=1e-6, rtol=0)
    # an enormous scale puts half the mass in each edge bin
    flat = dlogistic_params(1, 0.0, 60.0).view(1, 2, 1, 1).expand(2, 2, 1, 1)
    torch.testing.assert_close(lik.log_prob(flat, x), torch.full((2,), -math.log(2.0)))


def test_dlogistic_log_scale_clamped_at_minus_7():
    lik = make("dlogistic")
    x = torch.full((1, 1, 1, 1), 128, dtype=torch.uint8)
    a = lik.log_prob(dlogistic_params(1, 0.01, -7.0).view(1, 2, 1, 1), x)
    b = lik.log_prob(dlogistic_params(1, 0.01, -30.0).view(1, 2, 1, 1), x)
    assert torch.equal(a, b)


def test_dlogistic_mixture_of_identical_components_is_the_component():
    single, mix = make("dlogistic", 3), make("dlogistic", 3, n_mix=4)
    g = seeded(4)
    mean, log_scale = torch.randn(2, 2, 3, 1, 5, 5, generator=g).unbind(0)  # each [2, 3, 1, 5, 5]
    p1 = torch.cat([mean, log_scale], 2).flatten(1, 2)  # [2, 3*2, 5, 5]
    logits = torch.randn(2, 3, 4, 5, 5, generator=g)
    p4 = torch.cat([logits, mean.expand(-1, -1, 4, -1, -1), log_scale.expand(-1, -1, 4, -1, -1)], 2)
    p4 = p4.flatten(1, 2)  # [2, 3*12, 5, 5]
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8, generator=g)
    torch.testing.assert_close(mix.log_prob(p4, x), single.log_prob(p1, x), rtol=1e-5, atol=1e-4)


def test_dlogistic_channels_independent():
    """log p of a colour image is the sum of the per-channel log-probs (no coupling)."""
    lik3, lik1 = make("dlogistic", 3, n_mix=2), make("dlogistic", 1, n_mix=2)
    p = torch.randn(2, 3 * 6, 4, 4, generator=seeded(5))
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=seeded(6))
    per_channel = sum(lik1.log_prob(p[:, 6 * c:6 * (c + 1)], x[:, c:c + 1]) for c in range(3))
    torch.testing.assert_close(lik3.log_prob(p, x), per_channel)


# -- bernoulli ------------------------------------------------------------------------------
def test_bernoulli_is_minus_bce():
    lik = make("bernoulli", 3)
    logits = torch.randn(4, 3, 6, 6, generator=seeded(7)) * 3
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8, generator=seeded(8))
    target = x.float() / 255
    expected = -F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(lik.log_prob(logits, x), expected, rtol=1e-5, atol=1e-3)


def test_bernoulli_is_not_normalised_over_grey_levels():
    mass = total_mass(make("bernoulli"), torch.zeros(1))
    torch.testing.assert_close(mass.item(), 128.0)  # every level gets "probability" 1/2


# -- common: shapes, broadcasting, means, gradients, errors -----------------------------------
CASES = [("bernoulli", {}), ("categorical", {}), ("dlogistic", {}), ("dlogistic", {"n_mix": 3})]


@pytest.mark.parametrize("name,options", CASES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(name, options, channels):
    lik = make(name, channels, **options)
    params = torch.randn(5, lik.out_channels, 7, 6, generator=seeded(9))
    x = torch.randint(0, 256, (5, channels, 7, 6), dtype=torch.uint8, generator=seeded(10))
    assert lik.log_prob(params, x).shape == (5,)
    assert lik(params, x).shape == (5,)
    assert lik.log_prob_pixels(params, x).shape == (5, channels, 7, 6)
    mean = lik.mean(params)
    assert mean.shape == (5, channels, 7, 6)
    assert mean.min() >= 0 and mean.max() <= 1
    if lik.normalised:
        assert (lik.log_prob_pixels(params, x) <= 1e-6).all()
    # leading dims broadcast: [S, B, C*P, H, W] params with [B, C, H, W] images
    many = params.unsqueeze(0).expand(3, -1, -1, -1, -1)
    out = lik.log_prob(many, x)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, lik.log_prob(params, x).expand(3, 5))
    # int64 images are accepted too
    torch.testing.assert_close(lik.log_prob(params, x.long()), lik.log_prob(params, x))


@pytest.mark.parametrize("name,options", CASES)
@pytest.mark.parametrize("magnitude", [1.0, 1e3, 1e6])
def test_gradients_finite_at_extremes(name, options, magnitude):
    lik = make(name, 3, **options)
    params = (torch.randn(4, lik.out_channels, 3, 3, generator=seeded(11)) * magnitude).requires_grad_()
    x = torch.randint(0, 256, (4, 3, 3, 3), dtype=torch.uint8, generator=seeded(12))
    x[0] = 0
    x[1] = 255
    log_p = lik.log_prob(params, x)
    assert torch.isfinite(log_p).all()
    log_p.sum().backward()
    assert torch.isfinite(params.grad).all()
    assert params.grad.abs().sum() > 0 or magnitude > 1


def test_dlogistic_gradient_finite_with_huge_log_scale():
    lik = make("dlogistic", n_mix=2)
    params = dlogistic_params(2, [0.0, 0.5], [200.0, -50.0]).view(1, 6, 1, 1).expand(256, 6, 1, 1)
    params = params.clone().requires_grad_()
    lik.log_prob(params, ALL_LEVELS).sum().backward()
    assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("name,options", CASES)
def test_bad_inputs_are_refused(name, options):
    lik = make(name, 1, **options)
    params = torch.zeros(2, lik.out_channels, 4, 4)
    with pytest.raises(TypeError, match="uint8"):
        lik.log_prob(params, torch.zeros(2, 1, 4, 4))  # float image
    with pytest.raises(ValueError):
        lik.log_prob(params, torch.zeros(2, 3, 4, 4, dtype=torch.uint8))  # wrong channels
    with pytest.raises(ValueError):
        lik.log_prob(torch.zeros(2, lik.out_channels + 1, 4, 4), torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


def test_means():
    zeros = torch.zeros(1, 256, 1, 1)
    torch.testing.assert_close(make("categorical").mean(zeros).item(), 0.5, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(make("bernoulli").mean(torch.zeros(1, 1, 1, 1)).item(), 0.5)
    dl = make("dlogistic", n_mix=2)
    params = dlogistic_params(2, [-1.0, 0.0], [-3.0, -3.0], logits=[0.0, 0.0]).view(1, 6, 1, 1)
    torch.testing.assert_close(dl.mean(params).item(), 0.25)  # (mean -0.5 on [-1, 1])
    peaked = torch.full((1, 256, 1, 1), -1e4)
    peaked[0, 51] = 0
    torch.testing.assert_close(make("categorical").mean(peaked).item(), 0.2)


@pytest.mark.parametrize("name, levels", [("dlogistic", 256), ("bernoulli", 2), ("categorical", 256)])
def test_log_prob_summed_in_chunks_of_images_gives_the_numbers_and_gradients_of_the_whole_batch(name, levels):
    likelihood = LIKELIHOODS.get(name)(3)
    n = 2 * CPU_CHUNK_IMAGES + 5  # two whole chunks and a short one
    params = torch.randn(2, n, likelihood.out_channels, 6, 5, generator=torch.Generator().manual_seed(0),
                         requires_grad=True)
    x = (torch.randint(0, levels, (n, 3, 6, 5), generator=torch.Generator().manual_seed(1)) * (255 // (levels - 1)))
    x = x.to(torch.uint8)
    whole = likelihood.log_prob_pixels(params, x).sum(dim=(-3, -2, -1))
    chunked = likelihood.log_prob(params, x)
    assert chunked.shape == (2, n) and torch.equal(chunked, whole)
    assert torch.equal(torch.autograd.grad(chunked.sum(), params)[0], torch.autograd.grad(whole.sum(), params)[0])


def test_dlogistic_skips_the_narrow_bin_expansion_only_where_it_changes_nothing():
    # on a CPU the expansion log t − t/2 + t²/24 is computed only when some bin of the call is narrow
    # (t < 1e-3): an image's numbers and gradients must not depend on whether another image has one
    lik = make("dlogistic", channels=3)
    gen = seeded(5)
    usual = (torch.randn(6, 6, 4, 4, generator=gen) * 0.3).requires_grad_()  # log-scales near 0: t ≈ 0.008
    broad = torch.full((1, 6, 4, 4), 8.0)  # log s = 8: t ≈ 2.6e-6, the expansion's range
    x = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8, generator=gen)
    x[0, :, 0] = 0
    x[0, :, 1] = 255
    alone = lik.log_prob_pixels(usual, x[:6])
    beside = lik.log_prob_pixels(torch.cat([usual, broad]), x)
    assert torch.equal(alone, beside[:6])
    grad_alone, = torch.autograd.grad(alone.sum(), usual)
    grad_beside, = torch.autograd.grad(beside[:6].sum(), usual)
    assert torch.equal(grad_alone, grad_beside)
    # and the broad image's narrow bins still get the expansion: its masses sum to one
    assert abs(total_mass(make("dlogistic"), dlogistic_params(1, [0.1], [8.0])).item() - 1.0) < 1e-6


def test_dlogistic_traces_as_one_graph():
    # train.compile hands the whole loss to torch.compile: the CPU's shortcut must not break the graph
    lik = make("dlogistic", channels=3)
    params = torch.randn(2, 6, 4, 4, generator=seeded(6))
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=seeded(7))
    explained = torch._dynamo.explain(lik.log_prob)(params, x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
