"""Every config value and command-line number is checked where it is parsed, and no
traceback reaches a user for bad input or an interrupt (issue 10, items 4-6).

- Why-list cases 4-6: ``--train.epochs=0/-1``, ``--data.limit=-5``, ``score --limit
  -5/0`` and ``--model.latent_dim=0`` exited 0 with a wrong result; each is refused,
  naming the key, the value and the allowed range;
- the "unclear errors" list: zero or negative sizes and counts, unknown devices, a
  broken symlink among the dataset files, disk full inside ``torch.save``, SIGINT, an
  unknown name, an OOD set that is the in-distribution set;
- a property test gives every config field random values of its type: each is either
  refused by a ConfigError naming the field, or kept exactly as given.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import math
import os
import signal
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_processes import launch, wait_for
from tinydata import write_fig2a_data
from vaeood.training import checkpoint as checkpoint_module
from vaeood.infra.atomic import atomic_write
from vaeood.cli import main
from vaeood.training.config import OPTION_RULES, Config, ConfigError, _allowed, _field_types, field_rule
from vaeood.inference.estimators import elbo
from vaeood.models import build_model
from vaeood.training.train import train

TINY = ["--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    data = write_fig2a_data(root / "data")
    config = Config().override({"model.base_channels": "4", "model.latent_dim": "4", "train.epochs": "1"})
    return train(config, root / "run", data_dir=str(data)), data


def cli_error(capsys, argv) -> str:
    """Run the CLI; expect status 2, one ``vaeood: error:`` line and no traceback."""
    with pytest.raises(SystemExit) as exit_:
        sys.exit(main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "vaeood: error:" in err and "Traceback" not in err
    return err


# ===================================================== the Why list: wrong results with exit 0
@pytest.mark.parametrize("value", ["0", "-1"])
def test_why_4_zero_or_negative_epochs_are_refused(tmp_path, capsys, value):
    err = cli_error(capsys, ["train", str(tmp_path / "run"), f"--train.epochs={value}"])
    assert f"train.epochs = {value}: must be an integer >= 1" in err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing claimed


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_why_5_a_negative_or_zero_limit_is_refused(tmp_path, trained, capsys):
    err = cli_error(capsys, ["train", str(tmp_path / "run"), "--data.limit=-5"])
    assert "data.limit = -5: must be an integer >= 1" in err
    for limit in ("-5", "0"):
        err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--limit", limit])
        assert f"--limit: got '{limit}'; must be an integer >= 1" in err
    assert not (trained[0] / "scores").exists()
    from vaeood.evaluation.log_px import log_px  # the Python API refuses them too, naming the argument

    for limit in (-5, 0, 2.5):
        with pytest.raises(ConfigError, match="limit must be"):
            log_px(trained[0], "mnist", "test", data_dir=str(trained[1]), limit=limit)
    assert not list((trained[0] / "features").glob("mnist*"))


def test_why_6_a_model_without_latent_variable_is_refused(tmp_path, capsys):
    err = cli_error(capsys, ["train", str(tmp_path / "run"), "--model.latent_dim=0"])
    assert "model.latent_dim = 0: must be an integer >= 1" in err


# ============================================================ unclear errors, now clear
@pytest.mark.parametrize("override, message", [
    ("--train.batch_size=0", "train.batch_size = 0: must be an integer >= 1"),
    ("--train.lr=0", "train.lr = 0.0: must be a finite number > 0"),
    ("--train.lr=-1e-3", "train.lr = -0.001: must be a finite number > 0"),
    ("--train.lr=1e999", "train.lr = inf: must be a finite number > 0"),
    ("--model.base_channels=0", "model.base_channels = 0: must be an integer >= 1"),
    ("--model.hidden_dim=-3", "model.hidden_dim = -3: must be an integer >= 1"),
    ("--train.max_nonfinite_steps=-1", "train.max_nonfinite_steps = -1: must be an integer >= 1"),
    ("--train.device=gpu", "train.device = 'gpu': must be a device torch knows"),
    ("--train.device=meta", "train.device = 'meta': must be a device torch knows that vaeood runs on"),
    ("--train.seed=-1", "train.seed = -1: must be an integer >= 0 and <= 4294967295"),
    ("--train.precision=fp16", "train.precision = 'fp16': must be one of fp32, bf16"),
    ("--model.arch=cnn", "model.arch = 'cnn': must be one of conv, hvae, mlp"),
    # a name with a '/' is a folder of images (tests/test_image_folder_dataset.py); anything else is a word
    ("--data.name=my data", "data.name = 'my data': must be a plain word"),
    ("--data.conform=crop", "data.conform = 'crop': must be one of pad, resize"),
])
def test_bad_config_values_name_key_value_and_range(tmp_path, capsys, override, message):
    assert message in cli_error(capsys, ["train", str(tmp_path / "run"), override])


@pytest.mark.parametrize("overrides, message", [
    (["--model.likelihood=dlogistic", '--model.likelihood_options={"n_mix": 0}'],
     "model.likelihood_options.n_mix = 0: must be an integer >= 1"),
    (["--train.objective=iwae", '--train.objective_options={"k": 0}'],
     "train.objective_options.k = 0: must be an integer >= 1"),
    (["--train.objective=rws", '--train.objective_options={"k": 2.5}'],
     "train.objective_options.k: expected int, got float 2.5"),
    (['--model.likelihood_options={"n_mix": 3}'],
     "model.likelihood_options: likelihood 'bernoulli' takes no option 'n_mix'"),
])
def test_plugin_options_are_checked_by_name_type_and_range(tmp_path, capsys, overrides, message):
    assert message in cli_error(capsys, ["train", str(tmp_path / "run"), *overrides])


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "--k: got '0'; must be an integer >= 1"),
    (["--refine-steps", "-1"], "--refine-steps: got '-1'; must be an integer >= 0"),
    (["--batch-size", "0"], "--batch-size: got '0'; must be an integer >= 1"),
    (["--device", "tpu"], "--device: got 'tpu'; must be a device torch knows"),
    (["--estimator", "nope"], "unknown estimator 'nope'"),
])
def test_bad_scoring_numbers_are_refused_where_parsed(trained, capsys, args, message):
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(trained[1]), *args])
    assert message in err


def test_command_line_numbers_share_the_rules_of_the_config():
    """One declaration per range: the CLI asks the config field (or option table)."""
    assert field_rule("data.limit")[0] is dataclasses.fields(Config().data)[3].metadata["rule"]
    assert OPTION_RULES["k"].problem(0) and not OPTION_RULES["k"].problem(1)
    assert OPTION_RULES["refine_steps"].problem(-1) and not OPTION_RULES["refine_steps"].problem(0)


def test_a_broken_symlink_among_the_dataset_files_is_named(tmp_path, trained, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist_test.npz").symlink_to(tmp_path / "gone.npz")
    err = cli_error(capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(data)])
    assert f"{data / 'mnist_test.npz'} is a broken symbolic link" in err and "gone.npz" in err
    # a good copy in a later search folder is not used behind the user's back either
    os.environ["VAEOOD_DATA"] = str(trained[1])
    try:
        assert "broken symbolic link" in cli_error(
            capsys, ["log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(data)])
    finally:
        del os.environ["VAEOOD_DATA"]


class FillsUp(io.RawIOBase):
    """A file on a disk that fills after ``room`` bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)


def test_disk_full_inside_torch_save_gets_the_documented_message(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError of its inline_container.cc; the
    user gets the documented message, and the previous checkpoint survives byte for byte."""
    data = write_fig2a_data(tmp_path / "data")
    calls = []

    def full_on_second_save(path, write):
        calls.append(path)
        return atomic_write(path, (lambda f: write(FillsUp(f, 1000))) if len(calls) == 2 else write)

    monkeypatch.setattr(checkpoint_module, "atomic_write", full_on_second_save)
    run = tmp_path / "run"
    err = cli_error(capsys, ["train", str(run), "--data-dir", str(data), *TINY, "--train.epochs=2"])
    assert f"cannot write {run / 'checkpoint.pt'}: no space left on device" in err
    assert "the previous file is unchanged" in err and "inline_container" not in err
    assert checkpoint_module.load_checkpoint(run)["epoch"] == 1


@pytest.mark.slow  # e2e: several processes
@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_sigint_and_sigterm_end_with_one_line_and_their_status(tmp_path, trained, sig, status, word):
    log = tmp_path / "score.log"
    # -v: the "loaded" line it waits for is detail (DEBUG)
    proc = launch(["-v", "log-px", str(trained[0]), "--dataset", "mnist", "--data-dir", str(trained[1]),
                   "--estimator", "iwae", "--k", "20000", "--batch-size", "8"], log)
    wait_for(lambda: "loaded mnist/test" in log.read_text(), proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == status
    out = log.read_text()
    assert "Traceback" not in out and out.splitlines()[-1].startswith(f"vaeood: {word}")
    assert not list((trained[0] / "scores").glob("*k20000*"))


def test_an_internal_error_shows_its_traceback_and_says_it_is_a_bug(tmp_path, capsys, monkeypatch):
    import vaeood.cli as cli

    monkeypatch.setattr(cli, "train", lambda *a, **k: 1 / 0)
    assert main(["train", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert "internal error: this is a bug in vaeood" in err and "report it" in err


def test_a_config_changed_after_it_was_made_is_checked_again(tmp_path):
    config = Config()
    config.train.epochs = 0
    with pytest.raises(ConfigError, match="train.epochs = 0: must be an integer >= 1"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_out_of_memory_is_one_line_not_a_bug_report(tmp_path, capsys, monkeypatch):
    import vaeood.cli as cli

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 40000000000000 bytes.")

    monkeypatch.setattr(cli, "train", no_memory)
    err = cli_error(capsys, ["train", str(tmp_path / "run")])
    assert "out of memory" in err and "40000000000000 bytes" in err and "bug" not in err


def test_a_cuda_device_the_machine_lacks_is_refused(monkeypatch):
    from vaeood.training.run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:3' requested but this machine has 1 CUDA device\(s\)"):
        resolve_device("cuda:3")


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_an_ood_set_that_is_the_in_distribution_set_is_warned_about(trained, tmp_path, capsys, caplog):
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained[0]), "--in", "mnist", "--ood", "mnist", "--ood", "fashion_mnist",
                 "--data-dir", str(trained[1]), "--limit", "16", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    same = [w for w in metrics["warnings"] if "itself" in w]
    assert len(same) == 1 and "'mnist' is the in-distribution set 'mnist' itself" in same[0]
    assert "say nothing about detecting OOD images" in caplog.text
    # 16 images a set: each AUROC is reported with its bootstrap interval, and warned about
    small = [w for w in metrics["warnings"] if "fewer than 30" in w]
    assert len(small) == 2 * len(metrics["results"])
    assert all("rests on 16 in-distribution and 16 OOD" in w for w in small)
    m = metrics["results"]["nll"]["fashion_mnist"]
    lo, hi = m["auroc_interval_95"]
    assert lo <= m["auroc"] <= hi and hi > lo


# ============================================================ every field, random values
FIELDS = [(section, f.name, _field_types(cls)[f.name])
          for section, cls in _field_types(Config).items() for f in dataclasses.fields(cls)]
OPTION_NAMES = ["k", "n_mix", "samples", "rao_blackwell", "bogus"]


def values_of(ftype) -> st.SearchStrategy:
    """Random values of the field's own type (the type check is tested elsewhere)."""
    allowed = _allowed(ftype)
    options = []
    if type(None) in allowed:
        options.append(st.none())
    if bool in allowed:
        options.append(st.booleans())
    if int in allowed:
        options.append(st.integers(-2**40, 2**40) | st.sampled_from([-1, 0, 1, 2, 2**32 - 1, 2**32]))
    if float in allowed:
        options.append(st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-300]))
    if str in allowed:
        options.append(st.text(max_size=12) | st.sampled_from(
            ["", "cpu", "cuda:0", "mps", "conv", "mlp", "dlogistic", "iwae", "bf16", "default", "mnist", "a/b"]))
    if dict in allowed:
        options.append(st.dictionaries(st.sampled_from(OPTION_NAMES),
                                       st.integers(-2, 6) | st.booleans() | st.floats(-1, 9), max_size=2))
    return st.one_of(options)


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), values_of(f[2]))),
       st.sampled_from(["bernoulli", "dlogistic"]), st.sampled_from(["elbo", "iwae", "msc"]))
def test_every_field_refuses_by_name_or_keeps_what_it_was_given(field_value, likelihood, objective):
    (section, name, ftype), value = field_value
    raw = Config().to_dict()
    raw["model"]["likelihood"], raw["train"]["objective"] = likelihood, objective
    raw[section][name] = value
    try:
        config = Config.from_dict(raw)
    except ConfigError as exc:
        assert f"{section}.{name}" in str(exc)
        return
    kept = getattr(getattr(config, section), name)
    assert kept == value and type(kept) is (float if float in _allowed(ftype) and value is not None else type(value))
    if isinstance(value, float):
        assert math.isfinite(value)
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # config.json round trip
    # and the command line reads it back the same (where null is allowed, 'none'/'null' on it mean null)
    if not isinstance(value, dict) and not (isinstance(value, str) and type(None) in _allowed(ftype) and
                                            value.lower() in ("none", "null")):
        text = value if isinstance(value, str) else json.dumps(value)
        assert getattr(getattr(config.override({f"{section}.{name}": text}), section), name) == value


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["conv", "mlp"]), st.integers(1, 6), st.integers(1, 4), st.integers(1, 8),
       st.sampled_from(["bernoulli", "categorical", "dlogistic"]), st.integers(1, 3))
def test_accepted_model_settings_build_the_model_they_describe(arch, latent, width, hidden, likelihood, n_mix):
    options = {"n_mix": n_mix} if likelihood == "dlogistic" else {}
    config = Config.from_dict({"model": {"arch": arch, "latent_dim": latent, "base_channels": width,
                                         "hidden_dim": hidden, "likelihood": likelihood,
                                         "likelihood_options": options}})
    model = build_model(config.model, (1, 28, 28))
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    mu, _ = model.posterior(x)
    assert mu.shape == (2, latent)
    assert torch.isfinite(elbo(model, x, generator=torch.Generator().manual_seed(0))["log_px_nats"]).all()
