"""Features: known answers, batch independence, and the cache key (issue 10 item 1)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinydata import blobs, strokes, write_fig2a_data, write_npz
from vaeood.training.config import Config
from vaeood.features import compute_feature, compute_features, feature_meta, features_of
from vaeood.features.compression import compressed_bytes
from vaeood.training.corruption import corrupt
from vaeood.training.train import train


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    return write_fig2a_data(tmp_path / "data")


@pytest.fixture()
def run(tmp_path, data_dir):
    config = Config().override({"train.epochs": "1", "model.base_channels": "4", "model.latent_dim": "4",
                                "model.likelihood": "dlogistic", "data.limit": "200"})
    return train(config, tmp_path / "run", data_dir=str(data_dir))


@pytest.mark.parametrize("codec, most", [("png", 0.2), ("jxl", 0.3)])  # of 8 bits/dim raw
def test_a_constant_image_compresses_to_nearly_zero_bits_and_noise_does_not(codec, most):
    constant = np.full((3, 28, 28, 1), 137, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    assert (8 * compressed_bytes(constant, codec) / 784 < most).all()
    assert (8 * compressed_bytes(noise, codec) / 784 > 7.5).all()  # incompressible: ≈ 8 bits/dim or more


def test_deterministic_features_do_not_depend_on_the_batch(run):
    from vaeood.training.run import load_model

    model = load_model(run)[0]
    images = np.concatenate([blobs(10, 5), strokes(10, 6)])
    for name in ("posterior", "reconstruction", "compressed"):
        whole = features_of(model, images, name, batch_size=20)
        pieces = features_of(model, images, name, batch_size=3)
        for key in whole:
            np.testing.assert_allclose(whole[key], pieces[key], rtol=1e-6, err_msg=f"{name}/{key}")


def test_the_features_of_a_batch_share_one_encoder_pass_and_keep_their_values(run):
    from vaeood.features import needs_features
    from vaeood.training.run import load_model

    model = load_model(run)[0]
    images = np.concatenate([blobs(10, 5), strokes(10, 6)])
    needs = {"log_px": {}, "posterior": {}, "latent": {}, "reconstruction": {}}
    alone = {name: features_of(model, images, name, seed=3) for name in needs}
    passes, encode = [], model.posterior
    model.posterior = lambda x: passes.append(len(x)) or encode(x)
    together = needs_features(model, images, needs, seed=3, batch_size=8)
    assert passes == [8, 8, 4]  # one encoder pass a batch, for the four features
    for name, values in alone.items():
        for key, value in values.items():
            np.testing.assert_array_equal(together[key], value, err_msg=f"{name}/{key}")
    x = torch.from_numpy(images[:5])[:, None]  # grey [N, H, W] → [N, 1, H, W]
    xhat, log_lik = model.at_posterior_mean(x, encode(x)[0])  # one decoder pass for both
    torch.testing.assert_close(xhat, model.reconstruct(x), rtol=0, atol=0)
    torch.testing.assert_close(log_lik, model.log_likelihood(x, encode(x)[0][None])[0], rtol=0, atol=0)


def test_log_px_of_an_image_does_not_depend_on_the_other_images_of_its_batch(run):
    from vaeood.training.run import load_model

    model = load_model(run)[0]
    a = blobs(8, 5)
    b = a.copy()
    b[1:] = strokes(7, 9)  # same first image, different company
    for est in ({"estimator": "elbo"}, {"estimator": "iwae", "estimator_options": {"k": 4}}):
        fa = features_of(model, a, "log_px", est, seed=3)
        fb = features_of(model, b, "log_px", est, seed=3)
        assert fa["log_px_nats"][0] == pytest.approx(fb["log_px_nats"][0], rel=1e-6)


STOCHASTIC = [("log_px", {"estimator": "elbo", "estimator_options": {"samples": 3}}),
              ("log_px", {"estimator": "iwae", "estimator_options": {"k": 6, "chunk_size": 4}}),
              ("log_px", {"estimator": "iwae", "estimator_options": {"k": 4, "refine_steps": 2, "refine_k": 3}}),
              ("regret", {"variant": "posterior", "steps": 2, "k": 3})]


@pytest.mark.parametrize("name, options", STOCHASTIC, ids=["elbo", "iwae", "iwae_refined", "regret"])
def test_a_stochastic_feature_of_an_image_depends_neither_on_its_position_nor_on_the_batch_size(run, name, options):
    """Issue 23: the same image at two positions of one slice, and the slice in batches of 2
    and of 11, give the same value; another seed gives another value."""
    from vaeood.training.run import load_model

    model = load_model(run)[0]
    images = np.concatenate([blobs(6, 5), strokes(5, 6)])
    images[9] = images[2]  # image 2 again, at another position and in another batch
    whole = features_of(model, images, name, options, seed=4, batch_size=11)
    pieces = features_of(model, images, name, options, seed=4, batch_size=2)
    key = next(k for k in whole if k.endswith("_nats"))
    atol = 1e-6
    if name == "regret":
        # regret = bound after − bound before, the difference of two float32 bounds of ~1,000
        # nats: a batch of another size takes another summation order in the batched kernels,
        # which can move a bound by one float32 ulp (2^-13 ≈ 1.2e-4 nats at |bound| ≈ 1,068),
        # a 7e-5 relative change of a regret of ~2 nats. So the bounds are compared to rtol
        # 1e-6 and the regret to within 2 ulps of its bounds.
        np.testing.assert_allclose(pieces["bound_after_nats"], whole["bound_after_nats"], rtol=1e-6)
        atol = 2 * float(np.spacing(np.abs(whole["bound_after_nats"]).astype(np.float32)).max())
    np.testing.assert_allclose(pieces[key], whole[key], rtol=1e-6, atol=atol)
    assert whole[key][9] == pytest.approx(whole[key][2], rel=1e-6, abs=atol)
    alone = features_of(model, images[9:10], name, options, seed=4)
    assert alone[key][0] == pytest.approx(whole[key][2], rel=1e-6, abs=atol)
    other = features_of(model, images, name, options, seed=5, batch_size=11)
    assert np.abs(other[key] - whole[key]).max() > 1e-4  # the noise is drawn, and keyed on the seed


def test_image_noise_is_standard_normal_keyed_on_bytes_and_the_same_however_chunked():
    from vaeood.inference.gaussian import standard_normal
    from vaeood.inference.noise import ImageNoise

    x = torch.from_numpy(blobs(4, 1)[:, None])
    x[3] = x[0]  # images 0 and 3 are equal
    like = torch.zeros(4, 5)
    one = standard_normal(300, like, ImageNoise(x, seed=2))  # [300, 4, 5]
    noise = ImageNoise(x, seed=2)
    chunks = torch.cat([standard_normal(n, like, noise) for n in (1, 6, 100, 193)])
    assert torch.equal(one, chunks)
    assert torch.equal(one[:, 0], one[:, 3]) and not torch.equal(one[:, 0], one[:, 1])
    assert abs(float(one.mean())) < 0.05 and abs(float(one.var()) - 1) < 0.05  # 6,000 draws
    reordered = standard_normal(300, like, ImageNoise(x[[2, 0, 1, 3]], seed=2))
    assert torch.equal(reordered[:, 0], one[:, 2]) and torch.equal(reordered[:, 1], one[:, 0])
    assert not torch.equal(standard_normal(300, like, ImageNoise(x, seed=3)), one)


def test_the_hierarchical_vae_draws_per_image_noise_and_llr_shares_log_px_noise(tmp_path):
    """A hierarchical model's noise is keyed on the image too; llr's ELBO (L>0) is log_px by
    IWAE with as many samples, because all features of an image share its key."""
    from vaeood.models import build_model

    cfg = Config().override({"model.arch": "hvae", "model.base_channels": "4"}).model
    cfg.arch_options = {"latent_dims": [6, 4, 3], "widths": [16, 16]}
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28)).eval()
    images = np.concatenate([blobs(4, 5), strokes(3, 6)])
    images[5] = images[1]
    whole = features_of(model, images, "llr", {"samples": 3}, seed=1, batch_size=7)
    pieces = features_of(model, images, "llr", {"samples": 3}, seed=1, batch_size=3)
    np.testing.assert_allclose(pieces["llr_gt_1_nats"], whole["llr_gt_1_nats"], rtol=1e-6, atol=1e-6)
    assert whole["llr_gt_1_nats"][5] == pytest.approx(whole["llr_gt_1_nats"][1], rel=1e-6)
    iw = features_of(model, images, "log_px", {"estimator": "iwae", "estimator_options": {"k": 3}}, seed=1)
    np.testing.assert_allclose(iw["log_px_nats"], whole["elbo_nats"], rtol=1e-6)


def test_compute_features_flattens_and_caches(run, data_dir):
    feats = compute_features(run, "mnist", "test", ["log_px", "posterior", "reconstruction"],
                             data_dir=str(data_dir), limit=16)
    for key in ("log_px_nats", "bpd", "rate_nats", "mu_z_norm", "sigma_z_norm", "recon_log_l2",
                "posterior_entropy_nats", "prior_cross_entropy_nats"):
        assert feats[key].shape == (16,), key
    # KL(q||p) = cross-entropy − entropy, and the ELBO's analytic rate is that KL
    np.testing.assert_allclose(feats["prior_cross_entropy_nats"] - feats["posterior_entropy_nats"],
                               feats["rate_nats"], rtol=1e-4, atol=1e-3)
    assert set(feats["meta"]) == {"log_px", "posterior", "reconstruction"}
    files = sorted(p.name for p in (run / "features").iterdir())
    assert len(files) == 3 and all("first16" in f for f in files)
    stamps = {p: p.stat().st_mtime_ns for p in (run / "features").iterdir()}
    compute_features(run, "mnist", "test", ["log_px", "posterior", "reconstruction"], data_dir=str(data_dir),
                     limit=16)
    assert {p: p.stat().st_mtime_ns for p in (run / "features").iterdir()} == stamps


def test_a_slice_is_part_of_the_key(run, data_dir):
    first = compute_feature(run, "mnist", "test", "posterior", data_dir=str(data_dir), start=0, stop=8)
    later = compute_feature(run, "mnist", "test", "posterior", data_dir=str(data_dir), start=8, stop=16)
    both = compute_feature(run, "mnist", "test", "posterior", data_dir=str(data_dir), limit=16)
    # the same numbers up to fp32 rounding: the convolution kernels chosen differ with the batch size
    np.testing.assert_allclose(np.concatenate([first["mu_z_norm"], later["mu_z_norm"]]), both["mu_z_norm"], rtol=1e-5)
    assert feature_meta(later)["start"] == 8 and feature_meta(later)["stop"] == 16


@pytest.mark.parametrize("shape", [(20, 20, 1), (28, 28, 1)])  # padded, and asked to pad but already fitting
def test_features_of_conformed_images_are_reused_from_the_cache(run, data_dir, shape):
    rng = np.random.default_rng(0)
    odd = rng.integers(0, 256, (12, *shape), dtype=np.uint8)
    write_npz(data_dir, "odd", "test", odd)
    first = compute_feature(run, "odd", "test", "posterior", data_dir=str(data_dir), conform="pad")
    path = next((run / "features").glob("odd_test_posterior*conformpad*.npz"))
    stamp = path.stat().st_mtime_ns
    again = compute_feature(run, "odd", "test", "posterior", data_dir=str(data_dir), conform="pad")
    assert path.stat().st_mtime_ns == stamp  # read, not written again
    np.testing.assert_array_equal(first["mu_z_norm"], again["mu_z_norm"])
    padded = feature_meta(again)["conform"]
    assert (padded["description"] == "pad 1×20×20 → 1×28×28") if shape[0] == 20 else padded is None
    # without the conform the padded set is refused, and the cache of the conformed one is not used for it
    if shape[0] == 20:
        with pytest.raises(ValueError, match="pad"):
            compute_feature(run, "odd", "test", "posterior", data_dir=str(data_dir))
        # another conform is another key: the padded images' features are not handed out for it
        resized = compute_feature(run, "odd", "test", "posterior", data_dir=str(data_dir), conform="resize")
        assert feature_meta(resized)["conform"]["description"].startswith("resize")
        assert len(list((run / "features").glob("odd_test_posterior*.npz"))) == 2
        assert not np.array_equal(resized["mu_z_norm"], first["mu_z_norm"])
        # a feature of the image alone (PNG bits; a backbone's) takes the images as they are
        raw = compute_feature(run, "odd", "test", "compressed", data_dir=str(data_dir))
        assert feature_meta(raw)["conform"] is None
        np.testing.assert_array_equal(raw["png_bits"], features_of(None, odd[..., 0], "compressed")["png_bits"])
        assert not np.array_equal(raw["png_bits"], compute_feature(run, "odd", "test", "compressed", data_dir=str(
            data_dir), conform="pad")["png_bits"])  # padded when asked


def test_an_unreadable_cache_file_is_recomputed_with_a_warning_naming_it(run, data_dir, caplog):
    first = compute_feature(run, "mnist", "test", "posterior", data_dir=str(data_dir), limit=8)
    path = next((run / "features").glob("mnist_test_posterior*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    again = compute_feature(run, "mnist", "test", "posterior", data_dir=str(data_dir), limit=8)
    assert str(path) in caplog.text and "recomputing" in caplog.text
    np.testing.assert_allclose(first["mu_z_norm"], again["mu_z_norm"])


def test_a_shared_cache_serves_image_only_features_to_every_run_and_keeps_model_features_in_the_run(
        tmp_path, run, data_dir, monkeypatch):
    """``shared_cache``: a feature that does not use the model (PNG bits here; the backbone's
    features in the one-class experiment) is computed once for two runs that score the same
    images, and recomputed for other images under the same name; log p(x) stays in each run."""
    from vaeood.features import core

    other = train(Config().override({"train.epochs": "1", "model.base_channels": "4", "model.latent_dim": "4",
                                     "model.likelihood": "dlogistic", "data.limit": "200", "train.seed": "1"}),
                  tmp_path / "other_run", data_dir=str(data_dir))
    computed = []
    real = core.features_of
    monkeypatch.setattr(core, "features_of", lambda model, images, name, *a, **k: (
        computed.append((name, len(images))), real(model, images, name, *a, **k))[1])
    shared = tmp_path / "shared"
    first = compute_feature(run, "mnist", "test", "compressed", data_dir=str(data_dir), limit=16, shared_cache=shared)
    second = compute_feature(other, "mnist", "test", "compressed", data_dir=str(data_dir), limit=16,
                             shared_cache=shared)
    assert computed == [("compressed", 16)]  # the second run read the first one's file
    np.testing.assert_array_equal(first["png_bits"], second["png_bits"])
    assert [f.name for f in shared.iterdir()] == [next(shared.iterdir()).name]
    assert not (run / "features").exists() and not (other / "features").exists()
    meta = feature_meta(second)
    assert meta["checkpoint_sha256"] is None and "checkpoint_epoch" not in meta  # no run's model in a shared file
    # a feature of the model stays in its run, the shared folder given or not
    compute_feature(other, "mnist", "test", "log_px", data_dir=str(data_dir), limit=16, shared_cache=shared)
    assert len(list((other / "features").iterdir())) == 1 and len(list(shared.iterdir())) == 1
    # other images under the same name: another file, computed from them
    elsewhere = tmp_path / "elsewhere"
    write_npz(elsewhere, "mnist", "test", strokes(16, 9))
    swapped = compute_feature(other, "mnist", "test", "compressed", data_dir=str(elsewhere), limit=16,
                              shared_cache=shared)
    assert computed[-1] == ("compressed", 16) and len(computed) == 3 and len(list(shared.iterdir())) == 2
    assert not np.array_equal(swapped["png_bits"], first["png_bits"])
    # a feature that draws no noise is keyed without the seed: another seed, inside
    # shared_feature_cache (as the ood-suite calls it), reads the same file
    from vaeood.features import shared_feature_cache

    with shared_feature_cache(shared):
        again = compute_feature(other, "mnist", "test", "compressed", data_dir=str(data_dir), limit=16, seed=7)
        compute_feature(other, "mnist", "test", "log_px", data_dir=str(data_dir), limit=16, seed=7)
    assert computed[-1] == ("log_px", 16) and len(computed) == 4  # log p(x) draws noise: computed for seed 7
    np.testing.assert_array_equal(again["png_bits"], first["png_bits"])
    assert len(list(shared.iterdir())) == 2 and len(list((other / "features").iterdir())) == 2


def test_a_shared_feature_of_conformed_images_serves_runs_of_one_shape_and_not_another(tmp_path, run, data_dir,
                                                                                       monkeypatch):
    """An image-only feature of images conformed to a run (the backbone's of CIFAR-10's padded
    MNIST) depends on the run through its image shape alone: two seeds of one shape read one
    shared file, a run of another shape gets its own."""
    from vaeood.features import core

    config = Config().override({"train.epochs": "1", "model.base_channels": "4", "model.latent_dim": "4",
                                "model.likelihood": "dlogistic", "data.limit": "64"})
    seed1 = train(config.override({"train.seed": "1"}), tmp_path / "seed1", data_dir=str(data_dir))
    write_npz(data_dir, "cifar10", "train", blobs(64, 3, size=32, channels=3))
    rgb = train(config.override({"data.name": "cifar10"}), tmp_path / "rgb", data_dir=str(data_dir))
    computed = []
    real = core.features_of
    monkeypatch.setattr(core, "features_of", lambda model, images, name, *a, **k: (
        computed.append(images.shape), real(model, images, name, *a, **k))[1])
    shared = tmp_path / "shared"
    grey = [compute_feature(r, "cifar10", "train", "compressed", data_dir=str(data_dir), limit=8, conform="resize",
                            shared_cache=shared) for r in (run, seed1)]
    assert computed == [(8, 28, 28, 1)]  # the second seed read the first one's file
    np.testing.assert_array_equal(grey[0]["png_bits"], grey[1]["png_bits"])
    assert [f.name for f in shared.iterdir()] == [next(shared.glob("*conformresize1x28x28*")).name]
    padded = compute_feature(rgb, "mnist", "test", "compressed", data_dir=str(data_dir), limit=8, conform="pad",
                             shared_cache=shared)
    assert computed[-1] == (8, 32, 32, 3) and len(list(shared.glob("*conformpad3x32x32*"))) == 1
    assert feature_meta(padded)["conform"]["to_shape"] == [3, 32, 32]
    assert not any((r / "features").exists() for r in (run, seed1, rgb))


def _cli(*args, env):
    # -v: the cache's "reusing" lines are detail (DEBUG)
    return subprocess.run([sys.executable, "-m", "vaeood.cli", "-v", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.slow  # e2e: several processes
def test_the_cache_never_reuses_features_of_other_data_through_the_cli(tmp_path, run, data_dir):
    """Issue 10, case 1: the same request against another data dir, and against a file
    replaced in place, must compute from the new images (not print "reusing")."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("VAEOOD_DATA", None)
    other = tmp_path / "other"
    write_npz(other, "mnist", "test", blobs(40, 11))  # other images under the same name
    first = _cli("log-px", str(run), "--dataset", "mnist", "--data-dir", str(data_dir), "--limit", "20", env=env)
    assert first.returncode == 0, first.stderr
    swapped = _cli("log-px", str(run), "--dataset", "mnist", "--data-dir", str(other), "--limit", "20", env=env)
    assert swapped.returncode == 0, swapped.stderr
    assert "reusing" not in swapped.stderr
    assert first.stdout.split("mean log p(x) = ")[1] != swapped.stdout.split("mean log p(x) = ")[1]
    # replaced in place: 1 image, then 50
    write_npz(other, "mnist", "test", strokes(1, 4))
    one = _cli("log-px", str(run), "--dataset", "mnist", "--data-dir", str(other), env=env)
    assert "mnist/test: 1 images" in one.stdout, one.stderr
    write_npz(other, "mnist", "test", strokes(50, 4))
    fifty = _cli("log-px", str(run), "--dataset", "mnist", "--data-dir", str(other), env=env)
    assert "mnist/test: 50 images" in fifty.stdout and "reusing" not in fifty.stderr
    # and the same data again is reused
    again = _cli("log-px", str(run), "--dataset", "mnist", "--data-dir", str(other), env=env)
    assert "reusing" in again.stderr and again.stdout == fifty.stdout


def test_corrupt_replaces_pixels_at_the_rate_asked(tmp_path):
    x = torch.full((64, 1, 28, 28), 7, dtype=torch.uint8)
    assert torch.equal(corrupt(x, 0.0, torch.Generator().manual_seed(0)), x)
    noisy = corrupt(x, 0.2, torch.Generator().manual_seed(0))
    changed = (noisy != x).double().mean().item()
    assert changed == pytest.approx(0.2 * 255 / 256, abs=0.01)  # a replacement may draw the same value
    values = noisy[noisy != x].double()
    assert values.min() >= 0 and values.max() <= 255 and abs(values.mean().item() - 127.5) < 5


def test_shuffle_patches_permutes_each_images_tiles_and_keeps_them_whole():
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(4, 3, 8, 8)
    x[:, :, :4, :4] = 0  # one constant tile per image, so the tiles can be told apart by content
    out = corrupt(x, 0.0, torch.Generator().manual_seed(0), patch=4)
    assert torch.equal(out, corrupt(x, 0.0, torch.Generator().manual_seed(0), patch=4))  # seeded

    def tiles(img):  # the 4 tiles (all channels) of one image, as sorted byte strings
        return sorted(img[:, r:r + 4, c:c + 4].numpy().tobytes() for r in (0, 4) for c in (0, 4))

    for i in range(4):
        assert tiles(out[i]) == tiles(x[i])  # the same tiles, whole, channels together
    assert not torch.equal(out, x)  # in another order for some image
    with pytest.raises(ValueError, match="must divide the image size"):
        corrupt(x, 0.0, torch.Generator(), patch=3)


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_holdout_keeps_the_last_images_out_of_training_and_defaults_change_nothing(tmp_path, data_dir):
    from vaeood.training.checkpoint import load_checkpoint
    from vaeood.evaluation.fitdata import heldout_slice

    base = {"train.epochs": "1", "model.base_channels": "4", "model.latent_dim": "4"}
    run = train(Config().override({**base, "data.holdout": "56"}), tmp_path / "h", data_dir=str(data_dir))
    assert load_checkpoint(run)["train_data"]["trained_range"] == [0, 200]
    sl = heldout_slice(run, data_dir=str(data_dir))
    assert (sl["start"], sl["stop"]) == (200, 256)
    plain = train(Config().override(base), tmp_path / "p", data_dir=str(data_dir))
    assert load_checkpoint(plain)["train_data"]["trained_range"] == [0, 256]


def test_the_default_batch_holds_about_a_million_pixels_and_at_most_1000_images():
    from vaeood.features.core import default_batch_size

    assert default_batch_size(28, 28) == default_batch_size(32, 32) == 1000  # the study's sizes keep 1000
    assert default_batch_size(64, 64) == 256
    assert default_batch_size(256, 256) == 16
    assert default_batch_size(4096, 4096) == 1
