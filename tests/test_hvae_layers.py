"""Per-layer statistics of the hierarchical VAE (features/layers.py), the ``latent`` feature
on it, and the detectors that read them (latent_*, dose_layers): known identities, then a
tiny trained hierarchical run end to end. No real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinydata import blobs, strokes, write_npz
from vaeood.cli import main
from vaeood.training.config import Config, ConfigError
from vaeood.detectors import make_detector
from vaeood.detectors.dose_layers import layer_stat_names
from vaeood.inference.estimators import elbo
from vaeood.evaluation.evaluate import evaluate
from vaeood.features import compute_feature, compute_features, features_of
from vaeood.features import core as features_core
from vaeood.features.layers import layer_stats
from vaeood.features.model import latent
from vaeood.models import HierarchicalVAE, build_model
from vaeood.inference.noise import ImageNoise


def hvae(seed=0, shape=(1, 28, 28), **options):
    cfg = Config().override({"model.arch": "hvae", "model.likelihood": "dlogistic", "model.base_channels": "4"}).model
    cfg.arch_options = {"latent_dims": [6, 4, 3], "widths": [16, 16], **options}
    torch.manual_seed(seed)
    return build_model(cfg, shape).eval()


def images(n=5, seed=0, shape=(1, 28, 28)):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.parametrize("options, dims", [({}, (6, 4, 3)), ({"bottom": "spatial", "latent_dims": [2, 4, 3]},
                                                               (2 * 7 * 7, 4, 3))])
def test_layer_stats_shapes_per_layer(options, dims):
    model, x = hvae(**options), images(5)
    assert model.latent_dims == dims
    out = features_of(model, x, "layer_stats", batch_size=2)  # batches of 2: rows must line up
    assert set(out) == {*(f"rate_layer{i}_nats" for i in (1, 2, 3)), *(f"layer{i}_{p}" for i in (1, 2, 3)
                                                                       for p in ("mu", "logvar"))}
    for i, z in enumerate(dims, start=1):
        assert out[f"rate_layer{i}_nats"].shape == (5,) and (out[f"rate_layer{i}_nats"] >= 0).all()
        assert out[f"layer{i}_mu"].shape == (5, z) and out[f"layer{i}_logvar"].shape == (5, z)
        assert out[f"layer{i}_mu"].dtype == np.float64
    whole = features_of(model, x, "layer_stats", batch_size=5)  # an image's values do not depend on its batch
    for key in out:  # up to float32 rounding in another BLAS batch
        np.testing.assert_allclose(out[key], whole[key], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("samples", [1, 3])
def test_rates_sum_to_the_elbo_kl_term_on_the_same_noise(samples):
    """ELBO = E log p(x|z_1) − Σ_i KL_i (analytic KL given the sampled parents): the layer
    rates are the estimator's per-layer rates on the same per-image noise, and sum to its KL."""
    model, x = hvae(), images(4)
    with torch.no_grad():
        stats = layer_stats(model, x, generator=ImageNoise(x, 7), samples=samples)
        ref = elbo(model, x, samples=samples, generator=ImageNoise(x, 7))
    rates = [stats[f"rate_layer{i}_nats"] for i in (1, 2, 3)]
    for i, r in enumerate(rates, start=1):
        torch.testing.assert_close(r, ref[f"rate_nats_layer{i}"].double(), rtol=0, atol=0)
    torch.testing.assert_close(sum(rates), ref["rate_nats"].double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ref["log_px_nats"].double(), -(ref["distortion_nats"].double() + sum(rates)),
                               rtol=1e-6, atol=1e-3)
    # another seed draws another path: the lower layers' rates (given a sampled parent) change, the top's not
    with torch.no_grad():
        other = layer_stats(model, x, generator=ImageNoise(x, 8), samples=samples)
    assert not torch.equal(other["rate_layer1_nats"], stats["rate_layer1_nats"])
    assert torch.equal(other["rate_layer3_nats"], stats["rate_layer3_nats"])


def test_layer_stats_bottom_up_parameters_are_encode_and_the_top_rate_is_its_kl():
    model, x = hvae(), images(3)
    with torch.no_grad():
        stats = layer_stats(model, x, generator=ImageNoise(x, 0))
        encoded = model.encode(x)
    for i, (mu, logvar) in enumerate(encoded, start=1):
        assert torch.equal(stats[f"layer{i}_mu"], mu.double()) and torch.equal(stats[f"layer{i}_logvar"],
                                                                                logvar.double())
    mu, logvar = encoded[-1]  # q(z_L|x) = N(mu_q,L, sigma_q,L^2) against N(0, I)
    top = 0.5 * (mu.double() ** 2 + logvar.double().exp() - 1 - logvar.double()).sum(-1)
    torch.testing.assert_close(stats["rate_layer3_nats"], top, rtol=1e-5, atol=1e-5)


def test_latent_of_a_hierarchical_vae_is_every_layers_bottom_up_parameters():
    model, x = hvae(), images(3)
    with torch.no_grad():
        out = latent(model, x)
        encoded = model.encode(x)
    assert out["latent_mu"].shape == (3, 6 + 4 + 3) and out["latent_logvar"].shape == (3, 13)
    torch.testing.assert_close(out["latent_mu"], torch.cat([m for m, _ in encoded], -1).double(), rtol=0, atol=0)
    torch.testing.assert_close(out["latent_logvar"], torch.cat([v for _, v in encoded], -1).double(), rtol=0, atol=0)
    assert torch.equal(out["layer2_mu"], encoded[1][0].double())


def test_one_layer_hvae_latent_is_the_single_vae_posterior():
    cfg = Config().override({"model.likelihood": "dlogistic", "model.base_channels": "4", "model.latent_dim": "5"})
    torch.manual_seed(3)
    vae = build_model(cfg.model, (1, 28, 28)).eval()
    one = HierarchicalVAE.from_vae(vae)
    x = images(4)
    with torch.no_grad():
        a, b = latent(vae, x), latent(one, x)
        mu, logvar = vae.posterior(x)
    for key in ("latent_mu", "latent_logvar"):
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    assert torch.equal(b["layer1_mu"], mu.double()) and torch.equal(b["layer1_logvar"], logvar.double())
    with torch.no_grad():  # and its one rate is the VAE's analytic KL
        rate = layer_stats(one, x, generator=ImageNoise(x, 0))["rate_layer1_nats"]
    torch.testing.assert_close(rate, elbo(vae, x, generator=ImageNoise(x, 0))["rate_nats"].double(), rtol=0, atol=0)


def test_layer_stats_refuse_a_single_layer_vae():
    vae = build_model(Config().override({"model.base_channels": "4"}).model, (1, 28, 28))
    with pytest.raises(TypeError, match="hierarchical"):
        layer_stats(vae, images(2))


def test_layer_stat_names_and_detector_options():
    feats = {"rate_layer10_nats": 0, "rate_layer2_nats": 0, "llr_gt_2_nats": 0, "llr_gt_1_nats": 0,
             "elbo_nats": 0, "l_gt_1_nats": 0, "layer1_mu": 0}
    assert layer_stat_names(feats) == ["rate_layer2_nats", "rate_layer10_nats", "llr_gt_1_nats", "llr_gt_2_nats"]
    for name in ("latent_gmm", "latent_knn", "latent_mahalanobis"):
        for bad in ([], [0], "2", [True]):
            with pytest.raises(ConfigError, match="layers"):
                make_detector(name, {"layers": bad})
        assert make_detector(name, {"layers": [3, 2, 3]}).options["layers"] == [2, 3]
        assert make_detector(name, {"layers": [2]}).why_not({"has_fit_data": True}) == \
            "option layers needs a hierarchical VAE (model.arch=hvae)"
        assert make_detector(name).why_not({"hierarchical": True, "has_fit_data": True}) is None
    with pytest.raises(ConfigError, match="samples"):
        make_detector("dose_layers", {"samples": 0})
    assert make_detector("dose_layers").why_not({"has_fit_data": True}) == "needs a hierarchical VAE (model.arch=hvae)"


def test_dose_layers_by_hand():
    """Fitted on in-distribution rates and LLRs, the score grows as one statistic leaves their range."""
    rng = np.random.default_rng(0)
    n = 400
    fit = {"rate_layer1_nats": rng.normal(50, 2, n), "rate_layer2_nats": rng.normal(10, 1, n),
           "llr_gt_1_nats": rng.normal(3, 0.5, n), "elbo_nats": rng.normal(-900, 5, n)}
    det = make_detector("dose_layers").fit(fit)
    assert det.fit_info["stats"] == ["rate_layer1_nats", "rate_layer2_nats", "llr_gt_1_nats"]
    assert det.frozen_options()["stats"] == det.fit_info["stats"]
    probe = {k: np.full(3, np.median(v)) for k, v in fit.items()}
    probe["llr_gt_1_nats"] = np.array([3.0, 5.0, 9.0])
    s = det.score(probe)
    assert s[0] < s[1] < s[2]
    with_elbo = make_detector("dose_layers", {"stats": ["elbo_nats", "llr_gt_1_nats"]}).fit(fit)
    assert with_elbo.stats_ == ["elbo_nats", "llr_gt_1_nats"]
    with pytest.raises(KeyError, match="rate_layer"):
        make_detector("dose_layers").fit({"llr_gt_1_nats": fit["llr_gt_1_nats"]})


# -- a tiny trained hierarchical run ---------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("hvae_layers")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(600, 0))
    write_npz(data, "fashion_mnist", "test", blobs(120, 1))
    write_npz(data, "mnist", "test", strokes(120, 3))
    out = root / "run"
    assert main(["train", str(out), "--data-dir", str(data), "--data.limit=300", "--train.epochs=1",
                 "--model.arch=hvae", "--model.base_channels=4", "--model.likelihood=dlogistic",
                 '--model.arch_options={"latent_dims": [4, 3, 2], "widths": [8, 8]}', "--train.batch_size=64"]) == 0
    return {"run": out, "data": data}


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_layer_stats_are_cached_and_reused(run, monkeypatch):
    kw = dict(data_dir=str(run["data"]), limit=9, seed=3)
    first = compute_feature(run["run"], "fashion_mnist", "test", "layer_stats", **kw)
    assert first["layer1_mu"].shape == (9, 4) and first["layer3_logvar"].shape == (9, 2)

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of read from the cache")

    monkeypatch.setattr(features_core, "features_of", fail)
    again = compute_feature(run["run"], "fashion_mnist", "test", "layer_stats", **kw)
    for key in first:
        if key != "meta":
            np.testing.assert_array_equal(again[key], first[key])
    monkeypatch.undo()
    # one noise per image for every feature: the rates sum to log_px's (elbo) KL, llr's ELBO is log_px by mc
    feats = compute_features(run["run"], "fashion_mnist", "test", ["layer_stats", "log_px", "latent"], **kw)
    np.testing.assert_allclose(sum(feats[f"rate_layer{i}_nats"] for i in (1, 2, 3)), feats["rate_nats"],
                               rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(feats["latent_mu"], np.concatenate([feats[f"layer{i}_mu"] for i in (1, 2, 3)], 1))


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_latent_detectors_and_dose_layers_fit_and_score_a_hierarchical_run(run, tmp_path):
    dets = ["latent_gmm", "latent_knn", "latent_mahalanobis", "dose_layers", "llr"]
    opts = {"latent_knn": {"layers": [2, 3]}, "latent_gmm": {"components": [1, 2]}}
    out = evaluate(run["run"], "fashion_mnist", ["mnist"], detectors=dets, detector_options=opts, out_dir=tmp_path,
                   data_dir=str(run["data"]), n_fit=200, limit=100)
    assert out["skipped"] == {}
    assert set(out["results"]) == set(dets)
    for name in dets:
        assert 0 <= out["results"][name]["mnist"]["auroc"] <= 1
        saved = np.load(tmp_path / out["detector_scores"][name])
        assert saved["fashion_mnist"].shape == (100,)
        assert name == "llr" or saved["_fit"].shape == (200,)  # llr does not fit
        assert np.isfinite(saved["fashion_mnist"]).all() and np.isfinite(saved["mnist"]).all()
    assert out["fit_data"]["start"] == 300 and out["fit_data"]["split"] == "train"
    assert out["detectors"]["dose_layers"]["fit"]["stats"] == ["rate_layer1_nats", "rate_layer2_nats",
                                                               "rate_layer3_nats", "llr_gt_1_nats", "llr_gt_2_nats"]
    assert out["detectors"]["latent_knn"]["options"]["layers"] == [2, 3]
    # the detectors that read a single Gaussian q(z|x) still refuse the hierarchical run, saying why
    with pytest.raises(ConfigError, match="'dose' does not apply.*single Gaussian"):
        evaluate(run["run"], "fashion_mnist", ["mnist"], detectors=["dose", "latent_gmm"], out_dir=tmp_path / "b",
                 data_dir=str(run["data"]), n_fit=200, limit=50)
