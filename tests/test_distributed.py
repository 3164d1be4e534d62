"""Two processes with the gloo backend on the CPU, launched by torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vaeood
from tinydata import raise_saved_epochs, write_fig2a_data
from vaeood.training.checkpoint import load_checkpoint
from vaeood.cli import main

pytestmark = pytest.mark.slow  # torchrun launches two processes per test

TINY = ["--train.epochs=3", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=32"]


def torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    # the package under test, by absolute path: a relative PYTHONPATH=src would not resolve from cwd
    src = str(Path(vaeood.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("VAEOOD_DATA", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vaeood.cli", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    return write_fig2a_data(tmp_path / "data")


def test_distributed_scores_equal_single_process_scores_image_by_image(tmp_path, data_dir):
    run = tmp_path / "run"
    assert main(["train", str(run), "--data-dir", str(data_dir), *TINY]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    # 128 images in batches of 20: 7 batches, the last one short, split 4 / 3 over the ranks
    args = ["--dataset", "mnist", "--data-dir", str(data_dir), "--estimator", "iwae", "--k", "8", "--batch-size", "20"]
    assert main(["log-px", str(run), *args]) == 0
    torchrun("log-px", str(copy), *args, cwd=tmp_path)
    single = np.load(next((run / "features").glob("mnist_test_iwae*.npz")))
    multi = np.load(next((copy / "features").glob("mnist_test_iwae*.npz")))
    assert multi["log_px_nats"].shape == (128,)
    np.testing.assert_allclose(multi["log_px_nats"], single["log_px_nats"], rtol=1e-6)
    np.testing.assert_array_equal(multi["labels"], single["labels"])


def test_ddp_training_converges_like_one_process(tmp_path, data_dir):
    assert main(["train", str(tmp_path / "one"), "--data-dir", str(data_dir), *TINY]) == 0
    torchrun("train", str(tmp_path / "two"), "--data-dir", str(data_dir), *TINY, cwd=tmp_path)
    one, two = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert two["epoch"] == 3
    losses_one = [h["train_loss"] for h in one["history"]]
    losses_two = [h["train_loss"] for h in two["history"]]
    assert losses_two[-1] < losses_two[0]  # it learns
    # same global batch and data order, different noise: the curves agree to a few percent
    np.testing.assert_allclose(losses_two, losses_one, rtol=0.05)
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]  # rank 0 alone wrote it


def test_resumed_ddp_run_retraces_the_uninterrupted_one(tmp_path, data_dir):
    """Every rank's RNG state is in the checkpoint, so stopping after epoch 1 and resuming
    under torchrun ends with the weights of a run that was never stopped, bit for bit."""
    args = ["--data-dir", str(data_dir), "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=32"]
    torchrun("train", str(tmp_path / "straight"), *args, "--train.epochs=2", cwd=tmp_path)
    torchrun("train", str(tmp_path / "stopped"), *args, "--train.epochs=1", cwd=tmp_path)
    state = load_checkpoint(tmp_path / "stopped")
    assert len(state["rng"]["ranks"]) == 2
    assert not torch.equal(state["rng"]["ranks"][0]["torch"], state["rng"]["ranks"][1]["torch"])
    raise_saved_epochs(tmp_path / "stopped", 2)  # as a 2-epoch run killed after epoch 1
    torchrun("train", str(tmp_path / "stopped"), *args, "--train.epochs=2", "--resume", cwd=tmp_path)
    straight, resumed = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "stopped")
    assert resumed["epoch"] == 2
    assert all(torch.equal(resumed["model"][k], straight["model"][k]) for k in straight["model"])
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
