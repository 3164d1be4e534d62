"""Likelihood regret (vaeood.inference.regret): known answers on the analytic linear-Gaussian VAE,
and per-image independence (batched = one image at a time, batch composition irrelevant)
for every variant on a tiny conv VAE. No real data; a few seconds in all."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

try:
    from linear_gaussian import make_linear_gaussian
except ImportError:  # tests/ not on sys.path (e.g. --import-mode=importlib)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from linear_gaussian import make_linear_gaussian

from vaeood.training.config import Config
from vaeood.models import build_model
from vaeood.inference.regret import DEFAULTS, likelihood_regret


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _lg(**kw):
    return make_linear_gaussian(data_dim=6, latent_dim=3, sigma=0.5, orthogonal=True, seed=4, **kw)


@pytest.fixture(scope="module")
def lg_x():
    return _lg().sample(8, _gen(1))


@pytest.fixture(scope="module")
def tiny_vae():
    cfg = Config().override({"model.base_channels": "4", "model.latent_dim": "3", "model.likelihood": "bernoulli"})
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 8, 8)).eval()
    x = torch.randint(0, 256, (5, 1, 8, 8), generator=_gen(2), dtype=torch.uint8)
    return model, x


# -- known answers ------------------------------------------------------------------------------
def test_exact_posterior_has_zero_regret(lg_x):
    """q = p(z|x): every importance weight equals p(x), the sticking-the-landing gradient is
    exactly 0, so nothing moves and the regret is 0; the bound before is exact log p(x)."""
    model = _lg()
    out = likelihood_regret(model, lg_x, generator=_gen(), variant="posterior", loss="stl", optimizer="sgd",
                            lr=0.1, steps=20, k=32)
    assert torch.allclose(out["bound_before_nats"], model.exact_log_px(lg_x).detach(), atol=1e-9)
    assert out["regret_nats"].abs().max() < 1e-9


LG_ADAM = {"variant": "posterior", "steps": 30, "lr": 0.05, "k": 64, "keep_start": False}


def test_exact_posterior_regret_small_with_paper_gradient(lg_x):
    """With the paper's noisy ELBO gradient and Adam the optimiser jitters around the
    optimum: the regret stays near 0, far below that of a perturbed encoder. Medians over
    the images: the perturbed encoder's bound before optimisation is an IWAE-64 estimate
    from a shifted, too-narrow q, whose heavy-tailed weights overshoot log p(x) on ~5% of
    draws (by up to 5 nats), so one image's regret can be anything; which image depends on
    the CPU's random-number kernels."""
    exact = likelihood_regret(_lg(), lg_x, generator=_gen(), **LG_ADAM)["regret_nats"]
    perturbed = likelihood_regret(_lg(mean_shift=0.5, var_scale=0.3), lg_x, generator=_gen(), **LG_ADAM)["regret_nats"]
    assert exact.abs().median() < 0.1
    assert perturbed.median() > 1.0
    assert perturbed.median() > 10 * exact.abs().median()


def test_perturbed_encoder_regret_recovers_the_gap(lg_x):
    """A shifted, too-narrow q (KL(q ‖ p(z|x)) > 0.3 nats in closed form): optimising each
    image's (mu, logvar) reaches the exact posterior, so the bound after is log p(x) and
    the regret is the gain over the bound before."""
    model = _lg(mean_shift=0.5, var_scale=0.3)
    log_px = model.exact_log_px(lg_x).detach()
    assert (model.exact_posterior_kl(lg_x) > 0.3).all()
    out = likelihood_regret(model, lg_x, generator=_gen(), variant="posterior", loss="stl", steps=200, lr=0.05, k=64,
                            keep_start=False)
    assert torch.allclose(out["bound_after_nats"], log_px, atol=0.05)
    assert torch.allclose(out["regret_nats"], out["bound_after_nats"] - out["bound_before_nats"], atol=1e-9)


@pytest.mark.parametrize("bound", ["elbo", "iwae"])
def test_regret_nonnegative_up_to_monte_carlo_error(lg_x, bound):
    """Per image, the regret averaged over seeds is >= 0 (a single IWAE draw from a too-narrow
    q can land above log p(x), so one seed's regret may be negative by its MC error)."""
    model = _lg(mean_shift=0.4, var_scale=0.4)  # too narrow and shifted, as amortised encoders are
    runs = [likelihood_regret(model, lg_x, generator=_gen(seed), bound=bound, **LG_ADAM)["regret_nats"]
            for seed in range(6)]
    mean = torch.stack(runs).mean(0)
    assert mean.min() > -0.05, mean
    assert mean.mean() > 0.3
    if bound == "elbo":  # the ELBO's MC error is small: every single run is >= 0 too
        assert min(r.min() for r in runs) > -0.05
    kept = likelihood_regret(model, lg_x, generator=_gen(0), bound=bound, **{**LG_ADAM, "keep_start": True})
    assert torch.equal(kept["regret_nats"], runs[0].clamp_min(0.0))


def test_steps_zero_is_exactly_zero(tiny_vae):
    model, x = tiny_vae
    out = likelihood_regret(model, x, generator=_gen(), steps=0)
    assert torch.equal(out["regret_nats"], torch.zeros(len(x)))
    assert torch.equal(out["bound_before_nats"], out["bound_after_nats"])


# -- per-image independence -----------------------------------------------------------------------
VARIANTS = [
    ("posterior", {}),
    ("head", {}),
    ("head", {"steps": 5}),
    ("encoder", {"steps": 5}),
    ("encoder", {"steps": 5, "vmap": False}),
]


@pytest.mark.parametrize("variant,options", VARIANTS)
def test_batched_equals_one_image_and_composition_is_irrelevant(tiny_vae, variant, options):
    model, x = tiny_vae
    batched = likelihood_regret(model, x, generator=_gen(7), variant=variant, **options)
    assert batched["regret_nats"].shape == (len(x),)
    for b in range(len(x)):
        one = likelihood_regret(model, x[b:b + 1], generator=_gen(7), variant=variant, **options)
        for key in batched:
            assert torch.allclose(one[key][0], batched[key][b], atol=1e-3), (key, b)
    # other companions, other order, a duplicate, and internal chunking
    other = torch.randint(0, 256, (3, 1, 8, 8), generator=_gen(9), dtype=torch.uint8)
    mixed = torch.cat([other[:1], x[[4, 2]], other[1:], x[[2]]])
    again = likelihood_regret(model, mixed, generator=_gen(7), variant=variant, batch_size=2, **options)
    for pos, b in ((1, 4), (2, 2), (5, 2)):
        assert torch.allclose(again["regret_nats"][pos], batched["regret_nats"][b], atol=1e-3)


def test_deterministic_given_seed_and_seed_matters(tiny_vae):
    model, x = tiny_vae
    a = likelihood_regret(model, x, generator=_gen(3))["regret_nats"]
    b = likelihood_regret(model, x, generator=_gen(3))["regret_nats"]
    c = likelihood_regret(model, x, generator=_gen(4))["regret_nats"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_vmap_matches_loop(tiny_vae):
    model, x = tiny_vae
    a = likelihood_regret(model, x, generator=_gen(), variant="encoder", steps=5)["regret_nats"]
    b = likelihood_regret(model, x, generator=_gen(), variant="encoder", steps=5, vmap=False)["regret_nats"]
    assert torch.allclose(a, b, atol=1e-3)


def test_head_shortcut_equals_per_image_linear_copies(tiny_vae, monkeypatch):
    """Adam on a per-image copy of the last linear layer == Adam on (mu, logvar) with the
    step scaled by 1 + ||h||_1 (regret.feature_scale), up to Adam's epsilon."""
    import vaeood.inference.regret as regret

    calls = []
    original = regret.feature_scale
    monkeypatch.setattr(regret, "feature_scale", lambda *a: calls.append(1) or original(*a))
    model, x = tiny_vae
    fast = likelihood_regret(model, x, generator=_gen(), variant="head", steps=10, lr=1e-2)
    assert calls  # the shortcut ran
    exact = likelihood_regret(model, x, generator=_gen(), variant="head", steps=10, lr=1e-2, head_exact=True)
    assert len(calls) == 1  # the weight copies ran
    for key in fast:
        assert torch.allclose(fast[key], exact[key], atol=1e-3), key


def test_model_untouched_and_grad_mode_kept(tiny_vae):
    model, x = tiny_vae
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the function enables grad for its own optimisation
        out = likelihood_regret(model, x, generator=_gen(), variant="encoder", steps=3)
        assert not torch.is_grad_enabled()  # the caller's grad mode is restored
    assert torch.isfinite(out["regret_nats"]).all()
    assert not any(v.requires_grad for v in out.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_head_layers_and_errors(tiny_vae):
    model, x = tiny_vae
    r = likelihood_regret(model, x, generator=_gen(), variant="head", layers=2, steps=3, lr=1e-4)["regret_nats"]
    assert torch.isfinite(r).all()
    with pytest.raises(ValueError, match="variant"):
        likelihood_regret(model, x, variant="nope")
    with pytest.raises(ValueError, match="optimizer"):
        likelihood_regret(model, x, optimizer="lbfgs")
    with pytest.raises(ValueError, match="bound"):
        likelihood_regret(model, x, bound="exact")
    with pytest.raises(ValueError, match="steps"):
        likelihood_regret(model, x, steps=-1)
    with pytest.raises(ValueError, match="layers"):
        likelihood_regret(model, x, variant="head", layers=99)
    with pytest.raises(ValueError, match="encoder"):
        likelihood_regret(_lg(), torch.zeros(2, 6, dtype=torch.float64), variant="encoder")
    assert set(DEFAULTS) == {"posterior", "head", "encoder"}


def test_empty_batch(tiny_vae):
    model, x = tiny_vae
    out = likelihood_regret(model, x[:0], generator=_gen())
    assert all(v.shape == (0,) for v in out.values())
