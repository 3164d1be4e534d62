"""Every fenced code block of the README runs here, on tiny data, so the entry page stays true.

Shell blocks: each ``vaeood ...`` line runs through :func:`vaeood.cli.main` in order, in a
folder of its own (tiny stand-in datasets from :mod:`tinydata` in ``$VAEOOD_DATA``, a
folder ``my_images/`` and a folder ``new_images/``). Training lines get :data:`TINY` added
and :data:`SMALLER` swapped in, so they take seconds; nothing else is changed.
``pip install`` and ``make`` lines are checked against ``pyproject.toml``,
``constraints.txt`` and the ``Makefile`` instead of run. Python blocks are executed, each
with a check of what it printed or made; a Python block written as a session (``>>>``)
runs as a doctest, its shown outputs the check, unchanged (it needs no stand-in data). A
block or a line this file does not know fails
:func:`test_every_readme_block_is_one_this_file_runs`."""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinydata import blobs, strokes, write_fig2a_data
from vaeood.cli import main

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)

#: added to every ``vaeood fit``/``vaeood train`` line: a model that trains in a second
TINY = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4"]
#: the tiny Fashion-MNIST stand-in has 256 training images, so the hold-out starts earlier
SMALLER = {"--data.limit=30000": "--data.limit=200"}
INSTALL_LINES = {"pip install .", "pip install -c constraints.txt ."}
MAKE_LINES = {"make demo", "make test"}


def blocks() -> list[tuple[str, str]]:
    return FENCE.findall(README.read_text(encoding="utf-8"))


def commands(code: str) -> list[str]:
    """A shell block's lines without their comments and blank lines."""
    return [line.split(" #")[0].strip() for line in code.splitlines() if line.split(" #")[0].strip()]


def sh_blocks_with_vaeood() -> list[str]:
    return [code for lang, code in blocks() if lang == "sh" and any(c.startswith("vaeood ") for c in commands(code))]


def python_blocks() -> list[str]:
    return [code for lang, code in blocks() if lang == "python" and not is_doctest(code)]


def doctest_blocks() -> list[str]:
    return [code for lang, code in blocks() if lang == "python" and is_doctest(code)]


def is_doctest(code: str) -> bool:
    """A Python block written as a session (``>>>`` prompts and the output they print)."""
    return code.lstrip().startswith(">>> ")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_fig2a_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def home(tmp_path, data, monkeypatch):
    """A folder to run a block in: the datasets in $VAEOOD_DATA, 250 training-like PNGs in
    my_images/ and 5 in-distribution + 5 OOD PNGs in new_images/."""
    monkeypatch.setenv("VAEOOD_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    for folder, images in (("my_images", blobs(250, 5)), ("new_images", [*blobs(5, 1), *strokes(5, 3)])):
        (tmp_path / folder).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(tmp_path / folder / f"{i:03d}.png")
    return tmp_path


@pytest.fixture
def detectors_restored():
    """A block that registers a detector leaves the registry as it found it."""
    from vaeood.detectors import DETECTORS

    before = dict(DETECTORS._items)
    yield
    DETECTORS._items.clear()
    DETECTORS._items.update(before)


def test_every_readme_block_is_one_this_file_runs():
    found = blocks()
    assert len(found) >= 5, "the README's code blocks were not found"
    for lang, code in found:
        assert lang in ("sh", "python"), f"a README block in {lang!r}: tests/test_readme.py runs sh and python only"
        if lang == "sh":
            for line in commands(code):
                assert line.startswith("vaeood ") or line in INSTALL_LINES | MAKE_LINES, \
                    f"README line {line!r}: tests/test_readme.py neither runs nor checks it"
        elif is_doctest(code):  # its printed outputs are its check
            examples = doctest.DocTestParser().get_examples(code)
            assert any(example.want for example in examples), f"a README session that shows no output:\n{code}"
        else:
            assert sum(marker in code for marker in PYTHON_CHECKS) == 1, \
                f"a README Python block with no check in tests/test_readme.py:\n{code}"


def test_the_install_lines_match_pyproject_and_constraints():
    lines = {c for _, code in blocks() for c in commands(code) if c.startswith("pip ")}
    assert lines == INSTALL_LINES
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'vaeood = "vaeood.cli:command"' in pyproject and 'requires-python = ">=3.10"' in pyproject
    assert re.search(r"^torch==2\.13\.0$", (ROOT / "constraints.txt").read_text(), re.M)
    assert "pip install -qq -c constraints.txt -e '.[test]'" in (ROOT / "Makefile").read_text()


def test_make_demo_and_make_test_set_up_then_run_the_demo_and_the_tests():
    assert {c for _, code in blocks() for c in commands(code) if c.startswith("make ")} == MAKE_LINES
    makefile = (ROOT / "Makefile").read_text()
    recipe = {name: body for name, body in re.findall(r"^(demo|test): \$\(INSTALLED\)\n((?:\t.*\n)+)", makefile, re.M)}
    assert set(recipe) == {"demo", "test"}, "make demo and make test must both install first ($(INSTALLED))"
    assert "vaeood reproduce fig2a --preset quick" in recipe["demo"]
    assert "vaeood reproduce ood-suite --preset demo" in recipe["demo"]
    assert "-m pytest" in recipe["test"]
    assert "$(PYTHON) -m venv $(VENV)" in makefile


@pytest.mark.parametrize("index", range(len(sh_blocks_with_vaeood())))
def test_the_readme_shell_block_runs(index, home, capsys):
    for line in commands(sh_blocks_with_vaeood()[index]):
        args = [SMALLER.get(a, a) for a in shlex.split(line)[1:]]
        if args[0] in ("fit", "train"):
            args += TINY
        assert main(args) == 0, f"README line {line!r} failed:\n{capsys.readouterr().err}"
        if args[0] == "detect":
            out = Path(args[args.index("--out") + 1])
            rows = out.read_text().splitlines()
            assert rows[0] == "file,score,p_value,flagged" and len(rows) == 11
            assert out.with_suffix(".html").is_file() and out.with_suffix(".summary.json").is_file()


def _check_python_api(home, printed):
    assert "MNIST bits/dim:" in printed and "AUROC:" in printed and "mean ‖μ_z‖ on MNIST:" in printed
    assert (home / "runs" / "api-example" / "checkpoint.pt").exists()


def _check_detector(home, printed):
    import vaeood

    assert main(["train", "runs/fm", "--model.likelihood=dlogistic", "--data.limit=200", *TINY]) == 0
    result = vaeood.evaluate("runs/fm", "fashion_mnist", ["mnist"], detectors=["recon_error"], limit=50)
    assert 0 <= result["results"]["recon_error"]["mnist"]["auroc"] <= 1
    with np.load(home / "runs" / "fm" / "detector_scores" / "recon_error.npz") as saved:
        assert all(np.isfinite(saved[k]).all() for k in saved.files)


#: a string that picks out each README Python block → what checks it after it ran
PYTHON_CHECKS = {"vaeood.train(config": _check_python_api, "@DETECTORS.register": _check_detector}


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_the_readme_python_block_runs(index, home, capsys, detectors_restored):
    code = python_blocks()[index]
    (check,) = [check for marker, check in PYTHON_CHECKS.items() if marker in code]
    exec(compile(code, "README.md", "exec"), {})
    check(home, capsys.readouterr().out)


@pytest.mark.slow  # trains a VAE for one epoch on 240 images and calibrates the default detector
@pytest.mark.parametrize("index", range(len(doctest_blocks())))
def test_the_readme_session_prints_what_it_shows(index, home):
    """A README block written as a Python session runs as a doctest: each line's output must
    be the one shown."""
    test = doctest.DocTestParser().get_doctest(doctest_blocks()[index], {}, f"README session {index}", str(README), 0)
    report: list[str] = []
    result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=report.append)
    assert result.attempted and not result.failed, "".join(report)
