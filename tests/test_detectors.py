"""Detectors: known answers and properties (issue 11), on hand-made features, a tiny
trained run, and VAEs defined here (bring your own VAE, pythae adapter)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tinydata import blobs, strokes, write_npz
from vaeood import VAEAdapter, evaluate, evaluate_model, fit_detector, from_pythae
from vaeood.cli import main
from vaeood.training.config import Config
from vaeood.detectors import DETECTORS, FitDataError, batch_test_power, make_detector
from vaeood.features import features_of
from vaeood.training.train import train

TINY = {"train.epochs": "2", "model.base_channels": "4", "model.latent_dim": "4", "model.likelihood": "dlogistic",
        "data.holdout": "150"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A dlogistic run trained on 250 'blobs', with 150 held-out training images, and test
    sets: fashion_mnist (blobs), fm_again (more blobs: in-distribution), mnist (strokes)."""
    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(400, 0))
    write_npz(data, "fashion_mnist", "test", blobs(300, 1))
    write_npz(data, "fm_again", "test", blobs(300, 21))
    write_npz(data, "mnist", "test", strokes(100, 3))
    run = train(Config().override(TINY), root / "run", data_dir=str(data))
    return run, data


# -- known answers on hand-made features ------------------------------------------------------
def test_typicality_is_symmetric_around_the_entropy_estimate():
    det = make_detector("typicality").fit({"log_px_nats": -np.array([100.0, 110.0, 120.0])})
    assert det.entropy_nats == pytest.approx(110.0)
    d = np.array([0.0, 1.5, 7.0, 30.0])
    above, below = det.score({"log_px_nats": -(110.0 + d)}), det.score({"log_px_nats": -(110.0 - d)})
    np.testing.assert_allclose(above, below)
    np.testing.assert_allclose(above, d)


def test_typicality_batch_test_holds_its_level_and_gains_power_with_m():
    rng = np.random.default_rng(0)
    fit, same = rng.normal(100, 5, 4000), rng.normal(100, 5, 2000)
    shifted = rng.normal(94, 5, 2000)  # more likely than typical: the case typicality is for
    out = batch_test_power(fit, same, shifted, alpha=0.05, seed=1)["by_m"]
    for m in (1, 2, 5, 10):
        assert out[m]["false_alarm"] == pytest.approx(0.05, abs=0.03)
    powers = [out[m]["power"] for m in (1, 2, 5, 10)]
    assert powers == sorted(powers) and powers[-1] > 0.9 and powers[0] < 0.3


def test_complexity_subtracts_compressed_bits_per_dim():
    det = make_detector("complexity").fit({})
    feats = {"bpd": np.array([3.0, 1.0]), "png_bpd": np.array([2.5, 0.2])}
    np.testing.assert_allclose(det.score(feats), [0.5, 0.8])
    assert make_detector("complexity_jxl").needs["compressed"] == {"codec": "jxl"}


def test_lpath_mahalanobis_is_the_squared_distance_in_fit_units():
    rng = np.random.default_rng(0)
    fit = {k: rng.normal(0, 1, 20000) for k in ("recon_log_l2", "mu_z_norm", "sigma_z_norm")}
    det = make_detector("lpath").fit(fit)
    probe = {"recon_log_l2": np.array([0.0, 3.0]), "mu_z_norm": np.array([0.0, 0.0]),
             "sigma_z_norm": np.array([0.0, -4.0])}
    np.testing.assert_allclose(det.score(probe), [0.0, 25.0], atol=0.3)
    copod = make_detector("lpath_copod").fit(fit)
    s = copod.score(probe)
    assert s[1] > s[0]


@pytest.mark.slow  # the reference COPOD is called one image at a time
@pytest.mark.parametrize("ties", [False, True])
def test_copod_scores_equal_pyods_copod_called_one_row_at_a_time(ties):
    from pyod.models.copod import COPOD

    from vaeood.detectors.lpath import copod_scores

    rng = np.random.default_rng(1)
    train = rng.standard_normal((500, 3))
    train[:, 1], train[:, 2] = np.exp(train[:, 1]), -np.exp(train[:, 2])  # right- and left-skewed columns
    x = np.concatenate([3 * rng.standard_normal((60, 3)), train[:10]])  # tails, bulk, and fit rows again
    if ties:
        train, x = np.round(train * 2) / 2, np.round(x * 2) / 2
    model = COPOD().fit(train)
    expected = [model.decision_function(row[None])[0] for row in x]
    np.testing.assert_allclose(copod_scores(train, x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["dose", "dose_svm"])
def test_dose_scores_the_tails_above_the_bulk(name):
    rng = np.random.default_rng(0)
    stats = ("log_px_nats", "rate_nats", "distortion_nats", "posterior_entropy_nats", "prior_cross_entropy_nats")
    fit = {k: rng.normal(10.0 * i, 1.0 + i, 2000) for i, k in enumerate(stats)}
    det = make_detector(name).fit(fit)
    centre = {k: np.array([10.0 * i]) for i, k in enumerate(stats)}
    far = {k: np.array([10.0 * i + 6.0 * (1.0 + i)]) for i, k in enumerate(stats)}
    assert det.score(far)[0] > det.score(centre)[0]


def test_a_detector_that_fits_refuses_features_of_test_images():
    feats = {"log_px_nats": np.zeros(3), "meta": {"log_px": {"dataset": "fashion_mnist", "split": "test"}}}
    with pytest.raises(FitDataError, match="never on the images they are evaluated on"):
        make_detector("typicality").fit(feats)


def test_unknown_detectors_and_options_are_refused_by_name():
    with pytest.raises(KeyError, match="did you mean 'typicality'"):
        DETECTORS.get("typicalty")
    with pytest.raises(ValueError, match="takes no option 'bandwith'.*did you mean 'bandwidth'"):
        make_detector("dose", {"bandwith": 0.3})


# -- a trained run ---------------------------------------------------------------------------
@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_every_detector_gives_auroc_near_half_when_the_ood_set_is_more_in_distribution(tiny, tmp_path):
    run, data = tiny
    out = evaluate(run, "fashion_mnist", ["fm_again"], detectors="all", out_dir=tmp_path, data_dir=str(data),
                   n_fit=150)
    assert out["skipped"] == {"likelihood_ratio": "needs option background_run",
                              "lpath_2m": "needs option second_run",
                              "llr": "needs a hierarchical VAE (model.arch=hvae)",
                              "dose_layers": "needs a hierarchical VAE (model.arch=hvae)"}
    names = set(DETECTORS.names()) - set(out["skipped"])
    assert set(out["results"]) == names
    for name in names:  # 300 vs 300 images: the AUROC's standard error is ≈ 0.024
        assert abs(out["results"][name]["fm_again"]["auroc"] - 0.5) < 0.12, name
    assert out["fit_data"]["start"] == 250 and out["fit_data"]["stop"] == 400 and out["fit_data"]["split"] == "train"
    # per-image scores for ROC curves, options and cost recorded
    saved = np.load(tmp_path / out["detector_scores"]["dose"])
    assert saved["fashion_mnist"].shape == (300,) and saved["fm_again"].shape == (300,)
    assert saved["_fit"].shape == (150,)
    assert out["detectors"]["complexity"]["options"]["codec"] == "png"
    assert out["detectors"]["dose"]["fit"]["n"] == 150
    assert all(v["seconds"]["features_total"] >= 0 for v in out["detectors"].values())
    assert set(out["typicality_batch_test"]["fm_again"]["by_m"]) == {1, 2, 5, 10}
    json.loads((tmp_path / "metrics.json").read_text())  # it was written, and is JSON


def test_likelihood_ratio_is_zero_when_the_background_is_the_model_itself(tiny, tmp_path):
    run, data = tiny
    out = evaluate(run, "fashion_mnist", ["mnist"], detectors=["likelihood_ratio", "lpath_2m", "nll"],
                   detector_options={"likelihood_ratio": {"background_run": str(run)},
                                     "lpath_2m": {"second_run": str(run)}},
                   out_dir=tmp_path, data_dir=str(data))
    saved = np.load(tmp_path / out["detector_scores"]["likelihood_ratio"])
    assert (saved["fashion_mnist"] == 0).all() and (saved["mnist"] == 0).all()
    assert out["results"]["likelihood_ratio"]["mnist"]["auroc"] == 0.5
    assert out["detectors"]["likelihood_ratio"]["options"]["background_run"] == str(run)
    # the model as its own background is allowed, but departs from the papers' recipes: said
    assert any("without pixel noise" in w for w in out["warnings"])
    assert any("second_run has the run's latent size (4)" in w for w in out["warnings"])


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_companion_runs_of_another_dataset_or_image_shape_are_refused(tiny, tmp_path, capsys):
    """Issue 23: a background trained at another image shape was accepted with --pad (a
    meaningless AUROC); one of another dataset, without noise, without a word."""
    run, data = tiny
    quick = {k: v for k, v in TINY.items() if k != "data.holdout"} | {"train.epochs": "1"}
    other = tmp_path / "data"
    write_npz(other, "fashion_mnist", "train", blobs(100, 5, size=32))
    write_npz(other, "mnist", "train", strokes(100, 6))
    wide = train(Config().override({**quick, "data.noise_rate": "0.2"}), tmp_path / "wide", data_dir=str(other))
    digits = train(Config().override({**quick, "data.name": "mnist"}), tmp_path / "digits", data_dir=str(other))
    grey = train(Config().override({**quick, "model.likelihood": "bernoulli"}), tmp_path / "grey", data_dir=str(data))
    base = ["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
            "--out", str(tmp_path), "--detectors", "likelihood_ratio"]
    cases = [(wide, ["--pad"], "was trained on images of C×H×W = 1×32×32, but the run"),
             (digits, [], "was trained on mnist/train, but the run"),
             (tmp_path / "nothing", [], "is not a trained run directory"),
             (grey, [], "has a bernoulli decoder and the run a dlogistic one")]
    for companion, extra, message in cases:
        options = json.dumps({"likelihood_ratio": {"background_run": str(companion)}})
        assert main([*base, "--detector-options", options, *extra]) == 2
        err = capsys.readouterr().err
        assert "vaeood: error: detector 'likelihood_ratio': background_run" in err and message in err, err
    assert not (tmp_path / "metrics.json").exists()
    # calibrate (and so detect) refuse it the same way, before scoring
    assert main(["calibrate", str(run), "--detector", "likelihood_ratio", "--data-dir", str(data), "--n", "20",
                 "--detector-options", json.dumps({"background_run": str(digits)})]) == 2
    assert "was trained on mnist/train, but the run" in capsys.readouterr().err
    assert not (run / "calibration" / "likelihood_ratio.npz").exists()


def test_fitting_on_test_images_or_trained_images_is_refused(tiny):
    run, data = tiny
    with pytest.raises(FitDataError,
                       match="never on fashion_mnist/test: test images are what detectors are evaluated on"):
        fit_detector(run, "typicality", split="test", data_dir=str(data))
    with pytest.raises(FitDataError, match="another dataset is not in-distribution"):
        fit_detector(run, "dose", dataset="fm_again", split="train", data_dir=str(data))
    with pytest.raises(FitDataError,
                       match=r"images \[0, 100\) of fashion_mnist/train were used to train .* from index 250"):
        fit_detector(run, "lpath", start=0, stop=100, data_dir=str(data))
    det = fit_detector(run, "typicality", start=300, stop=400, data_dir=str(data))
    assert det.fit_info["start"] == 300 and det.entropy_nats > 0


def test_a_run_trained_on_every_image_cannot_fit_detectors(tmp_path, tiny):
    _, data = tiny
    run = train(Config().override({k: v for k, v in TINY.items() if k != "data.holdout"} | {"train.epochs": "1"}),
                tmp_path / "all", data_dir=str(data))
    with pytest.raises(FitDataError, match="--data.holdout=N"):
        evaluate(run, "fashion_mnist", ["mnist"], detectors=["dose"], out_dir=tmp_path, data_dir=str(data))


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_evaluate_detectors_from_the_cli(tiny, tmp_path, capsys):
    run, data = tiny
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
                 "--out", str(tmp_path), "--detectors", "nll,typicality,complexity", "--n-fit", "60",
                 "--detector-options", '{"complexity": {"codec": "jxl"}}']) == 0
    printed = capsys.readouterr().out
    assert "typicality" in printed and "AUROC" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["results"]) == {"nll", "typicality", "complexity"}
    assert metrics["detectors"]["complexity"]["options"]["codec"] == "jxl"
    assert metrics["fit_data"]["n"] == 60
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
                 "--out", str(tmp_path), "--detectors", "dosee"]) == 2
    assert "did you mean 'dose'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--detectors", ""], "--detectors names no detector (got '')"),  # an unset shell variable
    (["--detectors", ","], "--detectors names no detector (got ',')"),
    (["--detectors", " , ,"], "--detectors names no detector"),
    (["--detectors", "nll", "--detector-options", '{"nll": 3}'],
     "--detector-options: the options of detector 'nll' must be a JSON object"),
    (["--detectors", "nll", "--detector-options", '{"nll": ["iwae"]}'], "got list ['iwae']"),
    (["--detector-options", '[1]'], "--detector-options must be a JSON object"),
    (["--detectors", "likelihood_ratio", "--detector-options", '{"likelihood_ratio": {"background_run": 5}}'],
     "detector 'likelihood_ratio': background_run must be a run directory (a path), got int 5"),
    (["--detectors", "likelihood_ratio", "--detector-options", '{"likelihood_ratio": {"background_run": ""}}'],
     "background_run must be a run directory (a path), got str ''"),
    # values of the wrong kind inside a detector's options (were tracebacks)
    (["--detectors", "nll", "--detector-options", '{"nll": {"estimator_options": 5}}'],
     "detector 'nll': options {'estimator': 'elbo', 'estimator_options': 5} are not valid"),
    (["--detectors", "nll", "--detector-options", '{"nll": {"estimator": 3}}'],
     "the estimator must be named by a text, got int 3; known: elbo, iwae"),
    (["--detectors", "nll", "--detector-options", '{"nll": {"estimator_options": {"samples": "x"}}}'],
     "samples must be a positive integer, got 'x'"),
    (["--detectors", "nll", "--detector-options", '{"nll": {"estimator_options": {"sample": 2}}}'],
     "estimator 'elbo' takes no option 'sample'"),
])
def test_empty_detector_lists_and_options_that_are_not_objects_are_refused(tiny, tmp_path, capsys, argv, message):
    """Issue 23: `--detectors ''` ran every detector, `--detectors ,` none (exit 0), and
    options that are not an object were a traceback; each is now an error naming the option."""
    run, data = tiny
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
                 "--out", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vaeood: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "metrics.json").exists()


def test_detectors_that_need_bits_are_refused_for_a_bernoulli_decoder(tiny, tmp_path, capsys):
    _, data = tiny
    run = train(Config().override({**TINY, "model.likelihood": "bernoulli", "train.epochs": "1"}), tmp_path / "b",
                data_dir=str(data))
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
                 "--detectors", "complexity"]) == 2
    err = capsys.readouterr().err
    assert "detector 'complexity' does not apply" in err and "not a normalised pmf" in err


# -- bring your own VAE ------------------------------------------------------------------------
class ConstantBernoulliVAE(nn.Module):
    """q(z|x) = p(z) = N(0, I) and p(x|z) = Bernoulli(p) per pixel on x/255, whatever z:
    then ELBO = IWAE_K = log p(x) = Σ_i [x_i log p + (1 − x_i) log(1 − p)] exactly."""

    def __init__(self, p=0.3):
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(float(np.log(p / (1 - p)))))

    def encode(self, x):
        zeros = torch.zeros(x.shape[0], 2)
        return zeros, zeros

    def decode(self, z):
        return torch.sigmoid(self.logit).expand(z.shape[0], 1, 28, 28)


def bernoulli_log_prob(params, x):
    return (x * params.log() + (1 - x) * (1 - params).log()).flatten(1).sum(-1)


def test_your_own_vae_gives_the_exact_log_likelihood():
    mine = ConstantBernoulliVAE()
    model = VAEAdapter(mine.encode, mine.decode, bernoulli_log_prob, (1, 28, 28), modules={"vae": mine})
    images = np.concatenate([blobs(5, 0), strokes(5, 1)])[..., None]
    x = images.astype(np.float64) / 255.0
    exact = (x * np.log(0.3) + (1 - x) * np.log(0.7)).reshape(10, -1).sum(-1)
    for options in ({"estimator": "elbo"}, {"estimator": "iwae", "estimator_options": {"k": 7}}):
        np.testing.assert_allclose(features_of(model, images, "log_px", options)["log_px_nats"], exact, rtol=1e-5)
    assert features_of(model, images, "posterior")["mu_z_norm"].tolist() == [0.0] * 10


class SmallVAE(nn.Module):
    def __init__(self, latent=3):
        super().__init__()
        self.enc = nn.Linear(784, 2 * latent)
        self.dec = nn.Linear(latent, 784)

    def encode(self, x):
        return self.enc(x.flatten(1)).chunk(2, dim=-1)

    def decode(self, z):
        return torch.sigmoid(self.dec(z)).view(-1, 1, 28, 28)


def test_detectors_run_on_your_own_vae_with_held_out_images():
    torch.manual_seed(0)
    vae = SmallVAE()
    model = VAEAdapter(vae.encode, vae.decode, bernoulli_log_prob, (1, 28, 28), modules={"vae": vae})
    out = evaluate_model(model, blobs(60, 1), {"strokes": strokes(40, 2)}, fit_images=blobs(80, 3),
                         detectors=["nll", "typicality", "dose", "lpath", "lpath_copod"])
    assert set(out["results"]) == {"nll", "typicality", "dose", "lpath", "lpath_copod"}
    assert out["scores"]["dose"]["strokes"].shape == (40,)
    with pytest.raises(FitDataError, match="never test images"):
        evaluate_model(model, blobs(10, 1), {"s": strokes(10, 2)}, detectors=["dose"])


class FakePythaeVAE(nn.Module):
    """Shaped like pythae.models.VAE: encoder -> ModelOutput(embedding, log_covariance),
    decoder -> ModelOutput(reconstruction=...), model_config.{reconstruction_loss, input_dim}."""

    def __init__(self, loss="bce"):
        super().__init__()
        self.model_config = SimpleNamespace(reconstruction_loss=loss, input_dim=(1, 28, 28), latent_dim=2)
        self.input_dim = (1, 28, 28)
        enc, dec = nn.Linear(784, 4), nn.Linear(2, 784)
        self.enc_net, self.dec_net = enc, dec
        self.encoder = lambda x: SimpleNamespace(embedding=enc(x.flatten(1))[:, :2],
                                                 log_covariance=enc(x.flatten(1))[:, 2:])
        self.decoder = lambda z: {"reconstruction": torch.sigmoid(dec(z)).view(-1, 1, 28, 28)}


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_the_pythae_adapter_matches_pythaes_log_likelihood(loss):
    torch.manual_seed(0)
    fake = FakePythaeVAE(loss)
    model = from_pythae(fake)
    x = torch.from_numpy(blobs(4, 0)[:, None])
    z = torch.randn(3, 4, 2)
    got = model.log_likelihood(x, z)
    xf = x.float().flatten(1) / 255.0
    recon = fake.decoder(z.reshape(12, 2))["reconstruction"].reshape(3, 4, -1)
    if loss == "bce":  # pythae's get_nll
        want = -nn.functional.binary_cross_entropy(recon, xf.expand(3, 4, 784), reduction="none").sum(-1)
    else:
        want = -0.5 * (recon - xf).pow(2).sum(-1) - 784 / 2 * np.log(2 * np.pi)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    assert next(model.parameters()) is not None  # its weights are registered (to(device), eval())
    scores = evaluate_model(model, blobs(20, 1), {"strokes": strokes(20, 2)}, detectors=["nll"])["scores"]["nll"]
    assert scores["in"].shape == (20,) and np.isfinite(scores["strokes"]).all()


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_the_bring_your_own_vae_example_of_the_detectors_page_runs(capsys):
    page = (Path(__file__).parents[1] / "docs" / "detectors.md").read_text()
    code = re.search(r"## Bring your own VAE\n.*?```python\n(.*?)```", page, re.S).group(1)
    exec(compile(code, "docs/detectors.md", "exec"), {})
    assert "AUROC" in capsys.readouterr().out
