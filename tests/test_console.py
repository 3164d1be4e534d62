"""What the command shows a person: one line per stage by default, the details behind -v,
warnings only with -q, each distinct warning once, and progress bars only on a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from tinydata import write_fig2a_data
from vaeood.infra import progress
from vaeood.cli import main
from vaeood.infra.console import OnceFilter, console

TINY = ["--train.epochs=2", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]
DETAIL = ("reusing ", "computed ", "loaded ", "epoch ")


@pytest.fixture()
def subset_data(tmp_path, monkeypatch):
    """The fig2a stand-ins with MNIST's test set only as a subset file (as the CIFAR-10
    subset on the shared data), which warns on every load."""
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    data = write_fig2a_data(tmp_path / "data")
    (data / "mnist_test.npz").rename(data / "mnist_test_first128.npz")
    return data


def _evaluate(run, data, out, *options):
    return main([*options, "evaluate", str(run), "--in", "fashion_mnist", "--ood", "mnist", "--detectors", "nll",
                 "--data-dir", str(data), "--out", str(out)])


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_default_output_is_a_few_lines_and_each_warning_once(tmp_path, subset_data, capsys, caplog):
    run = tmp_path / "run"
    assert main(["train", str(run), "--data-dir", str(subset_data), *TINY]) == 0
    assert _evaluate(run, subset_data, tmp_path / "eval") == 0
    printed = capsys.readouterr()
    err = printed.err.splitlines()
    # the library warned about the subset at every load; the command showed it once
    assert sum("a subset" in r.getMessage() for r in caplog.records) >= 2
    subset = [line for line in err if "a subset" in line]
    expected = f"warning: mnist/test: using {subset_data / 'mnist_test_first128.npz'}"
    assert len(subset) == 1 and subset[0].startswith(expected)
    assert not [line for line in err if any(word in line for word in DETAIL)]  # per-item detail: -v only
    assert any(line.startswith(f"trained {run}: 2 epochs on 256 images of fashion_mnist/train") for line in err)
    assert not any(line.startswith(("INFO", "DEBUG", "WARNING")) for line in err)  # no logger prefixes
    assert "it/s" not in printed.err  # no progress bar off a terminal
    assert len(err) + len(printed.out.splitlines()) <= 12, printed


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_verbose_shows_the_details_and_quiet_only_warnings(tmp_path, subset_data, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", str(run), "--data-dir", str(subset_data), *TINY]) == 0
    assert capsys.readouterr().err == ""
    assert _evaluate(run, subset_data, tmp_path / "eval", "-q") == 0
    err = capsys.readouterr().err.splitlines()
    assert err and all(line.startswith("warning: ") for line in err)
    assert sum("a subset" in line for line in err) == 1

    assert _evaluate(run, subset_data, tmp_path / "eval", "-v") == 0
    err = capsys.readouterr().err
    assert "debug vaeood.features.core: reusing " in err
    assert "debug vaeood.data.load: loaded fashion_mnist/test" in err
    assert err.count("a subset") == 1  # once each, also with -v; the repeats are counted
    assert "repeats of the warnings above were not shown" in err


def test_verbose_and_quiet_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["-v", "-q", "train", "run"])
    assert stop.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_the_command_leaves_logging_and_bars_as_it_found_them(tmp_path, subset_data):
    root, package = logging.getLogger(), logging.getLogger("vaeood")
    handlers, level = list(root.handlers), package.level
    assert main(["-q", "train", str(tmp_path / "run"), "--data-dir", str(subset_data), *TINY]) == 0
    assert root.handlers == handlers and package.level == level and progress.shown(True)


def test_once_filter_passes_each_distinct_warning_once():
    stream = io.StringIO()
    log = logging.getLogger("vaeood.test_console")
    with console("default", stream=stream) as once:
        for _ in range(3):
            log.warning("the same %s", "thing")
        log.warning("another thing")
        logging.getLogger("vaeood.elsewhere").warning("the same thing")  # another logger: its own
        log.info("stage")
        log.info("stage")  # information is not deduplicated
        log.debug("detail")  # below the default level
    assert stream.getvalue().splitlines() == ["warning: the same thing", "warning: another thing",
                                              "warning: the same thing", "stage", "stage"]
    assert isinstance(once, OnceFilter) and once.repeats == 2


def test_bars_only_on_a_terminal_and_never_when_silenced(monkeypatch):
    assert progress.bar(range(3)).disable  # pytest's stderr is not a terminal
    assert not progress.bar(range(3), enabled=True).disable
    assert progress.bar(range(3), enabled=False).disable
    with progress.silenced():
        assert progress.bar(range(3), enabled=True).disable and not progress.shown(True)
    with console("quiet", stream=io.StringIO()):
        assert not progress.shown(True)
