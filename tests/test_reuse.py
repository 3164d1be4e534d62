"""The reuse rule of every reproduction (docs/usage.md, "Running a reproduction again"):
a model in OUT is reused only if what made it equals what the call asks for; otherwise the
call is refused, naming the first difference, until ``--overwrite`` retrains what differs.

The ood-suite calls run the smoke preset cut to one family, one seed and the ``nll``
detector (one model to train), on tiny stand-in data."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys

import pytest

from cli_processes import SRC, wait_for
from tinydata import blobs, write_fig2a_data, write_npz
from vaeood.cli import main
from vaeood.experiments import EXPERIMENTS
from vaeood.experiments.fig2 import KERAS_BLOG, Preset
from vaeood.experiments.reuse import StaleRunError, same_numbers
from vaeood.training.checkpoint import load_checkpoint

SUITE = EXPERIMENTS.get("ood-suite")
#: the suite's presets cut to one model each (also run in a subprocess by the kill test)
CUT = "dict(seeds=(0,), detectors=('nll',), families=('fashion_mnist',))"
ARGS = ["--data.limit=120", "--model.base_channels=4", "--train.epochs=2"]


def cut_presets(monkeypatch) -> None:
    for name in ("smoke", "quick"):
        monkeypatch.setitem(SUITE.presets, name, dataclasses.replace(SUITE.presets[name], **eval(CUT)))


def argv(out, data, *extra: str) -> list[str]:
    return ["-q", "reproduce", "ood-suite", "--preset", "smoke", "--out", str(out), "--data-dir", str(data), *ARGS,
            *extra]


def suite(out, data, *extra: str) -> int:
    return main(argv(out, data, *extra))


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One finished smoke run into ``out`` (relative: the kill test repeats its command line
    elsewhere), and the bytes of its metrics.json and report.md."""
    root = tmp_path_factory.mktemp("reuse")
    data = write_fig2a_data(root / "data", n_train=200, n_test=60)
    mp = pytest.MonkeyPatch()
    mp.delenv("VAEOOD_DATA", raising=False)
    mp.chdir(root)
    cut_presets(mp)
    try:
        assert suite("out", data) == 0
    finally:
        mp.undo()
    return root, data, (root / "out" / "metrics.json").read_bytes(), (root / "out" / "report.md").read_text()


@pytest.fixture
def out(first, tmp_path, monkeypatch):
    """A copy of the finished run, which a test may change."""
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    cut_presets(monkeypatch)
    shutil.copytree(first[0] / "out", tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.slow  # trains the first run's model
def test_the_report_lists_every_model_with_its_config_digest_and_this_calls_part(first):
    metrics, report = json.loads(first[2]), first[3]
    runs = metrics["runs_used"]
    assert list(runs) == ["runs/fashion_mnist-seed0/main"]
    assert runs["runs/fashion_mnist-seed0/main"]["this_call"] == "trained"
    digest = runs["runs/fashion_mnist-seed0/main"]["config_sha256"]
    assert len(digest) == 64 and f"| runs/fashion_mnist-seed0/main | `{digest[:12]}` | trained |" in report


@pytest.mark.slow  # evaluates the first run again
def test_a_rerun_with_nothing_changed_reuses_everything_and_keeps_metrics_bit_identical(first, out):
    checkpoint = out / "runs" / "fashion_mnist-seed0" / "main" / "checkpoint.pt"
    written = checkpoint.stat().st_mtime_ns
    assert suite(out, first[1]) == 0
    assert (out / "metrics.json").read_bytes() == first[2]
    assert checkpoint.stat().st_mtime_ns == written  # reused, not trained again


@pytest.mark.slow
@pytest.mark.parametrize("change, first_difference", [
    (["--model.latent_dim=4"], "model.latent_dim 16 → 4"),
    (["--train.epochs=3"], "train.epochs 2 → 3"),
])
def test_a_changed_setting_is_refused_naming_it_and_the_ways_out(first, out, capsys, change, first_difference):
    assert suite(out, first[1], *change) == 2
    err = capsys.readouterr().err
    assert "fashion_mnist-seed0/main" in err and first_difference in err
    assert "--out" in err and "--overwrite" in err
    assert (out / "metrics.json").read_bytes() == first[2]  # nothing was written


@pytest.mark.slow  # retrains one model
def test_overwrite_retrains_what_changed_and_says_why(first, out, capsys):
    assert suite(out, first[1], "--model.latent_dim=4", "--overwrite") == 0
    assert "retraining runs/fashion_mnist-seed0/main: model.latent_dim 16 → 4" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["families"]["fashion_mnist"]["seeds"]["0"]["latent_dim"] == 4
    assert metrics["runs_used"]["runs/fashion_mnist-seed0/main"]["this_call"] == "trained"


@pytest.mark.slow
def test_a_changed_preset_is_refused(first, out, capsys):
    assert main(["-q", "reproduce", "ood-suite", "--preset", "quick", "--out", str(out), "--data-dir",
                 str(first[1]), *ARGS]) == 2
    assert "preset smoke → quick" in capsys.readouterr().err


@pytest.mark.slow
def test_a_changed_data_file_is_refused(first, out, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(first[1], data)
    write_npz(data, "fashion_mnist", "train", blobs(200, 7))  # other images, same file name
    assert suite(out, data) == 2
    err = capsys.readouterr().err
    assert "fashion_mnist_train.npz" in err and "--overwrite" in err


@pytest.mark.slow
def test_an_override_the_experiment_sets_itself_is_refused_by_name(first, out, capsys):
    assert suite(out, first[1], "--train.seed=3") == 2
    err = capsys.readouterr().err
    assert "train.seed" in err and "ood-suite" in err


def test_reproduce_help_lists_the_override_syntax_and_the_keys_each_experiment_honours(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--SECTION.KEY=VALUE" in text and "--model.latent_dim=4" in text and "--overwrite" in text
    assert "model.latent_dim" in text and "train.epochs" in text
    assert "ood-suite: every key but data.name, train.seed" in text


@pytest.mark.slow  # trains a fig2a variant twice over
def test_fig2a_with_another_epoch_count_is_refused(tmp_path):
    data = write_fig2a_data(tmp_path / "data", n_train=128, n_test=32)
    exp = dataclasses.replace(EXPERIMENTS.get("fig2a"), models={"keras_blog": {**KERAS_BLOG, "model.hidden_dim": "8"}},
                              presets={"tiny": Preset({"data.name": "fashion_mnist", "train.epochs": "1"},
                                                      seeds=(0,), n_boot=50)})
    exp.run(tmp_path / "out", "tiny", data_dir=str(data), variance=False)
    longer = dataclasses.replace(exp, presets={"tiny": Preset({"data.name": "fashion_mnist", "train.epochs": "2"},
                                                              seeds=(0,), n_boot=50)})
    with pytest.raises(StaleRunError, match="train.epochs 1 → 2"):
        longer.run(tmp_path / "out", "tiny", data_dir=str(data), variance=False)


KILLED = f"""
import dataclasses, sys
from vaeood.cli import main
from vaeood.experiments import EXPERIMENTS
suite = EXPERIMENTS.get("ood-suite")
suite.presets["smoke"] = dataclasses.replace(suite.presets["smoke"], **{CUT})
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # three reproductions in fresh processes: one whole, one killed, then again
def test_kill_9_then_the_same_command_gives_the_metrics_of_an_uninterrupted_run(first, tmp_path):
    # every call in a fresh process with the same environment, so that nothing this test process has done
    # (threads, caches of the tests before) can make the uninterrupted and the resumed run differ
    command = [sys.executable, "-c", KILLED, *argv("out", first[1])]  # the first run's command line, elsewhere
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    for d in (whole_dir, cut_dir):
        d.mkdir()
    assert subprocess.run(command, cwd=whole_dir, env=env, capture_output=True, timeout=300).returncode == 0
    killed = subprocess.Popen(command, cwd=cut_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = cut_dir / "out" / "runs" / "fashion_mnist-seed0" / "main"
    wait_for(lambda: (run / "metrics.jsonl").exists(), killed)  # its first epoch is saved
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert not (cut_dir / "out" / "metrics.json").exists()
    part = "resumed" if load_checkpoint(run)["epoch"] < 2 else "reused"  # killed in training, or after it
    assert subprocess.run(command, cwd=cut_dir, env=env, capture_output=True, timeout=300).returncode == 0
    whole = json.loads((whole_dir / "out" / "metrics.json").read_text())
    resumed = json.loads((cut_dir / "out" / "metrics.json").read_text())
    assert resumed["runs_used"]["runs/fashion_mnist-seed0/main"]["this_call"] == part
    assert same_numbers(whole, resumed) and resumed["command"] == whole["command"]
