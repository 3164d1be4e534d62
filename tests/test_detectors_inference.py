"""The likelihood-regret and LLR>k detectors on the feature/detector protocol (issues 12
and 13): they give the features' numbers, apply only where they can, and run through
``vaeood evaluate --detectors``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinydata import blobs, strokes, write_npz
from vaeood import evaluate
from vaeood.cli import main
from vaeood.training.config import Config, ConfigError
from vaeood.detectors import make_detector
from vaeood.features import features_of
from vaeood.inference.llr import llr_bounds
from vaeood.models import build_model
from vaeood.inference.noise import ImageNoise
from vaeood.inference.regret import likelihood_regret
from vaeood.training.train import train

TINY = {"train.epochs": "2", "model.base_channels": "4", "model.latent_dim": "4", "model.likelihood": "dlogistic",
        "data.holdout": "100"}
HVAE = {**TINY, "model.arch": "hvae", "model.arch_options": '{"latent_dims": [4, 3, 2], "widths": [8, 8]}'}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    write_npz(root, "fashion_mnist", "train", blobs(300, 0))
    write_npz(root, "fashion_mnist", "test", blobs(60, 1))
    write_npz(root, "mnist", "test", strokes(60, 3))
    return root


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_the_regret_detector_scores_the_regret_feature_and_batches_change_nothing():
    torch.manual_seed(0)
    model = build_model(Config().override(TINY).model, (1, 28, 28)).eval()
    x = blobs(12, 5)[:, None]  # [N, 1, 28, 28] uint8
    whole = features_of(model, torch.from_numpy(x), "regret", seed=3)
    halves = features_of(model, torch.from_numpy(x), "regret", seed=3, batch_size=5)
    np.testing.assert_allclose(whole["regret_nats"], halves["regret_nats"], rtol=1e-6, atol=1e-6)
    direct = likelihood_regret(model, torch.from_numpy(x), generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(whole["regret_nats"], direct["regret_nats"].detach().double().numpy(),
                               rtol=1e-6, atol=1e-6)
    det = make_detector("likelihood_regret")
    assert det.needs == {"regret": {"variant": "head", "bound": "iwae"}}
    np.testing.assert_array_equal(det.score(whole), whole["regret_nats"])
    assert (whole["regret_nats"] >= 0).all()  # keep_start: the starting point is a candidate


def test_the_llr_detector_is_elbo_minus_the_bound_without_the_lowest_posteriors():
    torch.manual_seed(0)
    model = build_model(Config().override(HVAE).model, (1, 28, 28)).eval()
    x = torch.from_numpy(blobs(6, 2)[:, None])
    feats = features_of(model, x, "llr", seed=0)  # each image's noise keyed on its bytes and seed 0
    with torch.no_grad():
        direct = llr_bounds(model, x, generator=ImageNoise(x, 0))
    for k in (1, 2):
        expected = (direct["elbo_nats"] - direct[f"l_gt_{k}_nats"]).double().numpy()
        np.testing.assert_allclose(make_detector("llr", {"k": k}).score(feats), expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ConfigError, match="more than 3 latent layers"):
        make_detector("llr", {"k": 3}).score(feats)
    with pytest.raises(ConfigError, match="k must be an integer >= 1"):
        make_detector("llr", {"k": 0})


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_llr_applies_to_hierarchical_runs_only(data, tmp_path):
    flat = train(Config().override(TINY), tmp_path / "flat", data_dir=str(data))
    with pytest.raises(ConfigError, match="llr.*needs a hierarchical VAE"):
        evaluate(flat, "fashion_mnist", ["mnist"], detectors=["llr"], out_dir=tmp_path / "e0", data_dir=str(data))
    deep = train(Config().override(HVAE), tmp_path / "deep", data_dir=str(data))
    out = evaluate(deep, "fashion_mnist", ["mnist"], detectors="all", out_dir=tmp_path / "e1", data_dir=str(data),
                   n_fit=50)
    assert "llr" in out["results"] and "llr" not in out["skipped"]
    assert out["detectors"]["llr"]["options"] == {"k": 1, "samples": 1, "prior_mean": False}
    why = "needs a single Gaussian q(z|x), which a hierarchical VAE does not have"
    assert out["skipped"]["likelihood_regret"] == why
    with pytest.raises(ConfigError, match="likelihood_regret.*does not apply"):
        evaluate(deep, "fashion_mnist", ["mnist"], detectors=["likelihood_regret"], out_dir=tmp_path / "e2",
                 data_dir=str(data))


@pytest.mark.slow  # e2e: the command line trains and scores models
@pytest.mark.parametrize("config, detector, options", [
    (TINY, "likelihood_regret", {"variant": "posterior", "steps": 3}),
    (HVAE, "llr", {"k": 2}),
])
def test_regret_and_llr_through_the_cli_with_their_options_recorded(data, tmp_path, capsys, config, detector,
                                                                     options):
    run = train(Config().override(config), tmp_path / "run", data_dir=str(data))
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
                 "--out", str(tmp_path / "out"), "--detectors", f"nll,{detector}",
                 "--detector-options", json.dumps({detector: options})]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert set(metrics["results"]) == {"nll", detector}
    assert {k: metrics["detectors"][detector]["options"][k] for k in options} == options
    assert 0.0 <= metrics["results"][detector]["mnist"]["auroc"] <= 1.0
    assert detector in capsys.readouterr().out


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_llr_is_calibrated_for_decisions_on_a_hierarchical_run(data, tmp_path):
    from vaeood.decisions import calibrate

    deep = train(Config().override(HVAE), tmp_path / "deep", data_dir=str(data))
    record = calibrate(deep, "llr", n_calibration=50, data_dir=str(data))
    assert record["detector"] == "llr" and record["n_calibration"] == 50
