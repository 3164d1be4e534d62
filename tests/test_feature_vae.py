"""The VAE of backbone features: its Gaussian density against torch.distributions by hand, the
standardisation by in-distribution statistics only, and a tiny training run whose likelihood
ranks a far-off cluster below the training cluster (synthetic features, no backbone)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from vaeood.decisions.fitted_detector import load_fitted, save_fitted
from vaeood.detectors import make_detector
from vaeood.detectors import feature_vae as fv
from vaeood.evaluation.metrics import ood_metrics
from vaeood.models.feature_vae import FeatureVAE
from vaeood.models.likelihoods import GaussianFeatureLikelihood
from vaeood.training.config import ConfigError

SMALL = {"hidden_dim": 32, "latent_dim": 4, "epochs": 15}
D = 16


def clusters(seed: int = 0):
    """Fit rows on a 4-dimensional subspace of R^16 (plus noise), in-distribution test rows of the
    same law, and the test rows shifted by 3 in every coordinate (far off)."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(4, D))

    def draw(n):
        return rng.normal(size=(n, 4)) @ basis + 0.1 * rng.normal(size=(n, D)) + 5.0

    test = draw(100)
    return draw(300), test, test + 3.0


def feats(f) -> dict:
    return {"backbone_features": np.asarray(f, dtype=np.float64)}


def test_the_gaussian_density_is_normal_log_prob_summed_and_refuses_pixels():
    g = torch.Generator().manual_seed(0)
    like = GaussianFeatureLikelihood(5)
    with torch.no_grad():
        like.logvar.copy_(torch.randn(5, generator=g))
    mean, x = torch.randn(3, 2, 5, generator=g), torch.randn(2, 5, generator=g)
    expected = Normal(mean, torch.exp(0.5 * like.logvar)).log_prob(x).sum(-1)
    torch.testing.assert_close(like.log_prob(mean, x), expected)
    assert like.log_prob(mean, x).shape == (3, 2) and not like.normalised and like.continuous
    with pytest.raises(TypeError, match="continuous features"):
        like.log_prob(mean, torch.zeros(2, 5, dtype=torch.uint8))


def test_the_model_is_a_density_of_the_raw_features():
    """log p(f|z) = log N(f; m + s·μ(z), diag s²σ²): the standardisation's Jacobian included."""
    rng = np.random.default_rng(1)
    f = rng.normal(3.0, 2.0, size=(50, D))
    model = FeatureVAE.for_features(f, hidden_dim=8, latent_dim=2)
    z = torch.randn(4, 3, 2)
    x = torch.as_tensor(f[:3], dtype=torch.float32)
    with torch.no_grad():
        decoded = model.decoder(z)
        scale = model.feature_std * torch.exp(0.5 * model.likelihood.logvar)
        expected = Normal(model.feature_mean + model.feature_std * decoded, scale).log_prob(x).sum(-1)
        torch.testing.assert_close(model.log_likelihood(x, z), expected, rtol=1e-5, atol=1e-3)


def test_standardisation_uses_the_vae_training_rows_only():
    fit, test, far = clusters()
    detector = make_detector("feature_vae_nll", SMALL).fit(feats(fit))
    order = np.random.default_rng(0).permutation(len(fit))
    train = fit[np.sort(order[60:])].astype(np.float32)  # holdout 0.2 of 300: the reader's 60 rows
    np.testing.assert_allclose(detector.vae_state["feature_mean"], train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(detector.vae_state["feature_std"], train.std(axis=0), rtol=1e-4)
    before = detector.score(feats(test))
    detector.score(feats(far))  # scoring other images changes nothing
    np.testing.assert_array_equal(detector.score(feats(test)), before)
    # a constant feature is standardised by 1, not divided by 0
    assert FeatureVAE.for_features(np.ones((4, 3)), hidden_dim=4, latent_dim=1).feature_std.tolist() == [1.0] * 3


def test_a_tiny_feature_vae_ranks_a_far_cluster_less_likely_and_the_readers_agree():
    fit, test, far = clusters()
    nll = make_detector("feature_vae_nll", SMALL).fit(feats(fit))
    assert ood_metrics(nll.score(feats(test)), nll.score(feats(far)))["auroc"] > 0.99
    trained = len(fv._TRAINED)
    typicality = make_detector("feature_vae_typicality", SMALL).fit(feats(fit))
    assert len(fv._TRAINED) == trained  # the same rows and options share one trained VAE
    np.testing.assert_allclose(typicality.score(feats(far)),
                               np.abs(nll.score(feats(far)) - typicality.reader.entropy_nats))
    for name in ("feature_vae_dose", "feature_vae_latent"):
        d = make_detector(name, SMALL).fit(feats(fit))
        assert ood_metrics(d.score(feats(test)), d.score(feats(far)))["auroc"] > 0.95, name
    assert nll.fit_info["vae_images"] == 240 and nll.fit_info["reader_images"] == 60
    assert math.isfinite(nll.fit_info["final_loss_nats"])


def test_a_saved_fit_loads_through_the_restricted_unpickler(tmp_path):
    fit, test, _ = clusters()
    detector = make_detector("feature_vae_latent", {**SMALL, "reader": "latent_gmm"}).fit(feats(fit))
    path = tmp_path / "d.fitted.pkl"
    sha = save_fitted(path, detector, np.zeros((2, 1)), np.zeros(2), lambda x: np.zeros(len(x)))
    assert sha is not None
    loaded = load_fitted(path, sha)["detector"]
    np.testing.assert_array_equal(loaded.score(feats(test)), detector.score(feats(test)))


def test_bad_options_are_refused_by_name():
    with pytest.raises(ConfigError, match="reader must be one of nll"):
        make_detector("feature_vae_nll", {"reader": "dose"})
    with pytest.raises(ConfigError, match="holdout must be a fraction"):
        make_detector("feature_vae_dose", {"holdout": 1.0})
    with pytest.raises(ConfigError, match="latent_dim must be a positive integer"):
        make_detector("feature_vae_latent", {"latent_dim": 0})
    with pytest.raises(ConfigError, match="leave 3 to train the VAE"):
        make_detector("feature_vae_nll", SMALL).fit(feats(np.zeros((4, D))))
