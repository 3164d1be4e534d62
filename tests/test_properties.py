"""Property tests (hypothesis): invariants that must hold for every input, not just the
hand-picked ones of the other test files.

- metrics: AUROC/AUPRC/FPR are unchanged by any strictly increasing map of the scores,
  lie in [0, 1], and FPR@t%TPR is monotone in t (swapped roles → 1 − AUROC and affine
  maps are in test_metrics.py);
- estimators on a random tiny conv VAE and *any* uint8 image (all-0 and all-255
  included): finite estimates, non-negative rate and IWAE gap, 1 ≤ ESS ≤ K;
- normalised decoders: log p(x|z) ≤ 0 for any decoder output, so the ELBO ≤ 0 and
  bits/dim ≥ 0;
- conforming images: padding only adds a zero frame, grey → RGB → grey is the identity.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vaeood.training.config import ModelConfig
from vaeood.data.conform import conform_images, convert_channels
from vaeood.inference.estimators import bits_per_dim, elbo, iwae
from vaeood.evaluation.metrics import METRIC_NAMES, fpr_at_tpr, ood_metrics
from vaeood.models import LIKELIHOODS, build_model

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- metrics
# integer-valued scores: ties happen (as in real data), and every map below keeps
# distinct values distinct in float64, so ranks and ties are exactly preserved
int_scores = arrays(np.float64, st.integers(1, 25), elements=st.integers(-50, 50).map(float))
INCREASING = {
    "cube": lambda s: s ** 3,
    "exp": lambda s: np.exp(s / 8.0),
    "arctan": np.arctan,
    "log-shift": lambda s: np.log(s + 51.0),
}


@SETTINGS
@given(int_scores, int_scores, st.sampled_from(sorted(INCREASING)))
def test_metrics_invariant_under_strictly_increasing_maps(s_in, s_ood, name):
    f = INCREASING[name]
    before, after = ood_metrics(s_in, s_ood), ood_metrics(f(s_in), f(s_ood))
    for metric in METRIC_NAMES:
        assert after[metric] == pytest.approx(before[metric], abs=1e-12), metric


@SETTINGS
@given(int_scores, int_scores, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_fpr_at_tpr_is_a_probability_monotone_in_the_tpr_level(s_in, s_ood, t1, t2):
    labels = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_ood))])
    scores = np.concatenate([s_in, s_ood])
    lo, hi = sorted((t1, t2))
    f_lo, f_hi = fpr_at_tpr(labels, scores, lo), fpr_at_tpr(labels, scores, hi)
    assert 0.0 <= f_lo <= f_hi <= 1.0
    metrics = ood_metrics(s_in, s_ood)
    assert all(0.0 <= metrics[m] <= 1.0 for m in METRIC_NAMES)
    assert metrics["fpr_at_80_tpr"] <= metrics["fpr_at_95_tpr"]


# ----------------------------------------------------------------------------- estimators
@st.composite
def vae_and_images(draw):
    """A randomly initialised tiny conv VAE and a batch of arbitrary uint8 images for it."""
    likelihood = draw(st.sampled_from(["bernoulli", "categorical", "dlogistic"]))
    channels = draw(st.sampled_from([1, 3]))
    size = draw(st.sampled_from([4, 8]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    options = {"n_mix": draw(st.sampled_from([1, 3]))} if likelihood == "dlogistic" else {}
    model = build_model(ModelConfig(likelihood=likelihood, latent_dim=2, base_channels=2,
                                    likelihood_options=options), (channels, size, size)).eval()
    shape = (draw(st.integers(1, 3)), channels, size, size)
    kind = draw(st.sampled_from(["zeros", "full", "drawn"]))
    if kind == "drawn":
        x = draw(arrays(np.uint8, shape, elements=st.integers(0, 255)))
    else:
        x = np.full(shape, 0 if kind == "zeros" else 255, np.uint8)
    return model, torch.from_numpy(x)


@SETTINGS
@given(vae_and_images(), st.integers(0, 2**16))
def test_estimators_are_finite_and_consistent_for_any_uint8_image(model_x, seed):
    model, x = model_x
    k = 4
    with torch.no_grad():
        e = elbo(model, x, generator=torch.Generator().manual_seed(seed))
        w = iwae(model, x, k=k, generator=torch.Generator().manual_seed(seed))
    for out in (e, w):
        for key, value in out.items():
            assert value.shape == (len(x),), key
            assert torch.isfinite(value).all(), key
    assert (e["rate_nats"] >= 0).all()
    assert (w["gap_nats"] >= 0).all()
    assert ((w["ess"] >= 1) & (w["ess"] <= k)).all()
    if model.likelihood.normalised:  # a pmf over 8-bit images: every estimate is ≤ 0 nats
        assert (e["log_px_nats"] <= 0).all()
        assert (bits_per_dim(e["log_px_nats"], model.num_dims) >= 0).all()


@st.composite
def decoder_output(draw):
    """A normalised likelihood, any (finite, possibly huge) decoder output and any image."""
    name, options = draw(st.sampled_from([("categorical", {}), ("dlogistic", {}), ("dlogistic", {"n_mix": 3})]))
    channels = draw(st.sampled_from([1, 3]))
    lik = LIKELIHOODS.get(name)(channels, **options)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    params = torch.randn((2, channels * lik.params_per_channel, 3, 3), generator=gen) * scale
    x = draw(arrays(np.uint8, (2, channels, 3, 3), elements=st.integers(0, 255)))
    return lik, params, torch.from_numpy(x)


@SETTINGS
@given(decoder_output())
def test_normalised_log_probabilities_are_at_most_zero(case):
    lik, params, x = case
    assert lik.normalised
    log_p = lik.log_prob(params, x)
    assert torch.isfinite(log_p).all()
    assert (log_p <= 0).all(), log_p.max()
    assert (bits_per_dim(log_p, x[0].numel()) >= 0).all()


# ------------------------------------------------------------------------- conforming images
grey_images = arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.just(1)),
                     elements=st.integers(0, 255))


@SETTINGS
@given(grey_images, st.integers(0, 5), st.integers(0, 5))
def test_pad_adds_only_a_centred_zero_frame(x, extra_h, extra_w):
    n, h, w, _ = x.shape
    y = conform_images(x, (1, h + extra_h, w + extra_w), "pad")
    top, left = extra_h // 2, extra_w // 2
    np.testing.assert_array_equal(y[:, top: top + h, left: left + w], x)
    assert int(y.astype(np.int64).sum()) == int(x.astype(np.int64).sum())


@SETTINGS
@given(grey_images)
def test_grey_to_rgb_to_grey_is_the_identity_and_resize_to_own_size_too(x):
    np.testing.assert_array_equal(convert_channels(convert_channels(x, 3), 1), x)
    np.testing.assert_array_equal(conform_images(x, (1, *x.shape[1:3]), "resize"), x)
