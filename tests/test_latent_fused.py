"""The latent-space detectors and the fused detector: known answers on hand-made features,
then on a tiny trained run: the fused fit reads only held-out training images, and
`vaeood detect --detector fused` keeps its false-alarm guarantee."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vaeood
from tinydata import blobs, strokes, write_npz
from vaeood.cli import main
from vaeood.decisions.conformal_rates import binomial_upper
from vaeood.detectors import make_detector
from vaeood.detectors.fused import TailPValue
from vaeood.evaluation.metrics import ood_metrics

TINY = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64",
        "--model.likelihood=dlogistic"]


def latent(mu: np.ndarray, logvar: np.ndarray | None = None) -> dict:
    return {"latent_mu": mu, "latent_logvar": np.zeros_like(mu) if logvar is None else logvar}


def far_near(n: int, seed: int, far: float = 0.0, near: float = 0.0) -> dict:
    """Features of dose_plus and of the latent detectors: ``far`` shifts the likelihood
    only, ``near`` moves the posterior means into a region between the two modes."""
    rng = np.random.default_rng(seed)
    lp = rng.normal(-2000.0, 50.0, n) + far
    mode = np.where(rng.random(n) < 0.5, -3.0, 3.0)[:, None]
    mu = np.c_[mode * (1 - near) + rng.normal(0, 0.5, (n, 2)), rng.normal(0, 1, n)]
    return {"log_px_nats": lp, "png_bpd": -lp / 1000.0 + rng.normal(0, 0.01, n),
            "recon_log_l2": rng.normal(1.0, 0.1, n), **latent(mu, rng.normal(-1.0, 0.1, (n, 3)))}


def test_latent_gmm_chooses_two_modes_and_flags_the_gap_between_them_where_mahalanobis_cannot():
    fit = far_near(2000, 0)
    gmm = make_detector("latent_gmm", {"components": [1, 2]}).fit(fit)
    assert gmm.fit_info["n_components"] == 2 and set(gmm.fit_info["validation_log_lik"]) == {1, 2}
    assert gmm.frozen_options()["components"] == [2]
    between = far_near(500, 1, near=1.0)  # at the global mean: typical for one Gaussian
    assert ood_metrics(gmm.score(far_near(500, 2)), gmm.score(between))["auroc"] > 0.99
    maha = make_detector("latent_mahalanobis").fit(fit)
    assert ood_metrics(maha.score(far_near(500, 2)), maha.score(between))["auroc"] < 0.5  # one Gaussian: no gap


def test_latent_mahalanobis_and_knn_by_hand():
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(0, [1.0, 2.0], (400, 2)), rng.normal(0, 0.5, (400, 2))
    u = np.c_[mu, logvar]
    t = (u - u.mean(0)) / u.std(0)
    probe_mu, probe_lv = np.array([[1.0, -2.0], [0.0, 0.0]]), np.array([[0.3, 0.1], [0.0, 0.0]])
    tp = (np.c_[probe_mu, probe_lv] - u.mean(0)) / u.std(0)
    maha = make_detector("latent_mahalanobis").fit(latent(mu, logvar))
    inv = np.linalg.inv(np.cov(t, rowvar=False))
    np.testing.assert_allclose(maha.score(latent(probe_mu, probe_lv)),
                               np.einsum("ni,ij,nj->n", tp, inv, tp), rtol=1e-4)
    knn = make_detector("latent_knn", {"k": 3}).fit(latent(mu, logvar))
    third = np.sort(np.linalg.norm(tp[:, None] - t[None], axis=-1), axis=1)[:, 2]
    np.testing.assert_allclose(knn.score(latent(probe_mu, probe_lv)), third, rtol=1e-9)
    # Sun et al.'s normalisation, and the default k = n / 1000 (at least 1)
    unit = make_detector("latent_knn", {"normalise": True}).fit(latent(mu, logvar))
    assert unit.fit_info["k"] == 1
    tn, tpn = t / np.linalg.norm(t, axis=1, keepdims=True), tp / np.linalg.norm(tp, axis=1, keepdims=True)
    np.testing.assert_allclose(unit.score(latent(probe_mu, probe_lv)),
                               np.linalg.norm(tpn[:, None] - tn[None], axis=-1).min(axis=1), rtol=1e-9)


def test_tail_p_values_by_hand():
    ref = np.arange(100.0)  # 0 … 99
    p = TailPValue(ref, tail=0.9)
    assert p.u == pytest.approx(89.1)
    assert p.p_u == pytest.approx(11 / 101)  # 1 + #{ref ≥ 89.1} = 1 + 10
    np.testing.assert_allclose(np.exp(p(np.array([-5.0, 50.0, 89.0]))), [101 / 101, 51 / 101, 12 / 101])
    tau = np.mean(np.arange(90.0, 100.0) - 89.1)
    np.testing.assert_allclose(p(np.array([99.0, 1000.0])), np.log(11 / 101) - (np.array([99.0, 1000.0]) - 89.1) / tau)
    assert np.all(np.diff(p(np.linspace(-10, 2000, 500))) <= 0)  # monotone: a higher score is never more typical
    assert np.isnan(p(np.array([np.nan])))[0]


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_fused_catches_far_evidence_and_near_evidence_that_each_component_alone_misses():
    fit = far_near(2000, 0)
    fused = make_detector("fused").fit(fit)
    assert fused.fit_info["latent_gmm"]["n_components"] >= 2
    s_in = fused.score(far_near(1000, 1))
    far, near = far_near(1000, 2, far=-400.0), far_near(1000, 3, near=1.0)
    assert ood_metrics(s_in, fused.score(far))["auroc"] > 0.99
    assert ood_metrics(s_in, fused.score(near))["auroc"] > 0.99
    dose_plus = make_detector("dose_plus").fit(fit)
    gmm = make_detector("latent_gmm").fit(fit)
    assert ood_metrics(dose_plus.score(far_near(1000, 1)), dose_plus.score(near))["auroc"] < 0.6
    assert ood_metrics(gmm.score(far_near(1000, 1)), gmm.score(far))["auroc"] < 0.6
    # which component flagged what
    parts = fused.component_log_p(near)
    assert np.median(parts["latent_gmm"]) < np.log(0.01) < np.median(parts["dose_plus"])


def test_fused_options_are_checked():
    for bad in ({"components": []}, {"components": ["nll"]}, {"components": ["fused"]}, {"folds": 1},
                {"tail": 1.0}):
        with pytest.raises(vaeood.training.config.ConfigError, match="fused"):
            make_detector("fused", bad)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(900, 0))
    write_npz(data, "fashion_mnist", "test", blobs(300, 1))
    write_npz(data, "mnist", "test", strokes(100, 3))
    write_npz(data, "other", "test", strokes(100, 4)[:, ::-1])
    run = root / "run"
    assert main(["train", str(run), "--data-dir", str(data), "--data.limit=300", *TINY]) == 0
    return {"run": run, "data": data}


def test_latent_feature_is_the_posterior(tiny):
    from vaeood.training.run import load_model, to_tensor

    feats = vaeood.compute_features(tiny["run"], "fashion_mnist", "test", "latent", data_dir=str(tiny["data"]), limit=7)
    model = load_model(tiny["run"], "cpu")[0]
    images = np.load(tiny["data"] / "fashion_mnist_test.npz")["x"][:7]
    with torch.no_grad():
        mu, logvar = model.posterior(to_tensor(images[..., None], torch.device("cpu")))
    assert feats["latent_mu"].shape == (7, 4) and feats["latent_logvar"].shape == (7, 4)
    np.testing.assert_allclose(feats["latent_mu"], mu.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(feats["latent_logvar"], logvar.double().numpy(), rtol=1e-6)


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_fused_fit_never_reads_ood_images(tiny):
    """The in-distribution scores and the fit record are the same whichever OOD sets are
    evaluated beside them: nothing of an OOD set reaches the fit."""
    common = dict(detectors=["fused"], data_dir=str(tiny["data"]), n_fit=300, limit=200)
    a = vaeood.evaluate(tiny["run"], "fashion_mnist", ["mnist"], out_dir=tiny["run"].parent / "ev_a", **common)
    b = vaeood.evaluate(tiny["run"], "fashion_mnist", ["other"], out_dir=tiny["run"].parent / "ev_b", **common)
    fd = a["fit_data"]
    assert (fd["dataset"], fd["split"], fd["start"], fd["stop"]) == ("fashion_mnist", "train", 300, 600)
    assert fd == b["fit_data"] and a["detectors"]["fused"]["fit"] == b["detectors"]["fused"]["fit"]
    with np.load(tiny["run"].parent / "ev_a" / "detector_scores" / "fused.npz") as fa, \
            np.load(tiny["run"].parent / "ev_b" / "detector_scores" / "fused.npz") as fb:
        np.testing.assert_array_equal(fa["fashion_mnist"], fb["fashion_mnist"])
        np.testing.assert_array_equal(fa["_fit"], fb["_fit"])


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_detect_with_fused_keeps_the_false_alarm_rate_within_the_binomial_bound(tiny):
    run, data = tiny["run"], tiny["data"]
    record = vaeood.calibrate(run, "fused", n_fit=300, n_calibration=300, data_dir=str(data))
    assert record["fit_slice"] == [300, 600] and record["calibration_slice"] == [600, 900]
    test = data / "fashion_mnist_test.npz"
    for alpha in (0.05, 0.1):
        result = vaeood.decide(run, test, "fused", alpha=alpha, data_dir=str(data))
        assert result.flagged.mean() <= binomial_upper(alpha, len(result.flagged))
