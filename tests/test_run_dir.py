"""The run directory read as one object (vaeood.training.run_dir.Run): a known config and
checkpoint give the known fields, the model loads on first use, and a missing or corrupt
config.json or checkpoint gives the clear errors of the config and checkpoint readers."""

from __future__ import annotations

import hashlib

import pytest
import torch

from vaeood.infra.atomic import atomic_write_json
from vaeood.models import build_model
from vaeood.training.checkpoint import CheckpointError, save_checkpoint
from vaeood.training.config import Config, ConfigError
from vaeood.training.run_dir import Run, heldout_range, training_count

SHAPE = (1, 28, 28)


def write_run(run, overrides: dict, *, train_data: dict | None = None) -> Config:
    """config.json and a checkpoint.pt as training writes them, with a model of fixed weights."""
    config = Config().override({"model.latent_dim": "4", "model.base_channels": "4", **overrides})
    atomic_write_json(run / "config.json", config.to_dict())
    torch.manual_seed(0)
    model = build_model(config.model, SHAPE)
    save_checkpoint(run / "checkpoint.pt", {
        "config": config.to_dict(), "epoch": 3, "image_shape": list(SHAPE), "model": model.state_dict(),
        "optimizer": {}, "rng": {}, "history": [{"epoch": 3}],
        **({"train_data": train_data} if train_data is not None else {})})
    return config


def test_a_known_run_gives_its_fields(tmp_path):
    train_data = {"name": "mnist", "split": "train", "split_size": 1000, "trained_range": [0, 700]}
    config = write_run(tmp_path, {"data.name": "mnist", "data.limit": "700"}, train_data=train_data)
    run = Run(tmp_path)
    assert run.config == config and run.config.data.limit == 700
    assert run.checkpoint_path == tmp_path / "checkpoint.pt"
    assert run.checkpoint_sha256 == hashlib.sha256((tmp_path / "checkpoint.pt").read_bytes()).hexdigest()
    assert run.image_shape == SHAPE and run.meta["epoch"] == 3 and "model" not in run.meta
    assert run.train_data == train_data
    assert run.training_count(1000) == 700 and run.heldout_range(1000) == (700, 1000)


def test_holdout_keeps_the_last_images_out_and_limit_caps_training(tmp_path):
    write_run(tmp_path, {"data.holdout": "200", "data.limit": "500"})
    run = Run(tmp_path)
    assert run.train_data == {}  # a checkpoint that recorded no data
    assert run.training_count(1000) == 500 == training_count(run.config.data, 1000)
    assert run.heldout_range(1000) == (800, 1000) == heldout_range(run.config, 1000)  # images 500..799 are neither
    with pytest.raises(ConfigError, match="data.holdout = 200: must be below the split's 150 images"):
        run.training_count(150)


def test_the_model_is_loaded_on_first_use_with_the_checkpoint_weights(tmp_path, monkeypatch):
    write_run(tmp_path, {})
    loads = []
    import vaeood.training.run_dir as run_dir
    real = run_dir.load_model
    monkeypatch.setattr(run_dir, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    run = Run(tmp_path)
    assert run.config is not None and loads == []  # reading the config does not load the model
    model = run.model
    assert run.model is model and len(loads) == 1
    torch.manual_seed(0)
    want = build_model(run.config.model, SHAPE).state_dict()
    assert all(torch.equal(model.state_dict()[k].cpu(), v) for k, v in want.items())
    assert tuple(model.image_shape) == SHAPE and not model.training


def test_a_missing_config_json_is_a_config_error_naming_it(tmp_path):
    write_run(tmp_path, {})
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"cannot read config file .*config\.json"):
        Run(tmp_path).config


def test_a_corrupt_config_json_is_a_config_error_naming_it(tmp_path):
    write_run(tmp_path, {})
    (tmp_path / "config.json").write_text('{"model": {"latent_dim": 4')
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON"):
        Run(tmp_path).config
    (tmp_path / "config.json").write_text('{"model": {"latent_dim": -4}}')
    with pytest.raises(ConfigError, match="latent_dim"):
        Run(tmp_path).config


def test_a_missing_or_corrupt_checkpoint_is_a_checkpoint_error(tmp_path):
    write_run(tmp_path, {})
    whole = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(whole[: len(whole) // 2])  # cut short
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Run(tmp_path).meta
    (tmp_path / "checkpoint.pt").unlink()
    run = Run(tmp_path)
    assert run.config.model.latent_dim == 4  # the config alone still reads
    with pytest.raises(CheckpointError, match="no checkpoint at .*train a model first"):
        run.checkpoint_sha256
