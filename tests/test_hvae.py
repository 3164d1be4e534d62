"""The hierarchical VAE (models/hvae.py), the estimators on it, and Havtorn et al.'s L>k
bounds (llr.py): known identities, not smoke."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinydata import raise_saved_epochs, write_fig2a_data
from vaeood.training.checkpoint import load_checkpoint
from vaeood.training.config import Config, ConfigError
from vaeood.inference.estimators import elbo, iwae
from vaeood.inference.llr import llr_bounds
from vaeood.models import HierarchicalVAE, build_model, count_parameters
from vaeood.inference.objectives import make_objective
from vaeood.training.train import train

LIKELIHOODS = ["bernoulli", "dlogistic", "categorical"]


def hvae(likelihood="bernoulli", seed=0, shape=(1, 28, 28), **options):
    cfg = Config().override({"model.arch": "hvae", "model.likelihood": likelihood, "model.base_channels": "4"}).model
    cfg.arch_options = {"latent_dims": [6, 4, 3], "widths": [16, 16], **options}
    torch.manual_seed(seed)
    return build_model(cfg, shape).eval()


def images(n=5, seed=0, shape=(1, 28, 28)):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("options", [{}, {"bottom": "spatial", "latent_dims": [2, 4, 3]},
                                     {"trunk": "mlp", "latent_dims": [5, 4, 3, 2], "widths": [8, 8, 8]}])
def test_every_likelihood_and_layout_gives_per_image_bounds_and_layer_rates(likelihood, options):
    model, x = hvae(likelihood, **options), images(3)
    n = model.num_layers
    with torch.no_grad():
        out = elbo(model, x, generator=gen())
        bounds = llr_bounds(model, x, generator=gen())
    assert n >= 3 and all(v.shape == (3,) and torch.isfinite(v).all() for v in out.values())
    assert {f"rate_nats_layer{i}" for i in range(1, n + 1)} <= set(out)
    layer_sum = sum(out[f"rate_nats_layer{i}"] for i in range(1, n + 1))
    torch.testing.assert_close(layer_sum, out["rate_nats"])
    torch.testing.assert_close(out["log_px_nats"], -(out["distortion_nats"] + out["rate_nats"]))
    assert all(out[f"rate_nats_layer{i}"].min() >= 0 for i in range(1, n + 1))  # analytic KLs
    assert set(bounds) == {"elbo_nats", *(f"l_gt_{k}_nats" for k in range(1, n)),
                           *(f"llr_gt_{k}_nats" for k in range(1, n))}


def test_l_gt_0_is_the_elbo_exactly():
    """L>0 draws no layer from the prior: it is the (MC) ELBO on the same noise, bit for bit,
    and IWAE-1 to rounding."""
    model, x = hvae("dlogistic"), images(4)
    with torch.no_grad():
        bounds = llr_bounds(model, x, generator=gen())
        mc = elbo(model, x, kl="mc", generator=gen())
        one = iwae(model, x, k=1, generator=gen())
        many = llr_bounds(model, x, generator=gen(), samples=8)
        iw8 = iwae(model, x, k=8, generator=gen(), chunk_size=8)
    assert torch.equal(bounds["elbo_nats"], mc["log_px_nats"])
    torch.testing.assert_close(bounds["elbo_nats"], one["log_px_nats"], rtol=0, atol=1e-3)
    torch.testing.assert_close(many["elbo_nats"], iw8["log_px_nats"], rtol=0, atol=1e-3)


def test_llr_is_zero_where_the_lowest_posteriors_are_the_priors():
    """With q(z_i|z_{i+1}, x) = p(z_i|z_{i+1}) for the two lowest layers (bottom-up term of
    zero precision), drawing them from the prior changes nothing: LLR>1 = LLR>2 = 0, while
    LLR>3 (the layer above has a real posterior) is not."""
    model, x = hvae("bernoulli", latent_dims=[6, 5, 4, 3], widths=[16, 16, 16]), images(4)
    with torch.no_grad():
        before = llr_bounds(model, x, generator=gen())
        for head in model.q_heads[:2]:
            head.weight.zero_()
            head.bias.zero_()
            head.bias[head.out_features // 2:] = 60.0  # logvar_q = 60: precision e^-60, nothing
        after = llr_bounds(model, x, generator=gen())
    assert before["llr_gt_1_nats"].abs().max() > 0.1
    torch.testing.assert_close(after["llr_gt_1_nats"], torch.zeros(4), rtol=0, atol=2e-3)
    torch.testing.assert_close(after["llr_gt_2_nats"], torch.zeros(4), rtol=0, atol=2e-3)
    assert after["llr_gt_3_nats"].abs().max() > 0.1


@pytest.mark.slow  # many importance samples
def test_l_gt_k_are_lower_bounds_that_converge_with_samples():
    """Each L>k is an importance-sampling bound on log p(x): its S-sample version rises
    with S on average and stays below a 2000-sample IWAE of the ordinary posterior only up
    to noise (they bound the same log p(x))."""
    model, x = hvae("bernoulli"), images(3)
    with torch.no_grad():
        one = torch.stack([llr_bounds(model, x, generator=gen(s))["l_gt_2_nats"] for s in range(30)]).mean(0)
        many = llr_bounds(model, x, generator=gen(99), samples=200)["l_gt_2_nats"]
    assert (many >= one).all()


def test_elbo_is_below_iwae_k():
    model, x = hvae("dlogistic"), images(6)
    with torch.no_grad():
        analytic = torch.stack([elbo(model, x, generator=gen(s))["log_px_nats"] for s in range(20)]).mean(0)
        out = iwae(model, x, k=64, generator=gen())
    assert (out["log_px_nats"] >= out["elbo_nats"]).all()  # Jensen, per image
    assert (out["log_px_nats"] > analytic).all()
    assert torch.isnan(out["q_var_ratio"]).all()
    layer_sum = sum(out[f"rate_nats_layer{i}"] for i in range(1, 4))
    torch.testing.assert_close(layer_sum, out["rate_nats"])


def test_iwae_chunking_does_not_change_the_hierarchical_estimate():
    model, x = hvae("bernoulli"), images(3)
    with torch.no_grad():
        a = iwae(model, x, k=10, chunk_size=3, generator=gen())
        b = iwae(model, x, k=10, chunk_size=10, generator=gen())
    for key in ("log_px_nats", "elbo_nats", "rate_nats_layer1"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-3)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_one_layer_hvae_reproduces_the_single_layer_vae(likelihood):
    """An L = 1 HVAE on a VAE's weights gives the VAE's bounds: the analytic ELBO bit for
    bit, the MC ELBO and IWAE-K to rounding (same noise)."""
    cfg = Config().override({"model.likelihood": likelihood, "model.base_channels": "4", "model.latent_dim": "5"})
    torch.manual_seed(3)
    vae = build_model(cfg.model, (1, 28, 28)).eval()
    one = HierarchicalVAE.from_vae(vae)
    x = images(4)
    with torch.no_grad():
        a, b = elbo(vae, x, samples=3, generator=gen()), elbo(one, x, samples=3, generator=gen())
        for key in ("log_px_nats", "distortion_nats", "rate_nats"):
            assert torch.equal(a[key], b[key]), key
        assert torch.equal(b["rate_nats_layer1"], b["rate_nats"])
        a, b = elbo(vae, x, kl="mc", generator=gen()), elbo(one, x, kl="mc", generator=gen())
        torch.testing.assert_close(a["log_px_nats"], b["log_px_nats"], rtol=1e-6, atol=1e-3)
        a, b = iwae(vae, x, k=16, chunk_size=5, generator=gen()), iwae(one, x, k=16, chunk_size=5, generator=gen())
        for key in ("log_px_nats", "elbo_nats"):
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(a["ess"], b["ess"], rtol=1e-3, atol=0)  # exp of log-weight differences
    # the registry builds the same network for latent_dims=[Z]: the VAE's weights load into it
    hcfg = cfg.override({"model.arch": "hvae"}).model
    hcfg.arch_options = {"latent_dims": [5]}
    built = build_model(hcfg, (1, 28, 28))
    assert count_parameters(built) == count_parameters(vae)
    built.load_state_dict(one.state_dict())
    with torch.no_grad():
        assert torch.equal(elbo(built.eval(), x, generator=gen())["log_px_nats"],
                           elbo(vae, x, generator=gen())["log_px_nats"])


def test_config_options_are_checked():
    cfg = Config().override({"model.arch": "hvae"}).model
    cfg.arch_options = {"latent_dim": [4, 3]}
    with pytest.raises(ConfigError, match="did you mean 'latent_dims'"):
        build_model(cfg, (1, 28, 28))
    cfg.arch_options = {"latent_dims": [4, 3], "widths": [8, 8]}
    with pytest.raises(ConfigError, match="needs 1 entries"):
        build_model(cfg, (1, 28, 28))
    cfg.arch_options = {"latent_dims": [4, 0]}
    with pytest.raises(ConfigError, match="positive integers"):
        build_model(cfg, (1, 28, 28))
    conv = Config().override({"model.arch_options": '{"latent_dims": [4, 3]}'}).model
    with pytest.raises(ConfigError, match="takes no arch_options"):
        build_model(conv, (1, 28, 28))
    default = build_model(Config().override({"model.arch": "hvae"}).model, (1, 28, 28))
    assert default.latent_dims == (32, 16, 8)  # 2·latent_dim, latent_dim, latent_dim/2


def test_single_layer_only_tools_refuse_the_hierarchical_model_clearly():
    model, x = hvae(), images(2)
    with pytest.raises(TypeError, match="hierarchical"):
        model.posterior(x)
    with pytest.raises(ValueError, match="refine"):
        iwae(model, x, k=4, refine_steps=1)
    vae = build_model(Config().model, (1, 28, 28))
    with pytest.raises(TypeError, match="single latent layer"):
        llr_bounds(vae, x)


def test_gradients_reach_every_parameter():
    """Training needs (and DDP without find_unused_parameters requires) every module in the loss."""
    model, x = hvae("dlogistic").train(), images(4)
    (-elbo(model, x)["log_px_nats"].mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_warmup_and_free_nats_schedule():
    objective = make_objective("elbo_warmup", {"warmup_epochs": 4, "free_nats": 2.0, "free_nats_epochs": 4})
    betas, lams = [], []
    for epoch in range(6):
        objective.set_epoch(epoch)
        beta, lam = objective.schedule(warmup_epochs=4, free_nats=2.0, free_nats_epochs=4)
        betas.append(beta)
        lams.append(lam)
    assert betas == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lams == [2.0, 2.0, 2.0, 0.0, 0.0, 0.0]
    model, x = hvae(), images(4)
    objective.set_epoch(10)  # schedule over: the loss is the negative ELBO
    torch.manual_seed(0)
    loss = objective(model, x)["loss"]
    torch.manual_seed(0)
    torch.testing.assert_close(loss, -elbo(model, x)["log_px_nats"].mean())
    objective.set_epoch(0)  # beta 1/4 and 2 free nats per layer
    torch.manual_seed(0)
    out = objective(model, x, warmup_epochs=4, free_nats=2.0, free_nats_epochs=4)
    torch.manual_seed(0)
    ref = elbo(model, x)
    kl = sum(ref[f"rate_nats_layer{i}"].clamp_min(2.0) for i in range(1, 4))
    torch.testing.assert_close(out["loss"], (ref["distortion_nats"] + 0.25 * kl).mean())


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_train_end_to_end_with_warmup_and_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    data = write_fig2a_data(tmp_path / "data", n_train=128, n_test=32)
    cfg = Config().override({
        "model.arch": "hvae", "model.likelihood": "dlogistic", "model.base_channels": "4",
        "model.arch_options": '{"latent_dims": [4, 3, 2], "widths": [8, 8]}',
        "train.objective": "elbo_warmup",
        "train.objective_options": '{"warmup_epochs": 2, "free_nats": 0.5, "free_nats_epochs": 2}',
        "train.epochs": "3", "train.batch_size": "32"})
    straight = load_checkpoint(train(cfg, tmp_path / "straight", data_dir=str(data)))
    train(cfg.override({"train.epochs": "1"}), tmp_path / "resumed", data_dir=str(data))
    raise_saved_epochs(tmp_path / "resumed", 3)
    resumed = load_checkpoint(train(cfg, tmp_path / "resumed", resume=True, data_dir=str(data)))
    assert resumed["epoch"] == 3
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert [h["train_loss"] for h in straight["history"]] == [h["train_loss"] for h in resumed["history"]]
    assert [h["train_beta"] for h in straight["history"]] == [0.5, 1.0, 1.0]
    assert [h["train_free_nats"] for h in straight["history"]] == [0.5, 0.5, 0.0]  # hold 1, linspace(0.5, 0, 1)
    lines = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_elbo_nats"] < 0

    from vaeood.evaluation.log_px import log_px

    scores = log_px(tmp_path / "straight", "mnist", data_dir=str(data), estimator="iwae",
                    estimator_options={"k": 4}, limit=16)
    assert scores["bpd"].shape == (16,) and (scores["bpd"] > 0).all()
    assert {"rate_nats_layer1", "rate_nats_layer3"} <= set(scores)


@pytest.mark.slow  # e2e: several processes
def test_ddp_trains_the_hierarchical_model(tmp_path, monkeypatch):
    """Two gloo processes under torchrun: every HVAE module takes part in the loss (DDP
    without find_unused_parameters), rank 0 writes, the warm-up schedule is logged."""
    import os
    import subprocess
    import sys

    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    data = write_fig2a_data(tmp_path / "data", n_train=128, n_test=32)
    import vaeood

    src = str(Path(vaeood.__file__).resolve().parents[1])  # this checkout's package, whatever the cwd
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("VAEOOD_DATA", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vaeood.cli",
           "train", str(tmp_path / "two"), "--data-dir", str(data), "--model.arch=hvae", "--model.base_channels=4",
           '--model.arch_options={"latent_dims": [4, 3, 2], "widths": [8, 8]}', "--train.objective=elbo_warmup",
           '--train.objective_options={"warmup_epochs": 2}', "--train.epochs=2", "--train.batch_size=32"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(tmp_path / "two")
    assert state["epoch"] == 2 and [h["train_beta"] for h in state["history"]] == [0.5, 1.0]


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_hvae_llr_experiment_runs_end_to_end_on_tiny_data(tmp_path, monkeypatch):
    from vaeood.experiments import hvae_llr

    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    data = write_fig2a_data(tmp_path / "data", n_train=64, n_test=32)
    out = hvae_llr.run(tmp_path / "out", [0], limit=16, data_dir=str(data), llr_iw=False,
                       overrides={"train.epochs": "1", "model.base_channels": "4", "data.limit": "64"})
    row = out["hvae"]["seed0"]
    assert set(row["sampled"]["metrics"]) == {"elbo_nll", "llr_gt_1", "l_gt_1_nll", "llr_gt_2", "l_gt_2_nll"}
    assert all(0 <= m["auroc"] <= 1 for m in row["sampled"]["metrics"].values())
    assert out["vae"]["elbo_bpd"]["fashion_mnist"] > 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "LLR>k" in report and "0.98" in report
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["hvae"]["seed0"]["elbo_bpd"] == row["elbo_bpd"]
