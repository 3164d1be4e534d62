"""Nothing lost, bad input refused clearly (issue 6).

- crash safety: a training process SIGKILLed at random points (before its first
  checkpoint, mid-epoch, between epochs, in the middle of writing a checkpoint) and
  resumed with ``--resume`` ends with the same weights and metrics as an uninterrupted
  run; every file the package writes goes through ``vaeood.infra.atomic``;
- numerical faults: NaN/inf losses or gradients are skipped and counted, too many in a
  row stop training with a clear error, and a bad state never overwrites a good
  checkpoint;
- safe loading: a checkpoint carrying code is refused, and the code does not run;
- bad input: missing/corrupt/mismatched data, mistyped config, image shapes that differ
  from the model's (refused, or fitted with ``--pad``/``--resize`` and recorded), output
  folders that cannot be written and full disks: all clear errors (``vaeood: error:``
  and exit status 2 on the command line), with the previous files intact.

Everything runs on tiny data written here (``tinydata``); no network, no real data.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinydata import blobs, strokes, write_fig2a_data, write_npz
from vaeood.infra.atomic import WriteError, atomic_write_json
from vaeood.training.checkpoint import CheckpointError, load_checkpoint
from vaeood.cli import main
from vaeood.training.config import Config
from vaeood.data.conform import conform_images, convert_channels
from vaeood.data.mnist import MNIST
from vaeood.inference.objectives import OBJECTIVES
from vaeood.evaluation.log_px import ShapeMismatchError, log_px
from vaeood.training.train import TrainingError, train

SRC = Path(__file__).parents[1] / "src"
TINY = {"model.base_channels": "4", "model.latent_dim": "4", "train.batch_size": "64"}
TINY_ARGS = [f"--{k}={v}" for k, v in TINY.items()]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the user's data or cache."""
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture()
def data_dir(tmp_path):
    return write_fig2a_data(tmp_path / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run on 28×28 grey images, and its data folder (tests must not retrain it)."""
    root = tmp_path_factory.mktemp("trained")
    data = write_fig2a_data(root / "data")
    run = train(Config().override({**TINY, "train.epochs": "1"}), root / "run", data_dir=str(data))
    return run, data


def cli_error(capsys, argv) -> str:
    """Run the CLI, expect exit status 2 and return the error it printed."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "vaeood: error:" in err
    return err


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.tmp"))


# =========================================================================== 1. crash-safe runs
KILL_TEST_ARGS = ["--model.base_channels=4", "--model.latent_dim=4", "--train.epochs=6",
                  "--train.batch_size=32", "--data.limit=1024"]

# Runs the CLI with torch.save replaced by one that, on its N-th call, writes half of the
# checkpoint into the temporary file and then SIGKILLs its own process: a kill in the
# middle of a write.
DIE_WHILE_SAVING = r"""
import io, os, signal, sys
import torch
real_save, calls, die_at = torch.save, [0], int(sys.argv.pop(1))
def dying_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] < die_at:
        return real_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
from vaeood.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _launch(run: Path, data: Path, *extra: str, die_at_save: int | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("VAEOOD_DATA", None)
    entry = ["-c", DIE_WHILE_SAVING, str(die_at_save)] if die_at_save else ["-m", "vaeood.cli"]
    log = open(run.parent / f"{run.name}.log", "ab")
    return subprocess.Popen([sys.executable, *entry, "train", str(run), "--data-dir", str(data),
                             *KILL_TEST_ARGS, *extra], env=env, stdout=log, stderr=log)


def _epochs_done(run: Path) -> int:
    try:  # written atomically right after each checkpoint
        return len((run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def _kill_when(proc: subprocess.Popen, ready, delay: float, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` first holds; False if it
    finished by itself first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return True


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in records]


def _log(run: Path) -> str:
    return (run.parent / f"{run.name}.log").read_text()


def _chain_random_kills(run: Path, data: Path, rng: random.Random) -> None:
    """Killed at seeded random points: before its first checkpoint, then after an epoch."""
    # 1. killed while the first epoch runs: config.json is there, no checkpoint yet
    proc = _launch(run, data)
    assert _kill_when(proc, (run / "config.json").exists, rng.uniform(0.0, 0.02))
    assert (run / "config.json").exists() and not (run / "checkpoint.pt").exists()
    # 2. --resume without a checkpoint starts from scratch; killed at a random delay after
    #    epoch 1 ended (mid-epoch, between epochs or mid-write)
    proc = _launch(run, data, "--resume")
    assert _kill_when(proc, lambda: _epochs_done(run) >= 1, rng.uniform(0.0, 0.15))
    assert "nothing to resume" in _log(run) and "starting from scratch" in _log(run)
    assert 1 <= load_checkpoint(run)["epoch"] < 6
    # 3. resumed to the end
    assert _launch(run, data, "--resume").wait(timeout=120) == 0, _log(run)


def _chain_torn_write(run: Path, data: Path, rng: random.Random) -> None:
    """Killed between epochs 3 and 4, half-way through writing the epoch-3 checkpoint."""
    proc = _launch(run, data, die_at_save=3)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert load_checkpoint(run)["epoch"] == 2  # the torn write never replaced epoch 2's
    assert _epochs_done(run) == 2
    assert [p.name.startswith(".checkpoint.pt.") for p in temp_files(run)] == [True]
    # resumed to the end (sweeping the torn temporary file)
    assert _launch(run, data, "--resume").wait(timeout=120) == 0, _log(run)
    assert "removed 1 temporary file(s) left by an interrupted write" in _log(run)


@pytest.mark.slow  # several training processes, killed and resumed
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path):
    """Kill real ``vaeood train`` processes -- at seeded random points before the first
    checkpoint and after an epoch ended, and between two epochs half-way through writing
    a checkpoint -- and resume each with ``--resume``: both killed runs end with the
    weights, RNG state and metrics of an uninterrupted run, bit for bit, and no torn
    temporary file is left. (Two kill chains and the uninterrupted run go side by side.)"""
    from concurrent.futures import ThreadPoolExecutor

    data = write_fig2a_data(tmp_path / "data", n_train=1024)
    straight = tmp_path / "straight"
    chains = {tmp_path / "random": _chain_random_kills, tmp_path / "torn": _chain_torn_write}
    with ThreadPoolExecutor(len(chains) + 1) as pool:
        jobs = [pool.submit(lambda: _launch(straight, data).wait(timeout=120))]
        jobs += [pool.submit(chain, run, data, random.Random(seed)) for seed, (run, chain) in enumerate(chains.items())]
        assert jobs[0].result() == 0, _log(straight)
        for job in jobs[1:]:
            job.result()  # re-raises a failed assertion of its chain

    a = load_checkpoint(straight)
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert a["epoch"] == len(lines) == 6
    for run in chains:
        b = load_checkpoint(run)
        assert b["epoch"] == 6 and a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), run.name
        assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
        assert _without_timing(a["history"]) == _without_timing(b["history"])
        resumed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert _without_timing(resumed) == _without_timing(lines)
        assert (straight / "config.json").read_text() == (run / "config.json").read_text()
        assert not temp_files(run)


def test_resume_says_which_given_settings_it_ignores(tmp_path, data_dir, caplog):
    cfg = Config().override({**TINY, "train.epochs": "1"})
    run = train(cfg, tmp_path / "run", data_dir=str(data_dir))
    train(cfg.override({"train.lr": "0.5"}), run, resume=True, data_dir=str(data_dir))
    assert "ignoring the settings that differ from it: train.lr=0.5 (saved: 0.001)" in caplog.text


def _direct_writes(source: str) -> list[int]:
    """Lines of calls that write a file other than through ``vaeood.infra.atomic``: ``open``
    for writing, ``Path.write_text/write_bytes``, ``np.save*`` / ``torch.save`` /
    ``savefig`` to anything but the file object ``atomic_write`` hands out (``f``) or
    an in-memory buffer (``buf``), and ``shutil`` copies."""
    import ast

    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        args = [a.id if isinstance(a, ast.Name) else None for a in node.args]
        mode = node.args[1] if name == "open" and len(node.args) > 1 else next(
            (k.value for k in node.keywords if k.arg == "mode"), None)
        if name == "open" and isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax+"):
            hits.append(node.lineno)
        elif name in ("write_text", "write_bytes", "copy", "copyfile", "copy2", "move") and \
                (name.startswith("write") or owner == "shutil"):
            hits.append(node.lineno)
        elif (name in ("save", "savez", "savez_compressed", "savetxt") and owner in ("np", "numpy")
              and args[:1] != ["f"]) or (name == "save" and owner == "torch" and args[1:2] != ["f"]) \
                or (name == "savefig" and args[:1] not in (["f"], ["buf"])):
            hits.append(node.lineno)
    return hits


def test_every_file_the_package_writes_goes_through_atomic():
    """No module writes a file except through vaeood.infra.atomic (temp + fsync + rename)."""
    allowed = {"atomic.py", "download.py"}  # download.py: its own temp + MD5 check + rename
    offenders = [f"{p.relative_to(SRC)}:{line}: {p.read_text().splitlines()[line - 1].strip()}"
                 for p in sorted((SRC / "vaeood").rglob("*.py")) if p.name not in allowed
                 for line in _direct_writes(p.read_text())]
    assert not offenders, "write these through vaeood.infra.atomic:\n" + "\n".join(offenders)
    # the checker itself finds what it should
    assert _direct_writes("open(p, 'w')\nPath(p).write_text(s)\nnp.save(p, x)\ntorch.save(s, p)\n"
                          "fig.savefig(p)\nshutil.copy(a, b)\nopen(p, 'rb')\nnp.savez(f, x=x)\n"
                          "torch.save(s, f)\nfig.savefig(buf)") == [1, 2, 3, 4, 5, 6]


# =========================================================================== 2. numerical faults
class _NanGradient(torch.autograd.Function):
    """Identity forward, NaN backward: a finite loss whose gradient is NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


@pytest.fixture()
def faulty(monkeypatch):
    """Register objective ``test_faulty``: the ELBO, except on the steps in ``plan`` (global
    step index → fault): ``"loss"`` gives a NaN loss, ``"inf"`` an infinite one, ``"grad"``
    a finite loss with NaN gradients, ``"weights"`` turns a weight NaN behind the
    optimiser's back."""
    plan: dict[int, str] = {}
    calls = [0]

    def objective(model, x):
        step, calls[0] = calls[0], calls[0] + 1
        out = OBJECTIVES.get("elbo")(model, x)
        fault = plan.get(step)
        if fault == "loss":
            out["loss"] = out["loss"] * float("nan")
        elif fault == "inf":
            out["loss"] = out["loss"] + float("inf")
        elif fault == "grad":
            out["loss"] = _NanGradient.apply(out["loss"])
        elif fault == "weights":
            next(model.parameters()).data.fill_(float("nan"))
        return out

    with OBJECTIVES.registered("test_faulty", objective):
        yield plan


def _checkpoint_spy(monkeypatch) -> list[bytes]:
    """The bytes of every checkpoint train() writes, in order."""
    import importlib

    train_module = importlib.import_module("vaeood.training.train")  # the module, not vaeood.train()

    saved, real = [], train_module.save_checkpoint

    def spy(path, state):
        out = real(path, state)
        saved.append(Path(path).read_bytes())
        return out

    monkeypatch.setattr(train_module, "save_checkpoint", spy)
    return saved


def _faulty_config(**more) -> Config:
    # 256 images / 64 per batch: 4 steps per epoch, global steps 0-3, 4-7, 8-11
    return Config().override({**TINY, "train.epochs": "3", "train.objective": "test_faulty", **more})


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, data_dir, faulty):
    faulty.update({1: "loss", 5: "grad", 6: "inf"})
    run = train(_faulty_config(), tmp_path / "run", data_dir=str(data_dir))
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped_steps"] for x in lines] == [1, 2, 0]
    assert all(np.isfinite(x["train_loss"]) for x in lines)
    state = load_checkpoint(run)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [h["skipped_steps"] for h in state["history"]] == [1, 2, 0]


def test_too_many_nonfinite_steps_stop_with_a_clear_error_and_keep_the_checkpoint(
        tmp_path, data_dir, faulty, monkeypatch):
    faulty.update({s: "loss" for s in range(4, 12)})  # every step from epoch 2 on
    saved = _checkpoint_spy(monkeypatch)
    with pytest.raises(TrainingError, match=r"NaN/inf for 3 steps in a row at epoch 2 "
                                            r"\(train.max_nonfinite_steps = 3\).*checkpoint.*kept unchanged"
                                            r".*Lower train.lr"):
        train(_faulty_config(**{"train.max_nonfinite_steps": "3"}), tmp_path / "run", data_dir=str(data_dir))
    assert len(saved) == 1
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved[0]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_nonfinite_steps_in_a_row_are_counted_across_epochs(tmp_path, data_dir, faulty):
    faulty.update({3: "loss", 4: "grad", 5: "loss"})  # last step of epoch 1, first two of epoch 2
    with pytest.raises(TrainingError, match="3 steps in a row at epoch 2"):
        train(_faulty_config(**{"train.max_nonfinite_steps": "3"}), tmp_path / "run", data_dir=str(data_dir))


def test_on_a_gpu_the_run_of_bad_steps_is_read_every_few_steps_and_still_stops(
        tmp_path, data_dir, faulty, monkeypatch):
    """On a GPU the host reads the device's count only every few steps (no stall per
    step): the stop comes at the next read, with the count as read, and the bad steps in
    between changed nothing (the checkpoint of epoch 1 is kept)."""
    monkeypatch.setattr(sys.modules["vaeood.training.train"], "check_interval", lambda device: 2)
    faulty.update({s: "loss" for s in range(4, 12)})  # every step from epoch 2 on (4 per epoch)
    saved = _checkpoint_spy(monkeypatch)
    # reads after steps 2 and 4 of epoch 2: 2 < 3, then 4 >= 3
    with pytest.raises(TrainingError, match=r"NaN/inf for 4 steps in a row at epoch 2 "):
        train(_faulty_config(**{"train.max_nonfinite_steps": "3"}), tmp_path / "run", data_dir=str(data_dir))
    assert len(saved) == 1 and (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved[0]


def test_nan_weights_never_overwrite_a_good_checkpoint(tmp_path, data_dir, faulty, monkeypatch):
    faulty.update({7: "weights"})  # last step of epoch 2
    saved = _checkpoint_spy(monkeypatch)
    with pytest.raises(TrainingError, match="weights became NaN/inf at epoch 2.*kept unchanged"):
        train(_faulty_config(), tmp_path / "run", data_dir=str(data_dir))
    assert len(saved) == 1 and (tmp_path / "run" / "checkpoint.pt").read_bytes() == saved[0]
    assert load_checkpoint(tmp_path / "run")["epoch"] == 1


def test_an_exploding_learning_rate_stops_with_advice(tmp_path, data_dir, capsys):
    err = cli_error(capsys, ["train", str(tmp_path / "run"), "--data-dir", str(data_dir), *TINY_ARGS,
                             "--train.epochs=2", "--train.lr=1e30", "--train.max_nonfinite_steps=2"])
    assert "NaN/inf" in err and "Lower train.lr (now 1e+30)" in err
    assert "no checkpoint was written" in err and not (tmp_path / "run" / "checkpoint.pt").exists()


# =========================================================================== 3. safe loading
class _RunsCode:
    """Unpickling this runs a shell command (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_run(tmp_path: Path, trained_run: Path, how: str) -> tuple[Path, Path]:
    run, marker = tmp_path / "hostile", tmp_path / "PWNED"
    run.mkdir()
    state = load_checkpoint(trained_run)
    state["config"] = {**state["config"], "payload": _RunsCode(marker)}
    if how == "torch":
        torch.save(state, run / "checkpoint.pt")
    else:  # a plain pickle file renamed
        import pickle

        (run / "checkpoint.pt").write_bytes(pickle.dumps(state))
    return run, marker


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_checkpoint_carrying_code_is_refused_and_not_run(tmp_path, trained, capsys, how):
    run, marker = _hostile_run(tmp_path, trained[0], how)
    with pytest.raises(CheckpointError, match=r"refusing to load .*checkpoint.pt.*could run code"):
        load_checkpoint(run)
    err = cli_error(capsys, ["log-px", str(run), "--dataset", "mnist", "--data-dir", str(trained[1])])
    assert "refusing to load" in err and "weights_only=False" not in err
    err = cli_error(capsys, ["train", str(run), "--resume", "--data-dir", str(trained[1])])
    assert "refusing to load" in err
    assert not marker.exists()


def test_hostile_checkpoint_names_the_blocked_callable(tmp_path, trained):
    run, marker = _hostile_run(tmp_path, trained[0], "torch")
    with pytest.raises(CheckpointError, match=r"GLOBAL (posix|os|nt)\.system"):
        load_checkpoint(run)
    assert not marker.exists()


def test_truncated_or_foreign_checkpoints_are_refused_clearly(tmp_path, trained, capsys):
    good = (trained[0] / "checkpoint.pt").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    err = cli_error(capsys, ["log-px", str(tmp_path / "cut"), "--dataset", "mnist", "--data-dir", str(trained[1])])
    assert "cannot read checkpoint" in err and "truncated or corrupt" in err
    (tmp_path / "foreign").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a vaeood checkpoint: it lacks 'config', 'epoch'"):
        load_checkpoint(tmp_path / "foreign")


# =========================================================================== 4. bad input
# ---- data through the command line (library-level cases are in test_data.py)
def test_missing_dataset_offline_says_where_it_looked(tmp_path, trained, capsys):
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(tmp_path / "empty")])
    assert "dataset 'mnist' split 'test' not found" in err and str(tmp_path / "empty") in err
    assert "--download" in err


def test_download_without_network_is_a_clear_error(tmp_path, trained, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(tmp_path / "d"),
                             "--download"])
    assert "could not download" in err and "no network in this test" in err


def test_md5_mismatch_from_the_cli(tmp_path, trained, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes(gzip.compress(b"not the official file"))
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(folder)])
    assert "t10k-" in err and MNIST.md5["t10k-images-idx3-ubyte.gz"] in err


def test_truncated_archive_from_the_cli(tmp_path, trained, capsys, monkeypatch):
    from vaeood.data.cifar10 import ARCHIVE, CIFAR10

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        payload = os.urandom(200_000)  # incompressible, so half the archive is half the members
        info = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    cut = buf.getvalue()[: len(buf.getvalue()) // 2]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ARCHIVE).write_bytes(cut)
    # trust the truncated bytes, so that reading them (not the MD5) is what fails
    monkeypatch.setattr(CIFAR10, "md5", {**CIFAR10.md5, ARCHIVE: hashlib.md5(cut).hexdigest()})
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "cifar10", "--data-dir", str(tmp_path / "d")])
    assert ARCHIVE in err and "truncated or corrupt" in err


@pytest.mark.parametrize("arrays, expected", [
    ({"images": np.zeros((2, 28, 28), np.uint8), "y": np.zeros(2, int)}, r"missing array 'x'"),
    ({"x": np.full((2, 28, 28), np.nan, np.float32), "y": np.zeros(2, int)},
     r"dtype float32.*1568 NaN/inf values \(first at index \(0, 0, 0\)\); fix or drop those images"),
    ({"x": np.full((2, 28, 28), 0.5), "y": np.zeros(2, int)}, r"range over \[0.5, 0.5\]; if they mean \[0, 1\]"),
    ({"x": np.full((2, 28, 28), 300, np.int64), "y": np.zeros(2, int)},
     r"dtype int64.*range over \[300, 300\], outside 0-255"),
    ({"x": np.zeros((2, 28, 28, 4), np.uint8), "y": np.zeros(2, int)}, r"field 'x' has shape \(2, 28, 28, 4\)"),
])
def test_bad_npz_from_the_cli(tmp_path, trained, capsys, arrays, expected):
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "mine_test.npz", **arrays)
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mine", "--data-dir", str(tmp_path / "d")])
    assert "mine_test.npz" in err
    assert re.search(expected, err), err


def test_unknown_key_in_a_config_file_from_the_cli(tmp_path, data_dir, capsys):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochz = 3\n")
    err = cli_error(capsys, ["train", str(tmp_path / "run"), "--config", str(path), "--data-dir", str(data_dir)])
    assert "c.toml" in err and "did you mean 'epochs'" in err
    assert not (tmp_path / "run").exists()


# ---- image shapes: refused, or fitted on request and recorded
def test_fit_module_known_answers():
    grey = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28, 1).astype(np.uint8)
    padded = conform_images(grey, (1, 32, 32), "pad")
    assert padded.shape == (2, 32, 32, 1) and padded.dtype == np.uint8
    np.testing.assert_array_equal(padded[:, 2:30, 2:30], grey)
    assert padded.sum() == grey.astype(np.int64).sum()  # only zeros were added, centred
    rgb = conform_images(grey, (3, 28, 28), "pad")
    np.testing.assert_array_equal(rgb, np.repeat(grey, 3, axis=-1))
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert (convert_channels(red, 1) == 76).all()  # round(0.299 * 255)
    flat = np.full((3, 32, 32, 3), 77, np.uint8)
    np.testing.assert_array_equal(conform_images(flat, (1, 28, 28), "resize"), np.full((3, 28, 28, 1), 77))
    np.testing.assert_array_equal(conform_images(grey, (1, 28, 28), "resize"), grey)  # already fits
    up = conform_images(np.array([[[[0], [255]]]], np.uint8), (1, 1, 4), "resize")
    np.testing.assert_array_equal(up[0, 0, :, 0], [0, 64, 191, 255])  # bilinear, align_corners=False
    with pytest.raises(ValueError, match="cannot shrink 32×32 images to 28×28; use --resize"):
        conform_images(flat, (3, 28, 28), "pad")
    with pytest.raises(KeyError, match="unknown conform 'crop'"):
        conform_images(flat, (3, 28, 28), "crop")


def test_shape_mismatch_is_refused_with_the_fits_named(tmp_path, trained, capsys):
    write_npz(tmp_path / "d", "colour", "test", blobs(8, 0, size=32, channels=3))
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "colour", "--data-dir", str(tmp_path / "d")])
    assert "3×32×32 but the model" in err and "--pad" in err and "--resize" in err
    with pytest.raises(ShapeMismatchError):
        log_px(trained[0], "colour", data_dir=str(tmp_path / "d"))


def test_resize_fits_and_is_recorded(tmp_path, trained, capsys):
    run, _ = trained
    write_npz(tmp_path / "d", "colour", "test", blobs(8, 0, size=32, channels=3))
    assert main(["log-px", str(run), "--dataset", "colour", "--data-dir", str(tmp_path / "d"), "--resize"]) == 0
    assert "images conformed: resize 3×32×32 → 1×28×28" in capsys.readouterr().out
    saved = np.load(next((run / "features").glob("colour_test_elbo_conformresize_*.npz")))
    meta = json.loads(str(saved["meta"]))
    assert meta["conform"] == {"method": "resize", "from_shape": [3, 32, 32], "to_shape": [1, 28, 28],
                           "description": "resize 3×32×32 → 1×28×28"}
    assert saved["log_px_nats"].shape == (8,) and np.isfinite(saved["log_px_nats"]).all()
    with pytest.raises(SystemExit):  # one fit at a time
        main(["log-px", str(run), "--dataset", "colour", "--pad", "--resize"])


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_pad_fits_scores_and_evaluate_records_it(tmp_path, capsys):
    """A model of 3×32×32 images (CIFAR-like) scores 28×28 grey images padded (MNIST-like)."""
    data = tmp_path / "d"
    write_npz(data, "cifar10", "train", blobs(128, 0, size=32, channels=3))
    write_npz(data, "cifar10", "test", blobs(32, 1, size=32, channels=3))
    write_npz(data, "mnist", "test", strokes(32, 3))
    run = tmp_path / "run"
    assert main(["train", str(run), "--data-dir", str(data), "--data.name=cifar10", "--train.epochs=1",
                 *TINY_ARGS]) == 0
    err = cli_error(capsys, ["evaluate", str(run), "--in", "cifar10", "--ood", "mnist", "--data-dir", str(data)])
    assert "mnist/test images are C×H×W = 1×28×28" in err
    assert main(["evaluate", str(run), "--in", "cifar10", "--ood", "mnist", "--data-dir", str(data), "--pad"]) == 0
    assert "mnist: images fitted to the model: pad 1×28×28 → 3×32×32" in capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["conform"] == "pad" and metrics["fitted"] == {"mnist": "pad 1×28×28 → 3×32×32"}
    assert metrics["datasets"]["mnist"]["conform"]["method"] == "pad"
    assert metrics["datasets"]["cifar10"]["conform"] is None  # already the model's shape
    # the pixel statistics describe what was scored: 28×28 strokes inside a black 32×32 frame
    x = strokes(32, 3)
    assert metrics["datasets"]["mnist"]["pixel_mean"] == pytest.approx(x.mean() / 255 * 784 / 1024)


# ---- output that cannot be written
def test_unwritable_output_folder_is_a_clear_error(tmp_path, trained, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = cli_error(capsys, ["evaluate", str(trained[0]), "--in", "fashion_mnist", "--ood", "mnist",
                             "--data-dir", str(trained[1]), "--out", str(blocker / "out"), "--limit", "16"])
    assert f"cannot create the output folder {blocker}" in err
    err = cli_error(capsys, ["train", str(blocker / "run"), "--data-dir", str(trained[1]), *TINY_ARGS])
    assert f"cannot create the output folder {blocker / 'run'}" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_a_clear_error(tmp_path, trained, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        err = cli_error(capsys, ["evaluate", str(trained[0]), "--in", "fashion_mnist", "--ood", "mnist",
                                 "--data-dir", str(trained[1]), "--out", str(out), "--limit", "16"])
        assert "not writable" in err and str(out) in err
    finally:
        out.chmod(0o700)


def _disk_fills_on_call(monkeypatch, module, name: str, call: int) -> list[bytes]:
    """Make ``module.name(obj_or_file, f, ...)``-style writers write half their bytes and
    then fail with ENOSPC on call number ``call`` (1-based); returns full writes' bytes."""
    real = getattr(module, name)
    done: list[bytes] = []

    def writer(*args, **kwargs):
        target = args[1] if name == "save" else args[0]
        rest = (args[0], *args[2:]) if name == "save" else args[1:]
        buf = io.BytesIO()
        real(*((rest[0], buf, *rest[1:]) if name == "save" else (buf, *rest)), **kwargs)
        if len(done) + 1 == call:
            target.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        target.write(buf.getvalue())
        done.append(buf.getvalue())

    monkeypatch.setattr(module, name, writer)
    return done


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, data_dir, capsys, monkeypatch):
    done = _disk_fills_on_call(monkeypatch, torch, "save", call=2)
    run = tmp_path / "run"
    err = cli_error(capsys, ["train", str(run), "--data-dir", str(data_dir), *TINY_ARGS, "--train.epochs=3"])
    assert f"cannot write {run / 'checkpoint.pt'}: no space left on device" in err
    assert "the previous file is unchanged" in err
    assert (run / "checkpoint.pt").read_bytes() == done[0]  # epoch 1, byte for byte
    assert load_checkpoint(run)["epoch"] == 1
    assert not temp_files(run)


def test_disk_full_while_saving_scores_leaves_nothing_half_written(tmp_path, trained, capsys, monkeypatch):
    _disk_fills_on_call(monkeypatch, np, "savez", call=1)
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(trained[1]),
                             "--limit", "7"])
    assert "features" in err and "_first7_" in err and "no space left on device" in err
    assert "nothing was written" in err
    assert not list((trained[0] / "features").glob("*first7*")) and not temp_files(trained[0])


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic_write_json(tmp_path / "metrics.json", {"auroc": 0.9})
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(WriteError, match=r"cannot write .*metrics.json: Input/output error; the previous file "
                                         r"is unchanged") as err:
        atomic_write_json(path, {"auroc": 0.1})
    assert err.value.errno == errno.EIO and isinstance(err.value, OSError)
    assert path.read_bytes() == before and not temp_files(tmp_path)


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os
    import stat

    from vaeood.infra.atomic import atomic_write_text

    umask = os.umask(0o022)
    os.umask(umask)
    path = atomic_write_text(tmp_path / "report.md", "hello\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
