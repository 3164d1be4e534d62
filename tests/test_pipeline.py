"""Every subcommand end to end on tiny data written by the test (through ``vaeood.cli.main``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tinydata import blobs, raise_saved_epochs, strokes, write_fig2a_data, write_npz
from vaeood.training.checkpoint import load_checkpoint
from vaeood.cli import main
from vaeood.training.config import Config
from vaeood.evaluation.log_px import log_px
from vaeood.training.train import train

TINY = ["--train.epochs=2", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    return write_fig2a_data(tmp_path / "data")


@pytest.fixture()
def no_backbone(monkeypatch):
    """The pretrained backbone's weights are not installed: fig2 runs its pixel panels only and
    says why its feature-space panel is missing (and the test skips the backbone's cost)."""
    from vaeood.models.backbones import Backbone

    monkeypatch.setattr(Backbone, "why_unavailable", lambda self: "its weights' package is not installed")


def test_train_score_evaluate_cli(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    assert main(["train", str(run), "--data-dir", str(data_dir), *TINY]) == 0
    assert {"config.json", "metrics.jsonl", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert json.loads((run / "config.json").read_text())["model"]["base_channels"] == 4

    assert main(["log-px", str(run), "--dataset", "mnist", "--data-dir", str(data_dir)]) == 0
    assert "mnist/test: 128 images" in capsys.readouterr().out
    saved = list((run / "features").glob("mnist_test_elbo*.npz"))
    assert len(saved) == 1

    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data_dir),
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    m = metrics["results"]["nll"]["mnist"]
    assert set(m) == {"auroc", "auprc_in", "auprc_out", "fpr_at_80_tpr", "fpr_at_95_tpr"}
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert metrics["normalised"] is False  # the default decoder is the Bernoulli baseline
    assert (out / "histogram_elbo.png").stat().st_size > 1000
    assert "AUROC" in capsys.readouterr().out
    # --ood takes a comma-separated list as well as repeats; an empty one is refused by name
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist,fashion_mnist", "--ood", "mnist",
                 "--detectors", "nll", "--data-dir", str(data_dir), "--out", str(tmp_path / "two")]) == 0
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["ood"] == ["mnist", "fashion_mnist"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", " , ", "--data-dir", str(data_dir)]) == 2
    assert "--ood names no dataset" in capsys.readouterr().err


def test_metrics_json_matches_an_independent_computation(tmp_path, data_dir):
    """metrics.json's AUROC equals a brute-force pair count over the saved per-image scores."""
    run = train(Config().override({"train.epochs": "1", "model.base_channels": "4"}), tmp_path / "run",
                data_dir=str(data_dir))
    main(["evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data_dir)])
    auroc = json.loads((run / "metrics.json").read_text())["results"]["nll"]["mnist"]["auroc"]
    s_in = -np.load(next((run / "features").glob("fashion_mnist_test_*.npz")))["log_px_nats"]
    s_ood = -np.load(next((run / "features").glob("mnist_test_*.npz")))["log_px_nats"]
    pairs = (s_ood[:, None] > s_in[None, :]).mean() + 0.5 * (s_ood[:, None] == s_in[None, :]).mean()
    assert auroc == pytest.approx(pairs, abs=1e-12)


def test_training_is_seeded_and_reproducible(tmp_path, data_dir):
    cfg = Config().override({"train.epochs": "1", "model.base_channels": "4", "model.likelihood": "dlogistic"})
    a = load_checkpoint(train(cfg, tmp_path / "a", data_dir=str(data_dir)))["model"]
    b = load_checkpoint(train(cfg, tmp_path / "b", data_dir=str(data_dir)))["model"]
    c = load_checkpoint(train(cfg.override({"train.seed": "1"}), tmp_path / "c", data_dir=str(data_dir)))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, data_dir):
    cfg = Config().override({"train.epochs": "3", "model.base_channels": "4"})
    straight = load_checkpoint(train(cfg, tmp_path / "straight", data_dir=str(data_dir)))
    train(cfg.override({"train.epochs": "1"}), tmp_path / "resumed", data_dir=str(data_dir))
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, tmp_path / "resumed", data_dir=str(data_dir))
    raise_saved_epochs(tmp_path / "resumed", 3)
    resumed = load_checkpoint(train(cfg, tmp_path / "resumed", resume=True, data_dir=str(data_dir)))
    assert resumed["epoch"] == 3
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]


def test_scores_are_reused_until_the_checkpoint_changes(tmp_path, data_dir):
    run = train(Config().override({"train.epochs": "1", "model.base_channels": "4"}), tmp_path / "run",
                data_dir=str(data_dir))
    first = log_px(run, "mnist", data_dir=str(data_dir))
    path = next((run / "features").glob("mnist_*.npz"))
    stamp = path.stat().st_mtime_ns
    again = log_px(run, "mnist", data_dir=str(data_dir))
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first["log_px_nats"], again["log_px_nats"])


def test_bits_per_dim_only_for_normalised_decoders(tmp_path, data_dir):
    run = train(Config().override({"train.epochs": "1", "model.base_channels": "4", "model.likelihood": "dlogistic"}),
                tmp_path / "run", data_dir=str(data_dir))
    s = log_px(run, "mnist", data_dir=str(data_dir))
    np.testing.assert_allclose(s["bpd"], -s["log_px_nats"] / (784 * np.log(2)))
    assert (s["bpd"] > 0).all() and (s["bpd"] < 16).all()


def test_iwae_estimator_from_the_cli(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    main(["train", str(run), "--data-dir", str(data_dir), "--train.epochs=1", "--model.base_channels=4"])
    assert main(["log-px", str(run), "--dataset", "mnist", "--data-dir", str(data_dir), "--estimator", "iwae",
                 "--k", "8", "--limit", "16"]) == 0
    s = np.load(next((run / "features").glob("mnist_test_iwae_k8_first16*.npz")))
    assert s["log_px_nats"].shape == (16,)
    assert (s["ess"] >= 1).all() and (s["ess"] <= 8 + 1e-6).all()


def test_shape_mismatch_is_a_clear_error(tmp_path, data_dir, capsys):
    write_npz(data_dir, "colour", "test", blobs(8, 0, size=32, channels=3))
    run = tmp_path / "run"
    main(["train", str(run), "--data-dir", str(data_dir), "--train.epochs=1", "--model.base_channels=4"])
    assert main(["log-px", str(run), "--dataset", "colour", "--data-dir", str(data_dir)]) == 2
    assert "colour/test images are C×H×W = 3×32×32 but the model" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, data_dir, capsys):
    assert main(["train", str(tmp_path / "r"), "--data-dir", str(data_dir), "--model.latnt_dim=3"]) == 2
    assert "did you mean 'model.latent_dim'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "r"), "--data-dir", str(tmp_path), "--data.name=nothing_here"]) == 2
    assert "nothing_here" in capsys.readouterr().err
    assert main(["log-px", str(tmp_path / "none"), "--dataset", "mnist"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_reproduce_fig2a_writes_report(tmp_path, data_dir, capsys, no_backbone):
    from vaeood.evaluation.intervals import seed_summary
    from vaeood.evaluation.log_px import log_px

    out = tmp_path / "fig2a"
    assert main(["reproduce", "fig2a", "--out", str(out), "--data-dir", str(data_dir), "--train.epochs=1",
                 "--model.base_channels=4", "--model.hidden_dim=16"]) == 0
    printed = capsys.readouterr().out
    assert "AUROC mean ± sd" in printed and "report:" in printed
    report = (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["keras_blog", "study_bernoulli", "dlogistic"]
    assert metrics["seeds"] == [0, 1, 2] and metrics["detectors"] == ["nll"]
    assert "vaeood reproduce fig2a" in report and metrics["command"].startswith("vaeood reproduce fig2a")
    keras = metrics["models"]["keras_blog"]["config"]
    assert (keras["model"]["arch"], keras["model"]["latent_dim"], keras["model"]["likelihood"],
            keras["train"]["batch_size"]) == ("mlp", 2, "bernoulli", 100)
    for variant, m in metrics["models"].items():
        assert sorted(m["runs"]) == ["seed0", "seed1", "seed2"]
        assert [r["training"]["config"]["train"]["seed"] for r in m["runs"].values()] == [0, 1, 2]
        auroc = m["summary"]["nll"]["mnist"]["auroc"]
        per_seed = [r["results"]["nll"]["mnist"]["auroc"] for r in m["runs"].values()]
        assert auroc["values"] == pytest.approx(per_seed) and auroc["mean"] == pytest.approx(np.mean(per_seed))
        assert auroc["sd"] == pytest.approx(np.std(per_seed, ddof=1))
        lo, hi = auroc["interval"]
        assert 0 <= lo <= hi <= 1 and auroc["verdict"] in {"separates", "inverted", "indistinguishable"}
        assert auroc["verdict"] == ("separates" if lo > 0.5 else "inverted" if hi < 0.5 else "indistinguishable")
        assert f"{auroc['mean']:.3f} ± {auroc['sd']:.3f}" in report and f"{lo:.3f}–{hi:.3f}" in report
        assert metrics["verdict"][f"{variant}/mnist"].startswith(auroc["verdict"] + ": AUROC")
        for seed in (0, 1, 2):
            assert (out / variant / f"seed{seed}" / "histogram_elbo.png").exists()
            assert (out / "runs" / f"{variant}_seed{seed}" / "checkpoint.pt").exists()
    # the interval is the one implementation's, on the runs' per-image scores
    runs = [out / "runs" / f"dlogistic_seed{s}" for s in (0, 1, 2)]
    pairs = [(-log_px(r, "fashion_mnist", data_dir=str(data_dir))["log_px_nats"],
              -log_px(r, "mnist", data_dir=str(data_dir))["log_px_nats"]) for r in runs]
    expected = seed_summary(pairs, n_boot=metrics["interval"]["n_boot"])
    assert metrics["models"]["dlogistic"]["summary"]["nll"]["mnist"]["auroc"]["interval"] == \
        pytest.approx(list(expected.interval))
    stats = metrics["models"]["dlogistic"]["datasets"]["mnist"]
    x = np.load(data_dir / "mnist_test.npz")["x"] / 255.0
    assert stats["pixel_mean"] == pytest.approx(x.mean()) and stats["pixel_var"] == pytest.approx(x.var())
    assert stats["mean_bpd"]["n"] == 3 and "mean_bpd" not in metrics["models"]["keras_blog"]["datasets"]["mnist"]
    assert (out / metrics["figures"]["elbo_histograms"]).stat().st_size > 1000
    assert metrics["feature_space"] == {"skipped": "needs the pretrained backbone 'efficientnet_lite0': its weights' "
                                                   "package is not installed"}
    assert "## The same question in feature space\n\nNot asked here: needs the pretrained backbone" in report
    # a second call reuses the finished runs and their scores instead of retraining
    stamp = (out / "runs" / "dlogistic_seed1" / "checkpoint.pt").stat().st_mtime_ns
    assert main(["reproduce", "fig2a", "--out", str(out), "--data-dir", str(data_dir), "--train.epochs=1",
                 "--model.base_channels=4", "--model.hidden_dim=16"]) == 0
    assert (out / "runs" / "dlogistic_seed1" / "checkpoint.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_reproduce_fig2b_without_svhn_scores_tiny_imagenet_and_padded_mnist_and_says_so(tmp_path, monkeypatch):
    """No SVHN (as on these machines): Figure 2b falls back to Tiny ImageNet and MNIST
    padded to 32×32 RGB, with a note; the variance check takes the unpadded set only."""
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.cache/vaeood with an SVHN in it
    data = tmp_path / "data"
    write_npz(data, "cifar10", "train", blobs(128, 0, size=32, channels=3))
    write_npz(data, "cifar10", "test", blobs(64, 1, size=32, channels=3))
    write_npz(data, "tinyimagenet", "test", strokes(48, 2, size=32, channels=3))
    write_npz(data, "mnist", "test", strokes(40, 3))
    out = tmp_path / "fig2b"
    assert main(["reproduce", "fig2b", "--out", str(out), "--data-dir", str(data), "--train.epochs=1",
                 "--model.base_channels=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert "svhn was not found" in metrics["ood_note"] and "tinyimagenet, mnist" in metrics["ood_note"]
    datasets = metrics["models"]["dlogistic"]["datasets"]
    assert datasets["mnist"]["n"] == 40 and datasets["tinyimagenet"]["n"] == 48
    assert set(metrics["models"]["dlogistic"]["summary"]["nll"]) == {"tinyimagenet", "mnist"}
    assert set(metrics["variance"]["pairs"]["dlogistic"]) == {"tinyimagenet"}  # padded MNIST left out
    assert "- Note: svhn was not found" in (out / "report.md").read_text()
    # in feature space every set is scored as it is: the backbone resizes MNIST's 28×28 grey digits itself
    assert datasets["mnist"]["conform"]["description"] == "pad 1×28×28 → 3×32×32"
    fs = metrics["feature_space"]
    assert fs["train"]["range"] == [0, 128] and {d: m["n"] for d, m in fs["datasets"].items()} == \
        {"cifar10": 64, "tinyimagenet": 48, "mnist": 40}
    assert set(fs["models"]["gaussian"]["summary"]) == {"tinyimagenet", "mnist"}
    assert not list(out.glob("runs/*/features/*backbone*"))  # none of conformed images: all in the shared cache


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_reproduce_fig2b_on_official_svhn_file_written_here(tmp_path, monkeypatch, capsys, no_backbone):
    """SVHN is not on these machines: write its official .mat format (MD5 table patched to it)."""
    import hashlib

    import scipy.io

    from vaeood.data.svhn import SVHN

    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    data = tmp_path / "data"
    write_npz(data, "cifar10", "train", blobs(128, 0, size=32, channels=3))
    write_npz(data, "cifar10", "test", blobs(64, 1, size=32, channels=3))
    digits = blobs(48, 2, size=32, channels=3) // 2
    (data / "svhn").mkdir()
    mat = data / "svhn" / "test_32x32.mat"
    scipy.io.savemat(mat, {"X": digits.transpose(1, 2, 3, 0), "y": (np.arange(48) % 10 + 1)[:, None]})
    monkeypatch.setattr(SVHN, "md5", {**SVHN.md5, "test_32x32.mat": hashlib.md5(mat.read_bytes()).hexdigest()})
    out = tmp_path / "fig2b"
    assert main(["reproduce", "fig2b", "--out", str(out), "--data-dir", str(data), "--train.epochs=1",
                 "--model.base_channels=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    svhn = metrics["models"]["dlogistic"]["datasets"]["svhn"]
    assert list(metrics["models"]) == ["study_bernoulli", "dlogistic"] and metrics["seeds"] == [0, 1, 2]
    assert svhn["n"] == 48 and "test_32x32.mat" in svhn["source"]
    assert svhn["pixel_mean"] == pytest.approx(digits.mean() / 255)
    assert "svhn" in (out / "report.md").read_text()


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_reproduce_without_any_data_uses_the_bundled_sample_and_says_so(tmp_path, monkeypatch, capsys, no_backbone):
    from vaeood.data.mnist import FashionMNIST

    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(FashionMNIST, "system_dirs", ())
    out = tmp_path / "demo"
    assert main(["reproduce", "fig2a", "--out", str(out), "--train.epochs=1", "--model.base_channels=4",
                 "--data.limit=500"]) == 0
    assert "bundled with vaeood" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "No dataset was found, so this ran on the small sample bundled with vaeood" in report
    datasets = json.loads((out / "metrics.json").read_text())["models"]["dlogistic"]["datasets"]
    assert datasets["mnist"]["is_sample"] and datasets["mnist"]["n"] == 1000


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
@pytest.mark.parametrize("option", ["--train.precision=bf16", "--train.channels_last=true"])
def test_gpu_path_options_match_fp32_training_on_cpu(tmp_path, data_dir, option):
    """bf16 autocast and the memory format change the arithmetic, not the model: the loss
    curve stays within a few percent of the default fp32 NCHW run."""
    args = ["--data-dir", str(data_dir), "--train.epochs=2", "--model.base_channels=4",
            "--model.likelihood=dlogistic"]
    assert main(["train", str(tmp_path / "fp32"), *args]) == 0
    assert main(["train", str(tmp_path / "other"), *args, option]) == 0
    a = [h["train_loss"] for h in load_checkpoint(tmp_path / "fp32")["history"]]
    b = [h["train_loss"] for h in load_checkpoint(tmp_path / "other")["history"]]
    np.testing.assert_allclose(b, a, rtol=0.02)


def test_unknown_precision_is_refused(tmp_path, data_dir, capsys):
    assert main(["train", str(tmp_path / "r"), "--data-dir", str(data_dir), "--train.precision=fp8"]) == 2
    assert "train.precision = 'fp8': must be one of fp32, bf16" in capsys.readouterr().err


@pytest.mark.slow  # e2e: torch.compile of a training run
def test_compiled_training_traces_the_whole_loss_and_matches_eager(tmp_path, data_dir, monkeypatch):
    """train.compile hands the whole loss (encoder, decoder, likelihood, KL) to
    torch.compile in the configured mode, with static shapes; traced by dynamo (here with
    its eager backend, so the test needs no C++ compiler) it computes the same losses as
    the uncompiled run: same ops, same random draws (the weights agree to float rounding)."""
    calls = []
    real_compile = torch.compile

    def dynamo_only(fn, mode=None, dynamic=None):
        calls.append({"mode": mode, "dynamic": dynamic})
        return real_compile(fn, backend="eager", dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", dynamo_only)
    cfg = Config().override({"train.epochs": "2", "model.base_channels": "4", "model.likelihood": "dlogistic"})
    eager = load_checkpoint(train(cfg, tmp_path / "eager", data_dir=str(data_dir)))
    compiled = load_checkpoint(train(cfg.override({"train.compile": "true"}), tmp_path / "compiled",
                                     data_dir=str(data_dir)))
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}]
    assert [h["train_loss"] for h in compiled["history"]] == [h["train_loss"] for h in eager["history"]]
    for k in eager["model"]:
        torch.testing.assert_close(compiled["model"][k], eager["model"][k], rtol=1e-4, atol=1e-6)
    # the trace left no global switch behind: a later eager training trains the same weights
    assert torch.backends.mkldnn.enabled
    again = load_checkpoint(train(cfg, tmp_path / "again", data_dir=str(data_dir)))
    assert all(torch.equal(again["model"][k], eager["model"][k]) for k in eager["model"])


def test_unknown_compile_mode_is_refused(tmp_path, data_dir, capsys):
    assert main(["train", str(tmp_path / "r"), "--data-dir", str(data_dir), "--train.compile=true",
                 "--train.compile_mode=fastest"]) == 2
    assert "train.compile_mode = 'fastest': must be one of default, reduce-overhead" in capsys.readouterr().err


def test_score_metadata_records_the_options_asked_for_not_the_device_sized_chunk_bound(
        tmp_path, data_dir, monkeypatch):
    """On a GPU log_px() sizes IWAE's chunk bound from free memory; the estimator gets it,
    the saved metadata (and every report made from it) keeps only the requested options."""
    import functools

    import vaeood.features.model as feature_model
    from vaeood.inference.estimators import ESTIMATORS
    from vaeood.evaluation.log_px import log_px_meta

    run = train(Config().override({"train.epochs": "1", "model.base_channels": "4"}), tmp_path / "run",
                data_dir=str(data_dir))
    monkeypatch.setattr(feature_model, "memory_sized_options", lambda fn, device: {"max_elements": 12_345})
    seen = []
    real_iwae = ESTIMATORS.get("iwae")

    @functools.wraps(real_iwae)  # same signature, so the option check still applies
    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_iwae(*args, **kwargs)

    with ESTIMATORS.registered("iwae", spy):
        result = log_px(run, "mnist", estimator="iwae", estimator_options={"k": 4}, data_dir=str(data_dir),
                        limit=8)
    assert seen and all(kw["max_elements"] == 12_345 and kw["k"] == 4 for kw in seen)
    assert log_px_meta(result)["options"] == {"k": 4}
