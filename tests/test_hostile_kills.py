"""`vaeood fit` killed at each of its stages (issue 34): SIGKILLed while it decodes its folder
into RUN/cache/, between two epochs while writing a checkpoint, and while writing its
calibration; stopped (Ctrl-C) between its last checkpoint and that epoch's line of metrics.
A fit again gives the model and the calibration of an uninterrupted fit, bit for bit, or a
refusal that says how to finish the fit (--resume) and what to delete to start afresh; no
temporary file of a killed write is left behind. Tiny data written by the test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cli_processes import run_killed
from tinydata import blobs
from vaeood.cli import main
from vaeood.training import train

SMALL = ["--detector", "nll", "--model.base_channels=4", "--model.latent_dim=4", "--train.epochs=2",
         "--train.batch_size=64"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, one_thread):
    """A folder of 200 grey 16×16 blobs, and an uninterrupted fit on it."""
    root = tmp_path_factory.mktemp("kills")
    photos = root / "photos"
    photos.mkdir()
    for i, img in enumerate(blobs(200, 0, size=16)):
        Image.fromarray(img).save(photos / f"{i:03d}.png")
    assert main(["fit", f"{photos}/", "--out", str(root / "clean"), *SMALL]) == 0
    return {"photos": photos, "out": root / "clean"}


def _fit(clean, out, *extra) -> list[str]:
    return ["fit", f"{clean['photos']}/", "--out", str(out), *SMALL, *extra]


def _assert_as_clean(out, clean) -> None:
    """The weights, the metrics (without timings) and the calibration scores of the clean fit; no
    temporary file left."""
    a, b = torch.load(clean["out"] / "checkpoint.pt"), torch.load(out / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines = [[{k: v for k, v in json.loads(line).items() if k not in ("seconds", "images_per_s")}
              for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (clean["out"], out)]
    assert len(lines[0]) == 2 and lines[0] == lines[1]
    scores = [np.load(run / "calibration" / "nll.npz")["scores"] for run in (clean["out"], out)]
    assert np.array_equal(*scores)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow  # a fit process killed
def test_a_fit_killed_while_decoding_its_folder_fits_again_to_the_clean_model(clean, tmp_path):
    out = tmp_path / "model"
    run_killed(_fit(clean, out), tmp_path / "killed.log", "*.npy")  # the decoded array, not yet in place
    assert [p.name.endswith(".tmp") for p in (out / "cache").glob("*.npy*")] == [True]
    assert not (out / "checkpoint.pt").exists()
    assert main(_fit(clean, out)) == 0
    _assert_as_clean(out, clean)  # and the killed write's copy of the folder removed


@pytest.mark.slow  # two fit processes killed
def test_a_fit_killed_at_each_stage_is_refused_without_resume_and_finished_with_it(clean, tmp_path, capsys,
                                                                                  monkeypatch):
    out = tmp_path / "model"
    stopped = f"{out} holds a fit that was stopped after %s: run the same command with --resume to finish it, " \
              f"or delete {out} to start afresh"

    def refused(after: str) -> None:
        assert main(_fit(clean, out)) == 2
        err = capsys.readouterr().err
        assert stopped % after in err and "Traceback" not in err, err

    # writing the checkpoint of epoch 2: epoch 1's is kept
    run_killed(_fit(clean, out), tmp_path / "1.log", "checkpoint.pt", 2)
    refused("1 of its 2 epochs")
    # resumed, and stopped (Ctrl-C) after the last checkpoint, before its line of metrics.jsonl
    write = train.atomic_write_text

    def interrupted(path, text):
        if path.name == "metrics.jsonl" and text.count("\n") == 2:
            raise KeyboardInterrupt
        return write(path, text)
    monkeypatch.setattr(train, "atomic_write_text", interrupted)
    assert main(_fit(clean, out, "--resume")) == 130
    assert "a run continues with the same command and --resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    refused("training, before its detector nll was calibrated")
    # writing the calibration file, after the detector's fit
    run_killed(_fit(clean, out, "--resume"), tmp_path / "2.log", "nll.npz")
    assert (out / "calibration" / "nll.fitted.pkl").exists() and not (out / "calibration" / "nll.npz").exists()
    refused("training, before its detector nll was calibrated")

    assert main(_fit(clean, out, "--resume")) == 0
    _assert_as_clean(out, clean)  # metrics.jsonl caught up with the checkpoint; the temporary files removed
    assert main(_fit(clean, out)) == 2  # a finished fit is not fitted over
    assert f"{out} already holds a fitted model (vaeood detect {out} IMAGES uses it); to fit again, delete {out} " \
           "or choose another --out" in capsys.readouterr().err
    shutil.rmtree(out)  # as the refusal says: a fit afresh gives the same model
    assert main(_fit(clean, out)) == 0
    _assert_as_clean(out, clean)
