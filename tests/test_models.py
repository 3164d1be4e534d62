import contextlib

import pytest
import torch

from vaeood.training.config import ModelConfig
from vaeood.models import architecture_summary, build_model, count_parameters


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "dlogistic", "categorical"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_model_interface_shapes(arch, likelihood, shape):
    model = build_model(ModelConfig(arch=arch, likelihood=likelihood, latent_dim=3, base_channels=4, hidden_dim=16),
                        shape)
    x = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    mu, logvar = model.posterior(x)
    assert mu.shape == logvar.shape == (5, 3)
    z = torch.randn(7, 5, 3)
    ll = model.log_likelihood(x, z)
    assert ll.shape == (7, 5) and torch.isfinite(ll).all()
    assert model.log_prior(z).shape == (7, 5)
    assert model.num_dims == shape[0] * shape[1] * shape[2]
    assert model.reconstruct(x).shape == (5, *shape)
    if likelihood != "bernoulli":
        assert model.likelihood.normalised and (ll < 0).all()  # a pmf: log-probabilities are negative


def test_log_prior_is_standard_normal():
    model = build_model(ModelConfig(latent_dim=2, base_channels=4), (1, 28, 28))
    z = torch.tensor([[[0.0, 0.0], [1.0, -2.0]]])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(model.log_prior(z), expected)


def test_width_is_the_capacity_knob():
    small = count_parameters(build_model(ModelConfig(base_channels=8), (1, 28, 28)))
    large = count_parameters(build_model(ModelConfig(base_channels=16), (1, 28, 28)))
    assert large > 1.9 * small


def test_mlp_has_keras_blog_shape():
    model = build_model(ModelConfig(arch="mlp", latent_dim=2, hidden_dim=512), (1, 28, 28))
    # 784·512 + 512 + 512·4 + 4 (encoder) + 2·512 + 512 + 512·784 + 784 (decoder)
    assert count_parameters(model) == 784 * 512 + 512 + 512 * 4 + 4 + 2 * 512 + 512 + 512 * 784 + 784


def test_unknown_likelihood_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'dlogistic'"):
        build_model(ModelConfig(likelihood="dlogistc"), (1, 28, 28))


@pytest.mark.parametrize("shape, stages", [((1, 28, 28), 2), ((3, 32, 32), 2), ((3, 64, 64), 3), ((3, 120, 160), 5),
                                           ((3, 30, 46), 3), ((3, 256, 256), 5), ((1, 4, 64), 2)])
def test_conv_halves_until_the_feature_map_is_at_most_8x8(shape, stages):
    """Any size of at least 4×4 decodes back to itself (odd sides too), in the fewest
    stride-2 stages (at least the study's two) that leave a map of side ≤ 8."""
    model = build_model(ModelConfig(latent_dim=3, base_channels=4, likelihood="dlogistic"), shape)
    assert architecture_summary(model)["downsampling_stages"] == stages
    flat = model.encoder[-1].in_features // 8  # 2·base channels × the last map's h·w
    c, h, w = shape
    assert flat == (h >> stages) * (w >> stages)
    assert max(h >> stages, w >> stages) <= 8 or min(h, w) >> (stages + 1) == 0  # 4×64: cannot halve 4 again
    x = torch.randint(0, 256, (2, *shape), dtype=torch.uint8)
    assert model.reconstruct(x).shape == (2, *shape)


def test_conv_parameters_stay_nearly_flat_in_the_image_size():
    """The conv VAE at 64×64 has at most 2×, at 256×256 at most 3× the parameters of the
    32×32 one (the linear layers stay at most 2·base·8·8 wide)."""
    def size(side):
        return count_parameters(build_model(ModelConfig(likelihood="dlogistic"), (3, side, side)))

    assert size(64) <= 2 * size(32) and size(256) <= 3 * size(32)
    assert size(32) < size(64) < size(256)


def test_conv_refuses_images_below_4x4_and_the_spatial_hvae_sizes_not_divisible_by_4():
    with pytest.raises(ValueError, match="at least 4×4 pixels, got 3×28"):
        build_model(ModelConfig(), (1, 3, 28))
    with pytest.raises(ValueError, match="divisible by 4, got 30×30"):
        build_model(ModelConfig(arch="hvae", arch_options={"bottom": "spatial"}), (1, 30, 30))


def test_the_study_models_keep_their_two_stages_and_initial_weights():
    """28×28 and 32×32 conv models are the study's: two stride-2 stages, the same state-dict
    keys and shapes and, under a seed, the same initial weights as a hand-built copy."""
    from torch import nn

    for c, side, ppc in ((1, 28, 1), (3, 32, 2)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(likelihood="bernoulli" if c == 1 else "dlogistic"), (c, side, side))
        torch.manual_seed(0)
        q = side // 4
        encoder = nn.Sequential(nn.Conv2d(c, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),
                                nn.Flatten(), nn.Linear(64 * q * q, 32))
        decoder = nn.Sequential(nn.Linear(16, 64 * q * q), nn.ReLU(), nn.Unflatten(1, (64, q, q)),
                                nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
                                nn.ConvTranspose2d(32, c * ppc, 4, 2, 1))
        expected = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                    **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}}
        got = {k: v for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("arch, likelihood, shape, expected", [
    # z + Linear(16 → 2·32·7·7) + ConvT(64 → 32) at 14×14 + ConvT(32 → 1) at 28×28; ReLUs are in place
    ("conv", "bernoulli", (1, 28, 28), 16 + 3136 + 32 * 14 * 14 + 784),
    # the same with 3 channels × 2 logistic parameters at 32×32
    ("conv", "dlogistic", (3, 32, 32), 16 + 64 * 8 * 8 + 32 * 16 * 16 + 6 * 32 * 32),
    # z + hidden 512 + output 784
    ("mlp", "bernoulli", (1, 28, 28), 16 + 512 + 784),
])
def test_elements_per_sample_counts_every_decoder_allocation(arch, likelihood, shape, expected):
    """The IWAE chunk bound must see the hidden activations, not just the output:
    the conv decoder's hidden layers are 12× its output for 28×28 grey images."""
    model = build_model(ModelConfig(arch=arch, likelihood=likelihood), shape)
    assert model.elements_per_sample == expected


@pytest.mark.parametrize("likelihood", ["bernoulli", "dlogistic", "categorical"])
def test_nhwc_scoring_agrees_with_nchw(likelihood):
    """load_model puts conv models in NHWC for scoring: the estimates must be the NCHW
    ones up to float rounding, on the same weights and noise."""
    import copy

    from vaeood.inference.estimators import elbo, iwae

    torch.manual_seed(0)
    model = build_model(ModelConfig(likelihood=likelihood, latent_dim=4, base_channels=8), (1, 28, 28)).eval()
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        for est, opts in ((elbo, {}), (iwae, {"k": 16})):
            a, b = (est(m, x, generator=torch.Generator().manual_seed(3), **opts)["log_px_nats"] for m in (model, nhwc))
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-3)


@contextlib.contextmanager
def _onednn_off():
    """oneDNN off, as the output layer used to switch it: the "enabled" flag alone
    (``mkldnn.flags()`` would also reset the precision settings, and warn)."""
    enabled = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)[0]
    try:
        yield
    finally:
        torch.backends.mkldnn.set_flags(_enabled=enabled, _fp32_precision=None)


def test_the_output_layer_is_the_native_kernel_and_leaves_onednn_as_it_found_it(monkeypatch):
    """The decoder's few-channel output layer computes, values and gradients, exactly what it
    computed when it switched oneDNN off around its base's forward (so the study's models train
    the same weights), without touching that global switch: a torch.compile trace of the switch
    left oneDNN off for every later convolution of the process."""
    from vaeood.models.conv import OutputConvTranspose2d

    torch.manual_seed(0)
    layer = OutputConvTranspose2d(8, 3, 4, stride=2, padding=1)
    x = torch.randn(5, 8, 7, 7, requires_grad=True)
    with _onednn_off():  # as the switch did, around the forward only
        want = torch.nn.ConvTranspose2d.forward(layer, x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, layer.weight, layer.bias])
    calls = []
    real = torch.backends.mkldnn.set_flags
    monkeypatch.setattr(torch.backends.mkldnn, "set_flags", lambda *a, **k: calls.append(a) or real(*a, **k))
    got = layer(x)
    assert torch.equal(got, want) and not calls and torch.backends.mkldnn.enabled
    grads = torch.autograd.grad(got.square().sum(), [x, layer.weight, layer.bias])
    assert all(torch.equal(a, b) for a, b in zip(grads, want_grads, strict=True))


def test_the_output_layer_under_bf16_autocast_casts_as_autocast_casts_its_base():
    from vaeood.models.conv import OutputConvTranspose2d

    torch.manual_seed(0)
    layer = OutputConvTranspose2d(8, 1, 4, stride=2, padding=1)
    x = torch.randn(5, 8, 7, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with _onednn_off():
            want = torch.nn.ConvTranspose2d.forward(layer, x)
        got = layer(x)
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)
