"""Known-answer tests of the log-likelihood estimators on an analytic linear-Gaussian VAE.

The model (``linear_gaussian.py``) has an exact log p(x), an exact ELBO and an exact
posterior, so the ordering ELBO <= IWAE_K <= log p(x), the convergence in K and the
zero-variance case of an exact posterior are asserted, not just smoke-tested.
Statistical assertions use tolerances of several measured standard errors; seeds are
fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from linear_gaussian import make_linear_gaussian

from vaeood.inference.estimators import ESTIMATORS, bits_per_dim, elbo, iwae

B = 8  # images
R = 400  # independent repeats of every estimate per image (batched as R*B rows)
KS = (1, 10, 100, 1000)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mean_se(values: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of the mean along ``dim``."""
    n = values.shape[dim]
    return values.mean(dim), values.std(dim) / math.sqrt(n)


# -- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imperfect():
    """A model whose diagonal q(z|x) is imperfect (shifted, too wide, no correlations)."""
    torch.manual_seed(0)
    model = make_linear_gaussian(mean_shift=0.15, var_scale=1.5, sigma=0.5, seed=0)
    x = model.sample(B, seeded(1))
    with torch.no_grad():
        exact = model.exact_log_px(x)
        x_rep = x.repeat(R, 1)  # row r*B + b is a repeat of image b
        elbo_rep = elbo(model, x_rep, generator=seeded(2))["log_px_nats"].view(R, B)
        iw = {}
        for k in KS:
            out = iwae(model, x_rep, k=k, generator=seeded(3))
            iw[k] = {key: value.view(R, B) for key, value in out.items()}
    return {"model": model, "x": x, "exact": exact, "elbo": elbo_rep, "iwae": iw}


@pytest.fixture(scope="module")
def exact_q():
    """Orthogonal W: the posterior is diagonal and ``posterior`` returns it exactly."""
    model = make_linear_gaussian(orthogonal=True, mean_shift=0.0, var_scale=1.0, seed=4)
    x = model.sample(B, seeded(5))
    return model, x


# -- the test model itself ----------------------------------------------------------------
def test_linear_gaussian_identities(imperfect, exact_q):
    model, x = imperfect["model"], imperfect["x"]
    with torch.no_grad():
        # log p(x) - ELBO = KL(q || p(z|x)) > 0, all in closed form
        gap = model.exact_log_px(x) - model.exact_elbo(x)
        torch.testing.assert_close(gap, model.exact_posterior_kl(x), rtol=1e-10, atol=1e-10)
        assert (gap > 0.1).all()
        # with the exact posterior the ELBO is tight
        m, xe = exact_q
        torch.testing.assert_close(m.exact_elbo(xe), m.exact_log_px(xe), rtol=1e-10, atol=1e-10)
        _, cov = m.exact_posterior(xe)
        torch.testing.assert_close(cov, torch.diag(torch.diagonal(cov)), rtol=0, atol=1e-12)


# -- (a) ELBO <= IWAE_K <= log p(x) -------------------------------------------------------
def test_elbo_is_unbiased_for_the_exact_elbo(imperfect):
    mean, se = mean_se(imperfect["elbo"])
    exact_elbo = imperfect["model"].exact_elbo(imperfect["x"]).detach()
    assert ((mean - exact_elbo).abs() < 4 * se).all()


@pytest.mark.parametrize("k", KS[1:])
def test_bounds_are_ordered(imperfect, k):
    exact, elbo_rep = imperfect["exact"], imperfect["elbo"]
    iw = imperfect["iwae"][k]["log_px_nats"]
    gain, gain_se = mean_se(iw - elbo_rep)  # IWAE - ELBO, per image
    excess, excess_se = mean_se(iw - exact)  # IWAE - log p(x), per image
    assert (gain > 4 * gain_se).all(), "IWAE_K should beat the ELBO on every image"
    assert (excess < 4 * excess_se).all(), "IWAE_K must not exceed log p(x)"
    # pooled over images as well
    pooled, pooled_se = mean_se((iw - exact).flatten())
    assert pooled < 4 * pooled_se


# -- (b) monotone in K --------------------------------------------------------------------
def test_iwae_increases_with_k(imperfect):
    iw = imperfect["iwae"]
    for k_small, k_big in itertools.pairwise(KS):
        diff = (iw[k_big]["log_px_nats"] - iw[k_small]["log_px_nats"]).flatten()
        mean, se = mean_se(diff)
        assert mean > 3 * se, (k_small, k_big, mean.item(), se.item())
    # and the bias shrinks towards zero
    gaps = [(imperfect["exact"] - iw[k]["log_px_nats"]).mean().item() for k in KS]
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[0] > 1.0 and abs(gaps[3]) < 0.02


# -- (c) IWAE_5000 is close to exact --------------------------------------------------------
def test_iwae_converges_to_exact(imperfect):
    model, x, exact = imperfect["model"], imperfect["x"], imperfect["exact"]
    repeats = 40
    with torch.no_grad():
        est = iwae(model, x.repeat(repeats, 1), k=5000, generator=seeded(6))["log_px_nats"]
    mean, se = mean_se(est.view(repeats, B))
    assert (se < 0.006).all()  # so that the tolerances below mean something
    assert ((mean - exact).abs() < 0.025).all()  # every image within 0.025 nats
    assert (mean - exact).mean().abs() < 0.01  # and no visible bias on average


# -- (d) exact posterior: every estimate is exact, with zero variance ------------------------
def test_exact_posterior_gives_exact_estimates(exact_q):
    model, x = exact_q
    with torch.no_grad():
        exact = model.exact_log_px(x)
        x_rep = x.repeat(20, 1)
        exact_rep = exact.repeat(20)
        mc = elbo(model, x_rep, samples=3, kl="mc", generator=seeded(7))
        torch.testing.assert_close(mc["log_px_nats"], exact_rep, rtol=0, atol=1e-10)
        for k in (1, 10, 257):
            out = iwae(model, x_rep, k=k, chunk_size=64, generator=seeded(8))
            torch.testing.assert_close(out["log_px_nats"], exact_rep, rtol=0, atol=1e-10)
            torch.testing.assert_close(out["elbo_nats"], exact_rep, rtol=0, atol=1e-10)
            assert (out["gap_nats"] < 1e-10).all()
            # (g) all weights equal: ESS is exactly K
            torch.testing.assert_close(out["ess"], torch.full_like(out["ess"], k), rtol=1e-9, atol=0)
            torch.testing.assert_close(out["ess_fraction"], torch.ones_like(out["ess"]), rtol=1e-9, atol=0)
        # the analytic-KL ELBO is exact in expectation (its log p(x|z) term still varies)
        analytic = elbo(model, x_rep, samples=50, generator=seeded(9))["log_px_nats"].view(20, B)
        mean, se = mean_se(analytic)
        assert ((mean - exact).abs() < 4 * se + 1e-12).all()


# -- (e) IWAE with K = 1 is the single-sample ELBO ----------------------------------------
def test_iwae_k1_equals_mc_elbo_bitwise(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    with torch.no_grad():
        one = iwae(model, x, k=1, generator=seeded(10))
        mc = elbo(model, x, samples=1, kl="mc", generator=seeded(10))
    assert torch.equal(one["log_px_nats"], mc["log_px_nats"])
    assert torch.equal(one["elbo_nats"], mc["log_px_nats"])
    assert torch.equal(one["gap_nats"], torch.zeros(B, dtype=torch.float64))
    assert torch.equal(one["ess"], torch.ones(B, dtype=torch.float64))
    # and the MC-KL decomposition adds up
    torch.testing.assert_close(-(mc["distortion_nats"] + mc["rate_nats"]), mc["log_px_nats"])


def test_iwae_k1_mean_matches_analytic_elbo(imperfect):
    diff = (imperfect["iwae"][1]["log_px_nats"] - imperfect["elbo"]).flatten()
    mean, se = mean_se(diff)
    assert mean.abs() < 4 * se


def test_multi_sample_mc_elbo_is_iwae_elbo(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    with torch.no_grad():
        mc = elbo(model, x, samples=13, kl="mc", generator=seeded(11))
        iw = iwae(model, x, k=13, chunk_size=5, generator=seeded(11))
    torch.testing.assert_close(mc["log_px_nats"], iw["elbo_nats"], rtol=1e-12, atol=1e-12)


def test_analytic_rate_is_gaussian_kl(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    with torch.no_grad():
        out = elbo(model, x, generator=seeded(12))
        mu, logvar = model.posterior(x)
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        torch.testing.assert_close(out["rate_nats"], torch.distributions.kl_divergence(q, p).sum(-1))
        torch.testing.assert_close(out["log_px_nats"], -(out["distortion_nats"] + out["rate_nats"]))


# -- (f) chunking does not change the result ------------------------------------------------
class Spy:
    """Wraps a model; records posterior calls and the sample count of each decode."""

    def __init__(self, model):
        self.model = model
        self.posterior_calls = 0
        self.chunks: list[int] = []

    def posterior(self, x):
        self.posterior_calls += 1
        return self.model.posterior(x)

    def log_likelihood(self, x, z):
        self.chunks.append(z.shape[0])
        return self.model.log_likelihood(x, z)

    def log_prior(self, z):
        return self.model.log_prior(z)


def test_chunking_does_not_change_the_result(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    k = 50
    with torch.no_grad():
        whole = iwae(model, x, k=k, chunk_size=k, generator=seeded(13))
        spy = Spy(model)
        chunked = iwae(spy, x, k=k, chunk_size=7, generator=seeded(13))
    assert spy.posterior_calls == 1, "each image must be encoded once"
    assert spy.chunks == [7] * 7 + [1]
    assert whole.keys() == chunked.keys()
    for key in whole:
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-12, atol=1e-12)


def test_automatic_chunk_size_bounds_memory(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    per_sample = model.latent_dim + model.data_dim  # the default cost: Z + x[0].numel()
    spy = Spy(model)
    with torch.no_grad():
        out = iwae(spy, x, k=100, max_elements=B * per_sample * 9, generator=seeded(14))
        ref = iwae(model, x, k=100, chunk_size=100, generator=seeded(14))
    assert spy.posterior_calls == 1
    assert max(spy.chunks) == 9 and sum(spy.chunks) == 100
    torch.testing.assert_close(out["log_px_nats"], ref["log_px_nats"], rtol=1e-12, atol=1e-12)
    # a model can declare its decoder's cost per sample
    spy.chunks.clear()
    spy.elements_per_sample = 1000
    with torch.no_grad():
        iwae(spy, x, k=10, max_elements=B * 1000 * 3, generator=seeded(14))
    assert max(spy.chunks) == 3


def test_prefix_samples_are_shared_across_k(imperfect):
    """Common random numbers: IWAE_K' uses IWAE_K's samples first (same seed)."""
    model, x = imperfect["model"], imperfect["x"]
    seen = []

    class Record(Spy):
        def log_likelihood(self, x, z):
            seen.append(z.clone())
            return self.model.log_likelihood(x, z)

    with torch.no_grad():
        iwae(Record(model), x, k=5, generator=seeded(15))
        iwae(Record(model), x, k=12, chunk_size=4, generator=seeded(15))
    assert torch.equal(seen[0], torch.cat(seen[1:])[:5])


# -- (g) effective sample size --------------------------------------------------------------
def test_ess_range(imperfect):
    for k in KS:
        out = imperfect["iwae"][k]
        assert (out["ess"] >= 1).all() and (out["ess"] <= k).all()
        torch.testing.assert_close(out["ess_fraction"], out["ess"] / k)
        assert (out["gap_nats"] >= 0).all()
        torch.testing.assert_close(out["gap_nats"], out["log_px_nats"] - out["elbo_nats"])
    assert (imperfect["iwae"][1]["ess"] == 1).all()


def test_ess_flags_a_bad_posterior(imperfect):
    """A narrow, shifted q gives weights dominated by a few samples: low ESS."""
    x = imperfect["x"]
    good = make_linear_gaussian(mean_shift=0.0, var_scale=1.2, seed=0)
    bad = make_linear_gaussian(mean_shift=0.6, var_scale=0.2, seed=0)
    with torch.no_grad():
        ess_good = iwae(good, x, k=500, generator=seeded(16))["ess_fraction"]
        ess_bad = iwae(bad, x, k=500, generator=seeded(16))["ess_fraction"]
    assert (ess_bad < 0.1).all() and (ess_good > 0.2).all()


# -- (h) bits per dimension -----------------------------------------------------------------
def test_bits_per_dim_of_uniform_pmf_is_8():
    from vaeood.models.likelihoods import CategoricalLikelihood

    c, h, w = 3, 4, 5
    d = c * h * w
    lik = CategoricalLikelihood(c)
    x = torch.randint(0, 256, (2, c, h, w), dtype=torch.uint8, generator=seeded(17))
    log_px = lik.log_prob(torch.zeros(2, c * 256, h, w, dtype=torch.float64), x)
    torch.testing.assert_close(bits_per_dim(log_px, d), torch.full((2,), 8.0, dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert bits_per_dim(torch.tensor(-d * math.log(256.0)), d).item() == pytest.approx(8.0, abs=1e-12)
    assert bits_per_dim(torch.tensor([0.0]), 1).item() == 0.0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bits_per_dim_rejects_bad_dims(bad):
    with pytest.raises(ValueError):
        bits_per_dim(torch.zeros(2), bad)


# -- interface, errors, gradients -----------------------------------------------------------
def test_registry():
    assert ESTIMATORS.get("elbo") is elbo and ESTIMATORS.get("iwae") is iwae
    assert {"elbo", "iwae"} <= set(ESTIMATORS.names())


def test_outputs_are_per_image(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    with torch.no_grad():
        for name, options in [("elbo", {}), ("elbo", {"kl": "mc", "samples": 4}), ("iwae", {"k": 3})]:
            out = ESTIMATORS.get(name)(model, x, **options)
            assert "log_px_nats" in out
            for key, value in out.items():
                assert value.shape == (B,), (name, key)


def test_bad_options_are_refused(imperfect):
    model, x = imperfect["model"], imperfect["x"]
    with pytest.raises(ValueError, match="kl"):
        elbo(model, x, kl="exact")
    for kwargs in ({"k": 0}, {"chunk_size": 0}, {"max_elements": 0}):
        with pytest.raises(ValueError):
            iwae(model, x, **kwargs)
    with pytest.raises(ValueError):
        elbo(model, x, samples=0)


def test_wrong_model_shapes_are_refused(imperfect):
    model, x = imperfect["model"], imperfect["x"]

    class Flat(Spy):
        def log_likelihood(self, x, z):
            return self.model.log_likelihood(x, z).flatten()

    for kl in ("analytic", "mc"):
        with pytest.raises(ValueError, match="S, B"):
            elbo(Flat(model), x, kl=kl)
    with pytest.raises(ValueError, match="S, B"):
        iwae(Flat(model), x, k=3)


@pytest.mark.parametrize("estimator", ["elbo", "elbo_mc", "iwae"])
def test_gradients_flow(estimator):
    model = make_linear_gaussian(mean_shift=0.1, var_scale=1.3, seed=2)
    x = model.sample(4, seeded(18))
    if estimator == "iwae":
        out = iwae(model, x, k=5, chunk_size=2, generator=seeded(19))
    else:
        out = elbo(model, x, samples=2, kl="mc" if estimator == "elbo_mc" else "analytic",
                   generator=seeded(19))
    loss = -out["log_px_nats"].mean()
    assert torch.is_grad_enabled()
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_elbo_gradient_is_unbiased():
    """The reparameterised gradient averages to the gradient of the exact ELBO."""
    model = make_linear_gaussian(mean_shift=0.1, var_scale=1.3, seed=2)
    x = model.sample(4, seeded(20))
    model.zero_grad()
    model.exact_elbo(x).sum().backward()
    exact_grad = model.weight.grad.clone()
    model.zero_grad()
    elbo(model, x, samples=4000, generator=seeded(21))["log_px_nats"].sum().backward()
    torch.testing.assert_close(model.weight.grad, exact_grad, rtol=0.05, atol=0.05)
