"""Resume is exact or refused, and one process writes into a run at a time (issue 10,
items 2 and 3).

- Why 2: a run killed before its first checkpoint resumed with the *default* config
  and overwrote its config.json; ``--resume`` on a missing directory started a new
  run. Now it resumes from the saved config.json, refuses settings that contradict it,
  and refuses a directory that does not exist or holds no run;
- the resume warning names only the settings that were given;
- Why 3: two trainings into one directory both exited 0 and left config.json and the
  checkpoint of different models. Now the second (and a scoring) is refused, naming
  the first's PID, through the CLI in subprocesses; the lock of a SIGKILLed process
  does not block.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cli_processes import launch, wait_for
from tinydata import write_fig2a_data
from vaeood.infra.atomic import atomic_write_json
from vaeood.training.checkpoint import load_checkpoint
from vaeood.cli import main
from vaeood.training.config import Config
from vaeood.data.load import load_for_run
from vaeood.experiments.reuse import RECIPE_NAME, recipe, train_or_reuse
from vaeood.infra.runlock import LOCK_NAME, run_lock

SMALL = {"model.base_channels": "4", "model.latent_dim": "4", "train.batch_size": "64", "train.epochs": "1"}
SMALL_ARGS = [f"--{k}={v}" for k, v in SMALL.items()]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture()
def data(tmp_path):
    return write_fig2a_data(tmp_path / "data", n_train=128, n_test=32)


def killed_before_first_checkpoint(run: Path, overrides: dict) -> Config:
    """What a run killed during its first epoch leaves: config.json, no checkpoint."""
    config = Config().override(overrides)
    atomic_write_json(run / "config.json", config.to_dict())
    return config


def cli(argv, capsys) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


# ====================================================================== resume rules
def test_why_2_resume_without_checkpoint_uses_the_saved_config(tmp_path, data, capsys):
    run = tmp_path / "run"
    saved = killed_before_first_checkpoint(run, SMALL)
    status, err = cli(["train", str(run), "--resume", "--data-dir", str(data)], capsys)
    assert status == 0, err
    assert Config.from_dict(load_checkpoint(run)["config"]) == saved  # latent 4, 1 epoch: not the defaults
    assert Config.from_file(run / "config.json") == saved


def test_resume_without_checkpoint_refuses_contradicting_settings(tmp_path, data, capsys):
    run = tmp_path / "run"
    killed_before_first_checkpoint(run, SMALL)
    before = (run / "config.json").read_bytes()
    status, err = cli(["train", str(run), "--resume", "--data-dir", str(data), "--model.latent_dim=8"], capsys)
    assert status == 2
    assert "contradict" in err and "model.latent_dim=8 (saved: 4)" in err
    assert "train.epochs" not in err  # only what was given is compared
    assert (run / "config.json").read_bytes() == before and not (run / "checkpoint.pt").exists()
    # the same settings again are no contradiction (here: all of them, from a config file)
    status, err = cli(["train", str(run), "--resume", "--data-dir", str(data), "--config", str(run / "config.json")],
                      capsys)
    assert status == 0, err
    assert load_checkpoint(run)["config"]["model"]["latent_dim"] == 4


@pytest.mark.parametrize("make", ["nothing", "empty dir"])
def test_resume_of_a_directory_without_a_run_is_refused(tmp_path, data, capsys, make):
    run = tmp_path / "run"
    if make == "empty dir":
        run.mkdir()
    status, err = cli(["train", str(run), "--resume", "--data-dir", str(data), *SMALL_ARGS], capsys)
    assert status == 2 and "cannot resume" in err
    assert ("no such directory" in err) if make == "nothing" else ("no checkpoint and no config.json" in err)
    assert run.exists() == (make == "empty dir") and not (run / "config.json").exists()


def test_resume_warning_names_only_the_given_settings(tmp_path, data, capsys, caplog):
    run = tmp_path / "run"
    assert main(["train", str(run), "--data-dir", str(data), *SMALL_ARGS]) == 0
    with caplog.at_level(logging.WARNING):
        assert main(["train", str(run), "--resume", "--data-dir", str(data), "--train.lr=0.5"]) == 0
    warning = [r.getMessage() for r in caplog.records if "ignoring the settings" in r.getMessage()]
    assert len(warning) == 1 and warning[0].endswith("train.lr=0.5 (saved: 0.001)")  # not latent_dim etc.


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_an_experiment_resumes_with_its_full_config_and_starts_fresh_runs(tmp_path, data):
    """train_or_reuse passes its whole config: equal to the saved one is no contradiction."""
    config = Config().override(SMALL)
    run = tmp_path / "runs" / "a"
    assert train_or_reuse(config, run, data_dir=str(data), progress=False)["epochs"] == 1  # fresh
    killed = tmp_path / "runs" / "b"
    killed_before_first_checkpoint(killed, SMALL)
    # and the recipe a reproduction writes before it trains (vaeood.experiments.reuse)
    atomic_write_json(killed / RECIPE_NAME, recipe(config, load_for_run(config.data, data_dir=str(data)), None))
    assert train_or_reuse(config, killed, data_dir=str(data), progress=False)["epochs"] == 1  # resumed


# ====================================================================== one writer
@pytest.mark.slow  # e2e: several processes
def test_why_3_a_second_writer_is_refused_and_a_killed_holder_does_not_block(tmp_path, data):
    run = tmp_path / "run"
    base = ["--data-dir", str(data), "--model.base_channels=4", "--train.batch_size=16"]
    first = launch(["train", str(run), *base, "--model.latent_dim=4", "--train.epochs=500"], tmp_path / "a.log")
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists(), first)  # trained an epoch, holds the lock
        for argv in (["train", str(run), *base, "--model.latent_dim=8"],  # a second training
                     ["log-px", str(run), "--dataset", "mnist", "--data-dir", str(data)]):  # a scoring
            second = launch(argv, tmp_path / "b.log")
            assert second.wait(timeout=120) == 2
            err = (tmp_path / "b.log").read_text()
            assert f"{run} is in use by another vaeood process (pid {first.pid} on" in err, err
            assert "Traceback" not in err
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert (run / LOCK_NAME).exists()  # a stale lock file of a killed process ...
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["latent_dim"] == load_checkpoint(run)["config"]["model"]["latent_dim"] == 4
    # ... does not block the next writer
    third = launch(["log-px", str(run), "--dataset", "mnist", "--data-dir", str(data), "--limit", "8"],
                   tmp_path / "c.log")
    assert third.wait(timeout=120) == 0, (tmp_path / "c.log").read_text()


LOCK_PROBE = """
import fcntl, sys
with open(sys.argv[1], "a+") as f:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        sys.exit("held: " + f.read())
"""


def lock_from_another_process(run: Path) -> subprocess.CompletedProcess:
    """Try the run's lock from a bare Python process (no torch to import)."""
    return subprocess.run([sys.executable, "-c", LOCK_PROBE, str(run / LOCK_NAME)], capture_output=True, text=True)


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with run_lock(tmp_path, "evaluate"):
        with run_lock(tmp_path, "score"):  # evaluate → score in one process
            pass
        held = lock_from_another_process(tmp_path)  # still held by the outer block
        assert held.returncode != 0 and f"held: pid {os.getpid()} on" in held.stderr and "evaluate" in held.stderr
    assert lock_from_another_process(tmp_path).returncode == 0  # released when the outer block ended


def test_a_run_that_cannot_be_written_is_read_without_a_lock(tmp_path, monkeypatch):
    """A read-only run (someone else's results) can still be read: no lock file needed."""
    import errno

    import vaeood.infra.runlock as runlock

    def read_only(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(runlock.os, "open", read_only)
    with run_lock(tmp_path, "score"):
        pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    """A run directory from elsewhere must not make vaeood truncate another file."""
    from vaeood.infra.atomic import WriteError

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(target)
    with pytest.raises(WriteError, match="is a symbolic link"):
        with run_lock(run, "train"):
            pass
    assert target.read_text() == "keep me\n"


def test_a_lock_file_of_another_user_still_locks(tmp_path, monkeypatch):
    """Opened read-only when it cannot be written: flock works on it all the same."""
    import errno

    import vaeood.infra.runlock as runlock

    real_open = os.open

    def not_writable(path, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    (tmp_path / LOCK_NAME).write_text("")
    monkeypatch.setattr(runlock.os, "open", not_writable)
    with run_lock(tmp_path, "score"):
        assert lock_from_another_process(tmp_path).returncode != 0
