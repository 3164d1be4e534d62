"""The command line under hostile use (issue 34): an --out that is a folder, a background run
of another dataset and image shape, a calibration whose images changed in their file since
calibrate, and two `vaeood fit` on one --out at once. Tiny data written by the test."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli_processes import launch, wait_for
from tinydata import blobs, write_npz
import vaeood
from vaeood.cli import main
from vaeood.infra.runlock import LOCK_NAME, RunLockedError

TINY = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run on 300 of 500 grey 28×28 'fashion_mnist' blobs, calibrated for nll on 150 held-out
    ones, a run on RGB 32×32 'cifar10' blobs, and a folder of 10 test blobs."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(500, 0))
    write_npz(data, "cifar10", "train", blobs(100, 0, size=32, channels=3))
    run, colour = root / "run", root / "colour"
    assert main(["train", str(run), "--data-dir", str(data), "--data.limit=300", *TINY]) == 0
    assert main(["train", str(colour), "--data-dir", str(data), "--data.name=cifar10", *TINY]) == 0
    assert main(["calibrate", str(run), "--detector", "nll", "--n", "150", "--data-dir", str(data)]) == 0
    folder = root / "imgs"
    folder.mkdir()
    for i, img in enumerate(blobs(10, 1)):
        Image.fromarray(img).save(folder / f"{i}.png")
    return {"data": data, "run": run, "colour": colour, "folder": folder}


def test_an_out_that_is_a_folder_is_refused_saying_so(tiny, tmp_path, capsys):
    assert main(["detect", str(tiny["run"]), str(tiny["folder"]), "--out", str(tmp_path),
                 "--data-dir", str(tiny["data"])]) == 2
    assert f"--out {tmp_path}: {tmp_path} is a folder; name a CSV file to write" in capsys.readouterr().err


def test_a_background_of_another_dataset_and_shape_is_refused_naming_both(tiny, capsys):
    options = json.dumps({"background_run": str(tiny["colour"])})
    assert main(["calibrate", str(tiny["run"]), "--detector", "likelihood_ratio", "--detector-options", options,
                 "--n", "20", "--data-dir", str(tiny["data"])]) == 2
    err = capsys.readouterr().err
    assert "was trained on cifar10/train, but the run" in err and "on fashion_mnist/train" in err, err
    assert "images of C×H×W = 3×32×32, but the run" in err and "on 1×28×28" in err, err


def test_a_calibration_whose_images_changed_in_their_file_is_used_and_said_once(tiny, tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny["data"], data)
    shutil.copytree(tiny["run"], run)
    detect = ["detect", str(run), str(tiny["folder"]), "--data-dir", str(data), "--out"]
    assert main([*detect, str(tmp_path / "a.csv")]) == 0
    before = capsys.readouterr()
    assert "changed" not in before.out + before.err
    images = blobs(500, 0)
    images[300:450] = 255 - images[300:450]  # the calibration slice, changed in its file
    write_npz(data, "fashion_mnist", "train", images)
    assert main([*detect, str(tmp_path / "b.csv")]) == 0
    after = capsys.readouterr()
    said = ("the calibration images fashion_mnist/train[300:450] changed in their file since calibrate "
            "(fashion_mnist_train.npz holds other images there now)")
    # once in the log (stderr) and once in the summary, as the companion runs' warnings
    assert after.err.count(said) == 1 and after.out.count(said) == 1, after
    summary = json.loads((tmp_path / "b.summary.json").read_text())
    assert any("fashion_mnist_train.npz" in w for w in summary["warnings"])
    # the decisions rest on the scores recorded at calibration: the same as before the file changed
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "a.csv").read_text()


def test_a_detect_interrupted_while_writing_leaves_no_summary_beside_other_files(tiny, tmp_path, monkeypatch,
                                                                                capsys):
    out = tmp_path / "r.csv"
    detect = ["detect", str(tiny["run"]), str(tiny["folder"]), "--data-dir", str(tiny["data"]), "--out", str(out)]
    assert main(detect) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["r.csv", "r.html", "r.summary.json"]

    def interrupted(detection):  # Ctrl-C (or a kill) while the page, the slowest file, is made
        raise KeyboardInterrupt
    monkeypatch.setattr("vaeood.decisions.detection.page", interrupted)
    assert main([*detect, "--alpha", "0.5"]) == 130
    assert "interrupted" in capsys.readouterr().err
    # the page is made before anything is written: the earlier detect's three files stay, whole and its own
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert main([*detect, "--alpha", "0.5"]) == 0  # run again: all three, of this detect
    assert json.loads((tmp_path / "r.summary.json").read_text())["alpha"] == 0.5


def _two_folders(tmp_path):
    """Two folders of 200 16×16 PNGs, 'photos' and 'other' (other images)."""
    photos, other = tmp_path / "photos", tmp_path / "other"
    for folder, seed in ((photos, 0), (other, 1)):
        folder.mkdir()
        for i, img in enumerate(blobs(200, seed, size=16)):
            Image.fromarray(img).save(folder / f"{i:03d}.png")
    return photos, other


@pytest.mark.slow  # two processes, each training a model
def test_two_fits_on_one_out_at_once_one_wins_and_the_other_writes_nothing(tmp_path, capsys):
    photos, other = _two_folders(tmp_path)
    out = tmp_path / "model"
    base = ["--detector", "nll", "--model.base_channels=4", "--model.latent_dim=4"]
    first = launch(["fit", f"{photos}/", "--out", str(out), *base, "--train.epochs=1000"], tmp_path / "a.log")
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists(), first)  # training: the lock is held
        cache = sorted((out / "cache").iterdir())  # the first fit's decoded copy of its folder
        # the second fit in this process (the lock is another process's all the same)
        assert main(["fit", f"{other}/", "--out", str(out), *base, "--train.epochs=1"]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by another vaeood process (pid {first.pid} on" in err and "Traceback" not in err, err
        assert sorted((out / "cache").iterdir()) == cache  # the refused fit decoded nothing into the run
        assert first.poll() is None
    finally:
        first.kill()
        first.wait(timeout=30)


HOLD_LOCK = """
import fcntl, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_python_fit_into_a_run_dir_another_process_writes_is_refused_before_it_writes(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunLockedError, match=f"{run} is in use by another vaeood process"):
            vaeood.ImageOODDetector(run_dir=run).fit(np.stack(blobs(200, 0, size=8, channels=3)))
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # its training images not written
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_resuming_a_fit_with_another_source_is_refused_naming_both(tmp_path, capsys):
    photos, other = _two_folders(tmp_path)
    out = tmp_path / "model"
    base = ["--out", str(out), "--detector", "nll", *TINY]
    assert main(["fit", f"{photos}/", *base]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME}
    assert main(["fit", f"{other}/", *base, "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"holds a fit of '{photos}/', not of '{other}/'" in err and "into another --out" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != LOCK_NAME} == before  # untouched
    assert main(["fit", str(photos), *base, "--resume"]) == 0  # the same folder, named without the slash


def test_two_detects_writing_one_csv_at_once_leave_the_three_files_of_one(tmp_path, monkeypatch):
    import threading

    from vaeood.decisions import detection

    write, write_json, out = detection.atomic_write_text, detection.atomic_write_json, tmp_path / "r.csv"
    a_wrote_csv, b_done = threading.Event(), threading.Event()

    def csv_then_wait(path, text):  # unlocked: a's CSV, b's three files, then a's page and summary
        write(path, text)
        if path == out and "a0.png" in text:
            a_wrote_csv.set()
            b_done.wait(timeout=1)  # with the lock b cannot start: a goes on after a second

    def summary(path, obj):
        write_json(path, obj)
        if obj["who"] == "b":
            b_done.set()
    monkeypatch.setattr(detection, "atomic_write_text", csv_then_wait)
    monkeypatch.setattr(detection, "atomic_write_json", summary)
    monkeypatch.setattr(detection, "page", lambda d: f"<p>{d.summary['who']}</p>")

    def detect(who: str):
        if who == "b":
            a_wrote_csv.wait(timeout=5)
        n = 3 if who == "a" else 5
        detection.Detection([f"{who}{i}.png" for i in range(n)], np.zeros(n), np.ones(n), np.zeros(n, bool),
                            {"who": who}).write(out)
    writers = [threading.Thread(target=detect, args=(who,)) for who in "ab"]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    who = json.loads((tmp_path / "r.summary.json").read_text())["who"]
    assert (tmp_path / "r.html").read_text() == f"<p>{who}</p>"
    assert {row.split(",")[0][0] for row in out.read_text().splitlines()[1:]} == {who}
