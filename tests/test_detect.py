"""`vaeood calibrate` and `vaeood detect` end to end on tiny data written by the test:
calibration on held-out training images, decisions on a folder of PNGs, an .npz and a
dataset name, and every refusal (no calibration, no held-out images, too small for α,
a changed checkpoint, bad files)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import vaeood
from tinydata import blobs, strokes, write_npz
from vaeood.decisions import conformal
from vaeood.cli import main
from vaeood.decisions.records import NoCalibrationError, calibration_path, calibration_scores, load_calibration
from vaeood.decisions.run_rates import operating_points_for_run

TINY = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run trained on the first 300 of 500 'fashion_mnist' training images (blobs),
    and a folder of 30 test blobs + 30 test strokes as PNG files."""
    import os

    root = tmp_path_factory.mktemp("detect")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(500, 0))
    write_npz(data, "fashion_mnist", "test", blobs(60, 1))
    write_npz(data, "mnist", "test", strokes(60, 3))
    old = os.environ.get("VAEOOD_DATA")
    os.environ["VAEOOD_DATA"] = str(data)  # detect scores the calibration images again: it finds them here
    run = root / "run"
    assert main(["train", str(run), "--data-dir", str(data), "--data.limit=300", *TINY]) == 0
    folder = root / "imgs"
    folder.mkdir()
    for i, img in enumerate(blobs(30, 1)):
        Image.fromarray(img).save(folder / f"fm_{i:02d}.png")
    for i, img in enumerate(strokes(30, 3)):
        Image.fromarray(img).save(folder / f"mn_{i:02d}.png")
    yield {"root": root, "data": data, "run": run, "folder": folder}
    if old is None:
        os.environ.pop("VAEOOD_DATA", None)
    else:
        os.environ["VAEOOD_DATA"] = old


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_detect_end_to_end(tiny, capsys):
    run, data, folder, root = tiny["run"], tiny["data"], tiny["folder"], tiny["root"]
    out = root / "out.csv"

    # no calibration yet: refused, saying how to make it
    assert main(["detect", str(run), str(folder), "--out", str(out), "--data-dir", str(data)]) == 2
    assert f"has no calibrated detector; make the recommended one with: vaeood calibrate {run}" in \
        capsys.readouterr().err
    assert main(["detect", str(run), str(folder), "--detector", "nll", "--out", str(out), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "has no calibration for detector 'nll'" in err and f"vaeood calibrate {run} --detector nll" in err
    assert not out.exists()

    assert main(["calibrate", str(run), "--detector", "nll", "--n", "150", "--data-dir", str(data)]) == 0
    assert "on 150 held-out images fashion_mnist/train[300:450] (the model trained on [0:300])" in \
        capsys.readouterr().out
    record = load_calibration(run, "nll")
    assert record["calibration_slice"] == [300, 450] and record["train_slice"] == [0, 300]
    assert record["fit_slice"] is None and record["n_calibration"] == 150

    assert main(["detect", str(run), str(folder), "--alpha", "0.1", "--out", str(out), "--data-dir", str(data)]) == 0
    text = capsys.readouterr().out
    assert "60 images from" in text and "Guarantee marginal" in text and "exchangeable" in text
    rows = _read_csv(out)
    assert [r["file"] for r in rows] == sorted(p.name for p in folder.iterdir())
    scores = np.array([float(r["score"]) for r in rows])
    p = np.array([float(r["p_value"]) for r in rows])
    flagged = np.array([r["flagged"] == "1" for r in rows])
    cal = calibration_scores(run, "nll")
    np.testing.assert_allclose(p, conformal.p_values(cal, scores))
    np.testing.assert_array_equal(flagged, p <= 0.1)
    summary = json.loads((root / "out.summary.json").read_text())
    assert summary["n_flagged"] == flagged.sum() and summary["guarantee"] == "marginal"
    assert summary["calibration"]["slice"] == [300, 450] and summary["skipped"] == []

    # the same images as an .npz and as a dataset name give the same scores (PNG is lossless)
    x = np.stack([np.asarray(Image.open(folder / r["file"])) for r in rows])
    np.savez(root / "same.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    same = vaeood.decide(run, root / "same.npz", alpha=0.1, data_dir=str(data))
    np.testing.assert_allclose(same.scores, scores, rtol=1e-6)
    by_name = vaeood.decide(run, "mnist", alpha=0.1, data_dir=str(data), limit=30)
    with np.load(data / "mnist_test.npz") as f:
        np.savez(root / "mn30.npz", x=f["x"][:30], y=f["y"][:30])
    np.testing.assert_allclose(by_name.scores, vaeood.decide(run, root / "mn30.npz").scores, rtol=1e-6)
    assert by_name.names[0] == "mnist/test[0]" and len(by_name.names) == 30

    on_train = vaeood.decide(run, "fashion_mnist", split="train", limit=20)
    assert "carry no guarantee" in on_train.summary_text() and on_train.summary["warnings"]
    assert by_name.summary["warnings"] == []

    # calibration-conditional and FDR rules
    cond = vaeood.decide(run, folder, alpha=0.1, delta=0.1)
    t = conformal.threshold(cal, 0.1, 0.1)
    np.testing.assert_array_equal(cond.flagged, scores > t.value)
    assert cond.summary["guarantee"] == "conditional" and cond.flagged.sum() <= flagged.sum()
    fdr = vaeood.decide(run, folder, alpha=0.1, fdr=True)
    np.testing.assert_array_equal(fdr.flagged, conformal.benjamini_hochberg(p, 0.1))

    # operating points for reports, from the run's calibration
    ops = operating_points_for_run(run, "nll", scores[:30], {"mnist": scores[30:]}, alphas=(0.05, 0.1))
    assert ops["alphas"]["0.1"]["fpr"] == flagged[:30].mean()
    assert ops["alphas"]["0.1"]["tpr"]["mnist"]["tpr"] == flagged[30:].mean()


def test_detect_refusals(tiny, capsys, tmp_path):
    run, data, folder = tiny["run"], tiny["data"], tiny["folder"]
    if not calibration_path(run, "nll").exists():
        main(["calibrate", str(run), "--detector", "nll", "--n", "150", "--data-dir", str(data)])
    capsys.readouterr()
    out = tmp_path / "o.csv"

    # too little calibration data for alpha (150 < 1/0.001 - 1), before reading any image
    assert main(["detect", str(run), str(folder), "--alpha", "0.001", "--out", str(out)]) == 2
    assert "at least 999 are needed" in capsys.readouterr().err
    assert main(["detect", str(run), str(folder), "--alpha", "0.01", "--delta", "0.01", "--out", str(out)]) == 2
    assert "calibration-conditional" in capsys.readouterr().err
    assert main(["detect", str(run), str(folder), "--alpha", "1.5", "--out", str(out)]) == 2
    assert "alpha must be in (0, 1), got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["detect", str(run), str(folder), "--delta", "0.1", "--fdr", "--out", str(out)])
    capsys.readouterr()

    # bad files: each named, or skipped and listed on request
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    good = (folder / "fm_00.png").read_bytes()
    (bad / "cut.png").write_bytes(good[: len(good) // 2])
    (bad / "readme.png").write_text("hello")
    Image.fromarray(blobs(1, 9, size=32)[0]).save(bad / "big.png")
    assert main(["detect", str(run), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "3 of 63 files cannot be used" in err
    assert "cut.png: truncated" in err and "readme.png: not an image" in err and "big.png: C×H×W = 1×32×32" in err
    assert not out.exists()
    assert main(["detect", str(run), str(bad), "--skip-bad", "--out", str(out)]) == 0
    assert "skipped 3 files" in capsys.readouterr().out
    assert len(_read_csv(out)) == 60
    summary = json.loads(out.with_name("o.summary.json").read_text())
    assert sorted(n for n, _ in summary["skipped"]) == ["big.png", "cut.png", "readme.png"]
    # with --pad the 32×32 image cannot shrink; with --resize it is fitted and recorded
    assert main(["detect", str(run), str(bad), "--skip-bad", "--resize", "--out", str(out)]) == 0
    assert len(_read_csv(out)) == 61
    assert json.loads(out.with_name("o.summary.json").read_text())["fitted"]["method"] == "resize"

    # other detector options than the calibrated ones
    with pytest.raises(NoCalibrationError, match="calibrate with those options"):
        vaeood.decide(run, folder, detector_options={"estimator": "iwae", "estimator_options": {"k": 4}})
    with pytest.raises(NoCalibrationError, match="unknown detector 'nl'"):
        vaeood.decide(run, folder, detector="nl")


def _calibrated(tiny):
    if not calibration_path(tiny["run"], "nll").exists():
        assert main(["calibrate", str(tiny["run"]), "--detector", "nll", "--n", "150", "--data-dir",
                     str(tiny["data"])]) == 0


def test_class_subfolders_are_read_as_training_reads_them_and_skip_bad_serves_log_px_and_evaluate(tiny, tmp_path,
                                                                                                   capsys):
    run, folder = tiny["run"], tiny["folder"]
    _calibrated(tiny)
    classes = tmp_path / "classes"
    for f in sorted(folder.iterdir()):
        (classes / f.name[:2]).mkdir(parents=True, exist_ok=True)
        (classes / f.name[:2] / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "o.csv"
    assert main(["detect", str(run), str(classes), "--detector", "nll", "--out", str(out)]) == 0
    rows = _read_csv(out)
    assert len(rows) == 60 and rows[0]["file"] == "fm/fm_00.png" and rows[0]["class"] == "fm"
    assert {r["class"] for r in rows} == {"fm", "mn"}
    (classes / "mn" / "cut.png").write_bytes((folder / "mn_00.png").read_bytes()[:40])
    capsys.readouterr()
    assert main(["log-px", str(run), "--dataset", str(classes / "mn")]) == 2
    assert "cut.png: truncated" in capsys.readouterr().err
    assert main(["log-px", str(run), "--dataset", str(classes / "mn"), "--skip-bad"]) == 0
    assert ": 30 images, mean log p(x)" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--in", str(classes / "fm"), "--ood", str(classes / "mn"), "--detectors", "nll",
                 "--skip-bad", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["results"]["nll"][str(classes / "mn")]["auroc"] > 0.5


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_an_images_score_depends_neither_on_its_position_nor_on_the_batch_size(tiny, tmp_path, capsys):
    """Issue 23: identical images in one folder get one score and one decision; --batch-size
    changes no estimate, so detect accepts its own calibration at any batch size."""
    run = tiny["run"]
    _calibrated(tiny)
    folder = tmp_path / "dup"
    folder.mkdir()
    images = [*blobs(4, 7), *strokes(3, 8)]
    for i, img in enumerate([*images, images[1], images[5]]):  # two images again, at the end
        Image.fromarray(img).save(folder / f"{i}.png")
    outs = []
    for extra in ([], ["--batch-size", "2"], ["--batch-size", "3"]):
        out = tmp_path / f"o{len(outs)}.csv"
        assert main(["detect", str(run), str(folder), "--alpha", "0.1", "--out", str(out), *extra]) == 0, \
            capsys.readouterr().err
        outs.append({r["file"]: r for r in _read_csv(out)})
    for rows in outs:
        assert rows["7.png"]["score"] == rows["1.png"]["score"] and rows["8.png"]["score"] == rows["5.png"]["score"]
        assert rows["7.png"]["flagged"] == rows["1.png"]["flagged"]
        for name, row in rows.items():
            assert float(row["score"]) == pytest.approx(float(outs[0][name]["score"]), rel=1e-6)


def test_a_calibration_of_an_older_format_is_refused_saying_to_calibrate_again(tiny, tmp_path):
    import shutil

    _calibrated(tiny)
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    path = calibration_path(run, "nll")
    with np.load(path) as f:
        scores, meta = f["scores"], json.loads(str(f["meta"]))
    np.savez(path, scores=scores, meta=np.array(json.dumps({**meta, "format": 1})))
    with pytest.raises(NoCalibrationError, match=r"format 1.*reads format 2.*calibrate again: vaeood calibrate"):
        load_calibration(run, "nll")


def test_an_out_that_would_replace_an_input_or_a_run_file_is_refused_before_any_work(tiny, tmp_path, capsys):
    """Issue 23: --out naming the checkpoint, the input .npz, an input image, or a path in the
    input folder or the run (its CSV or its summary) is refused with exit 2, nothing written."""
    run, folder = tiny["run"], tiny["folder"]
    _calibrated(tiny)
    ckpt = (run / "checkpoint.pt").read_bytes()
    images = tmp_path / "in"
    images.mkdir()
    for f in sorted(folder.iterdir())[:3]:
        (images / f.name).write_bytes(f.read_bytes())
    x = np.stack([np.asarray(Image.open(p)) for p in sorted(images.iterdir())])
    np.savez(tmp_path / "in.npz", x=x, y=np.zeros(len(x), dtype=np.int64))
    npz_bytes = (tmp_path / "in.npz").read_bytes()
    png = sorted(images.iterdir())[0]
    png_bytes = png.read_bytes()
    (tmp_path / "link.csv").symlink_to(tmp_path / "in.npz")
    cases = [(images, run / "checkpoint.pt", "inside the run directory"),
             (images, run / "new.csv", "inside the run directory"),
             (tmp_path / "in.npz", tmp_path / "in.npz", "is the input file"),
             (tmp_path / "in.npz", tmp_path / "link.csv", "is the input file"),
             (images, png, "inside the input folder"),
             (images, images / "results.csv", "inside the input folder"),
             (images, tmp_path / "in", "inside the input folder")]
    for source, out, message in cases:
        assert main(["detect", str(run), str(source), "--out", str(out)]) == 2, out
        err = capsys.readouterr().err
        assert "vaeood: error: --out" in err and message in err and "write the results elsewhere" in err, err
    assert (run / "checkpoint.pt").read_bytes() == ckpt and not (run / "new.csv").exists()
    assert (tmp_path / "in.npz").read_bytes() == npz_bytes and png.read_bytes() == png_bytes
    assert sorted(p.name for p in images.iterdir()) == [f.name for f in sorted(folder.iterdir())[:3]]
    # the summary is written beside the CSV: it may not land on an input either
    (images / "x.summary.json").write_text("{}")
    assert main(["detect", str(run), str(images / "x.summary.json"), "--out", str(images / "x.csv")]) == 2
    assert "x.summary.json is the input file" in capsys.readouterr().err
    (images / "x.summary.json").unlink()
    assert main(["detect", str(run), str(images), "--out", str(tmp_path / "ok.csv")]) == 0


def test_special_hidden_and_oddly_named_files_of_a_folder(tiny, tmp_path, capsys):
    """Issue 23: a FIFO named like an image is named and skipped, never opened (no hang); a
    hidden file is left out and the summary says so; a name that is not UTF-8 is a clear
    error; names a spreadsheet would run as formulas are escaped in the CSV."""
    import os
    import threading

    run = tiny["run"]
    _calibrated(tiny)
    d = tmp_path / "odd"
    d.mkdir()
    imgs = blobs(6, 4)
    names = ["=cmd|' -C calc'!A0.png", "+SUM(1).png", "-x.png", "@y.png", "\tz.png", "plain.png"]
    for name, img in zip(names, imgs, strict=True):
        Image.fromarray(img).save(d / name)
    Image.fromarray(imgs[0]).save(d / ".hidden.png")
    os.mkfifo(d / "pipe.png")
    out = tmp_path / "o.csv"
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["detect", str(run), str(d), "--out", str(out)])),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "detect blocked on a FIFO"
    assert codes == [2] and "pipe.png: a FIFO (named pipe), not a regular file (not opened)" in capsys.readouterr().err
    assert main(["detect", str(run), str(d), "--skip-bad", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "left out 1 files: .hidden.png (hidden" in text and "5 file names escaped in the CSV" in text
    rows = _read_csv(out)
    assert sorted(r["file"] for r in rows) == sorted(["'" + n for n in names[:5]] + ["plain.png"])
    summary = json.loads(out.with_name("o.summary.json").read_text())
    assert summary["left_out"] == [[".hidden.png", "hidden (a name starting with '.'): not read"]]
    assert [n for n, _ in summary["skipped"]] == ["pipe.png"] and "OWASP" in summary["csv_escaping"]

    bad = os.fsencode(str(d)) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    with open(bad, "wb") as f:
        f.write((d / "plain.png").read_bytes())
    assert main(["detect", str(run), str(d), "--out", str(out)]) == 2
    assert "caf\\xe9.png: its name is not valid UTF-8 (rename it)" in capsys.readouterr().err
    assert main(["detect", str(run), str(d), "--skip-bad", "--out", str(out)]) == 0
    assert "caf\\xe9.png" in capsys.readouterr().out and len(_read_csv(out)) == 6

    # an .npz input, and an --out, whose names are not UTF-8: escaped in the CSV, no traceback
    x = np.stack([np.asarray(Image.open(d / "plain.png"))] * 2)
    raw = os.fsencode(str(tmp_path)) + b"/na\xefve.npz"
    np.savez(os.fsdecode(raw), x=x, y=np.zeros(2, dtype=np.int64))
    odd_out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9sults.csv")
    assert main(["detect", str(run), os.fsdecode(raw), "--out", odd_out]) == 0
    printed = capsys.readouterr().out
    assert "r\\xe9sults.csv" in printed
    assert [r["file"] for r in _read_csv(odd_out)] == ["na\\xefve.npz[0]", "na\\xefve.npz[1]"]

    # a terminal escape sequence in a file name is shown escaped, never sent to the terminal
    Image.fromarray(imgs[0]).save(d / "evil\x1b[2J.gif", format="GIF")
    assert main(["detect", str(run), str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "evil\\x1b[2J.gif: not a PNG/JPEG file name" in err and "\x1b" not in err


def _tampered(tiny, tmp_path, change):
    """A copy of the tiny run whose nll calibration file was rewritten by ``change(arrays, meta)``."""
    import shutil

    _calibrated(tiny)
    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    path = calibration_path(run, "nll")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    replaced = change(arrays, meta)  # the record edited in place, or another JSON value returned
    if "meta" in arrays:
        arrays["meta"] = np.array(json.dumps(meta if replaced is None else replaced))
    np.savez(path, **arrays)
    return run, path


def _drop(d, key):
    d.pop(key)


TAMPERING = {
    "truncated scores": (lambda a, m: a.update(scores=a["scores"][:-10]), "field 'scores' holds 140 scores"),
    "no scores": (lambda a, m: _drop(a, "scores"), "field 'scores' is missing"),
    "no meta": (lambda a, m: _drop(a, "meta"), "field 'meta' is missing"),
    "a key removed": (lambda a, m: _drop(m, "seed"), "field 'seed' is missing"),
    "slice removed": (lambda a, m: _drop(m, "calibration_slice"), "field 'calibration_slice' is missing"),
    "float32 scores": (lambda a, m: a.update(scores=a["scores"].astype(np.float32)),
                       "field 'scores' is float32 of shape [150], expected float64 [n]"),
    "2-d scores": (lambda a, m: a.update(scores=a["scores"].reshape(10, 15)),
                   "field 'scores' is float64 of shape [10, 15]"),
    "a NaN score": (lambda a, m: a["scores"].__setitem__(3, np.nan),
                    "field 'scores' holds 1 values that are not finite"),
    "a text seed": (lambda a, m: m.update(seed="0"), "field 'seed' is \"0\", expected an integer"),
    "options not an object": (lambda a, m: m.update(detector_options=[]), "field 'detector_options' is []"),
    "another detector": (lambda a, m: m.update(detector="typicality"), "field 'detector' is 'typicality'"),
    "an extra array": (lambda a, m: a.update(extra=np.zeros(2)), "field 'extra' is not a field"),
    "meta not an object": (lambda a, m: [1, 2], "field 'meta' is JSON list, expected an object"),
    "an option nll refuses": (lambda a, m: m["detector_options"].update(zzz=1),
                              "field 'detector_options' is {'estimator': 'elbo', 'estimator_options': {}, 'zzz': 1}, "
                              "which detector 'nll' refuses"),
    "options not as recorded": (lambda a, m: m["detector_options"].update(estimator_options=[]),
                                "not as calibrate records it"),
    "a fitting slice for nll": (lambda a, m: m.update(fit_slice=[460, 470]),
                                "field 'fit_slice' is [460, 470], but detector 'nll' does not fit"),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_a_tampered_calibration_file_is_refused_naming_the_file_and_the_field(tiny, tmp_path, case):
    """Issue 23: calibration files are untrusted input; truncated arrays or a removed key were tracebacks."""
    change, message = TAMPERING[case]
    run, path = _tampered(tiny, tmp_path, change)
    with pytest.raises(NoCalibrationError) as err:
        load_calibration(run, "nll")
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)
    assert "calibrate again: vaeood calibrate" in str(err.value)
    assert main(["detect", str(run), str(tiny["folder"]), "--out", str(tmp_path / "o.csv")]) == 2
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("change, message", [
    (lambda a, m: m["detector_options"]["estimator_options"].update(samples="x"),
     "cannot score the calibration images (samples must be a positive integer, got 'x')"),
    (lambda a, m: m["detector_options"].update(estimator="bogus"), "which detector 'nll' refuses (unknown estimator")],
    ids=["a text sample count", "an unknown estimator"])
def test_recorded_options_the_feature_refuses_are_the_files_fault_not_a_traceback(tiny, tmp_path, capsys, change,
                                                                                   message):
    run, path = _tampered(tiny, tmp_path, change)
    assert main(["detect", str(run), str(tiny["folder"]), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: field 'detector_options'" in err and message in err, err
    assert "Traceback" not in err and "calibrate again" in err


def test_a_calibration_slice_over_the_training_images_is_refused_even_with_its_digests_redone(tiny, tmp_path):
    """Issue 23: a slice moved onto the model's own training images [0, 300), with the images'
    digest and the scores recomputed so that every other check passes, is refused."""
    from vaeood.features import images_digest
    from vaeood.decisions.scorer import make_scorer

    with np.load(tiny["data"] / "fashion_mnist_train.npz") as f:
        train_images = f["x"]

    def onto_training_images(arrays, meta):
        meta["calibration_slice"] = [250, 400]
        meta["calibration_images_sha256"] = images_digest(train_images[250:400])
        scorer = make_scorer(tiny["run"], "nll", meta["detector_options"], seed=meta["seed"])
        scorer.fit(0, 0)
        arrays["scores"] = scorer.score_images(train_images[250:400], meta["seed"])

    run, path = _tampered(tiny, tmp_path, onto_training_images)
    with pytest.raises(NoCalibrationError, match=r"field 'calibration_slice' is \[250, 400\], outside the images "
                                                 r"the model never trained on \[300, 500\)"):
        vaeood.decide(run, tiny["folder"])
    run2, _ = _tampered(tiny, tmp_path / "b", lambda a, m: m.update(train_slice=[0, 250], heldout=[250, 500]))
    with pytest.raises(NoCalibrationError, match=r"field 'train_slice' is \[0, 250\], but the run's is \[0, 300\]"):
        load_calibration(run2, "nll")


def test_hostile_outputs_links_datasets_fifos_and_files_detect_did_not_write(tiny, tmp_path, capsys):
    """Attacks beyond the issue's: an --out link into the run, a summary link into the run,
    --out on the dataset file a name input was read from, on a FIFO, on a file detect did
    not write; a FIFO as the calibration file. All refused, nothing replaced, nothing hangs."""
    import os
    import shutil
    import threading

    run, data, folder = tiny["run"], tiny["data"], tiny["folder"]
    _calibrated(tiny)
    config = (run / "config.json").read_bytes()
    (tmp_path / "a.csv").symlink_to(run / "config.json")
    (tmp_path / "b.summary.json").symlink_to(run / "config.json")
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "notes.csv").write_text("my notes\n")
    dataset = (data / "mnist_test.npz").read_bytes()
    cases = [(folder, tmp_path / "a.csv", "inside the run directory"),
             (folder, tmp_path / "b.csv", "inside the run directory"),
             ("mnist", data / "mnist_test.npz", "exists and is not a file detect wrote"),
             (folder, tmp_path / "fifo.csv", "is a FIFO (named pipe), not a file detect wrote"),
             (folder, tmp_path / "notes.csv", "exists and is not a file detect wrote")]
    for source, out, message in cases:
        codes = []
        argv = ["detect", str(run), str(source), "--out", str(out), *(["--limit", "5"] if source == "mnist" else [])]
        worker = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)  # noqa: B023 (joined below)
        worker.start()
        worker.join(60)
        assert not worker.is_alive() and codes == [2], out
        assert message in capsys.readouterr().err, out
    assert (run / "config.json").read_bytes() == config and (data / "mnist_test.npz").read_bytes() == dataset
    assert (tmp_path / "notes.csv").read_text() == "my notes\n"
    # a CSV detect wrote (and its summary) may be replaced by the next detect
    assert main(["detect", str(run), str(folder), "--out", str(tmp_path / "again.csv")]) == 0
    assert main(["detect", str(run), str(folder), "--out", str(tmp_path / "again.csv")]) == 0
    capsys.readouterr()

    copy = tmp_path / "run_copy"
    shutil.copytree(run, copy)
    calibration_path(copy, "nll").unlink()
    os.mkfifo(calibration_path(copy, "nll"))
    got = []
    worker = threading.Thread(target=lambda: got.append(pytest.raises(NoCalibrationError, load_calibration, copy)),
                              daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the calibration FIFO was opened"
    assert "a FIFO (named pipe), not a regular file" in str(got[0].value)


def test_a_background_without_noise_is_said_in_the_detect_summary(tiny, tmp_path, capsys, caplog):
    """The model as its own likelihood-ratio background (same data and shape: allowed) departs
    from Ren et al.'s recipe; calibrate and detect say so, and the summary records it."""
    run, data, folder = tiny["run"], tiny["data"], tiny["folder"]
    options = json.dumps({"background_run": str(run)})
    assert main(["calibrate", str(run), "--detector", "likelihood_ratio", "--detector-options", options,
                 "--n", "50", "--data-dir", str(data)]) == 0
    assert "without pixel noise" in caplog.text  # logged (on stderr from the command line)
    out = tmp_path / "lr.csv"
    assert main(["detect", str(run), str(folder), "--detector", "likelihood_ratio", "--alpha", "0.1",
                 "--out", str(out)]) == 0
    assert "warning: detector 'likelihood_ratio': background_run was trained without pixel noise" in \
        capsys.readouterr().out
    warnings = json.loads(out.with_name("lr.summary.json").read_text())["warnings"]
    assert any("without an L2 penalty" in w for w in warnings)


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_calibration_needs_held_out_images_and_the_same_checkpoint(tiny, tmp_path, capsys):
    data = tiny["data"]
    full = tmp_path / "full"
    assert main(["train", str(full), "--data-dir", str(data), *TINY]) == 0
    assert main(["calibrate", str(full), "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert "the run trained on all 500 images of fashion_mnist/train" in err and "--data.limit=" in err

    part = tmp_path / "part"
    assert main(["train", str(part), "--data-dir", str(data), "--data.limit=450", *TINY]) == 0
    assert main(["calibrate", str(part), "--detector", "nll", "--n", "51", "--data-dir", str(data)]) == 2
    assert "choose 1 ≤ n ≤ 50" in capsys.readouterr().err
    vaeood.calibrate(part, "nll", data_dir=str(data))  # default: all 50 held-out images (fewer than 2000)
    assert load_calibration(part)["calibration_slice"] == [450, 500]
    with pytest.raises(NoCalibrationError, match="choose 1 ≤ n_fit < 50"):
        vaeood.calibrate(part, "typicality", n_fit=50, data_dir=str(data))
    # the model changes (another training's checkpoint in its place): the calibration no longer applies
    other = tmp_path / "other"
    assert main(["train", str(other), "--data-dir", str(data), "--data.limit=450", "--train.seed=1", *TINY]) == 0
    (part / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())
    with pytest.raises(NoCalibrationError, match="another checkpoint"):
        vaeood.decide(part, tiny["folder"])


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_a_fitting_detector_is_fitted_and_calibrated_on_disjoint_held_out_slices(tiny, tmp_path):
    run, data, folder = tiny["run"], tiny["data"], tiny["folder"]
    record = vaeood.calibrate(run, "typicality", n_fit=100, n_calibration=100, data_dir=str(data))
    assert record["fit_slice"] == [300, 400] and record["calibration_slice"] == [400, 500]
    assert record["detector_options"] == {"estimator": "elbo", "estimator_options": {}}
    # the scores are |-log p(x) - H|, H the mean over the fitting slice
    nll_fit = -vaeood.compute_features(run, "fashion_mnist", "train", "log_px", start=300, stop=400,
                                       data_dir=str(data))["log_px_nats"]
    nll_cal = -vaeood.compute_features(run, "fashion_mnist", "train", "log_px", start=400, stop=500,
                                       data_dir=str(data))["log_px_nats"]
    np.testing.assert_allclose(record["scores"], np.abs(nll_cal - nll_fit.mean()), rtol=1e-9)
    result = vaeood.decide(run, folder, "typicality", alpha=0.2, data_dir=str(data))
    np.testing.assert_array_equal(result.flagged, result.p_values <= 0.2)
    assert result.summary["calibration"]["fit_slice"] == [300, 400]

    # calibration scores that the refitted detector does not reproduce are refused
    path = calibration_path(run, "typicality")
    with np.load(path) as f:
        scores, meta = f["scores"], f["meta"]
    np.savez(path, scores=scores + 1.0, meta=meta)
    with pytest.raises(NoCalibrationError, match="no longer reproduces its calibration scores"):
        vaeood.decide(run, folder, "typicality", data_dir=str(data))


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_decision_rates_for_the_suite_report(tiny):
    from vaeood.decisions.run_rates import decision_rates, format_decision_table

    run, data = tiny["run"], tiny["data"]
    rates = decision_rates(run, "fashion_mnist", ["mnist"], ["nll", "complexity"], n_calibration=150,
                           data_dir=str(data), alphas=(0.001, 0.01, 0.1))
    assert "bits/dim" in rates["complexity"]["error"]  # the Bernoulli decoder has no bits/dim
    nll = rates["nll"]
    assert nll["n_calibration"] == 150 and nll["calibration"]["slice"] == [300, 450]
    assert "at least 999" in nll["alphas"]["0.001"]["error"]  # 150 calibration images cannot support 0.001
    assert nll["alphas"]["0.01"]["rank"] == 150  # floor(0.01 * 151) = 1: only scores above the largest
    # an independent computation from the features (test features use seed 0 as evaluate's, calibration seed 1)
    assert nll["calibration"]["seed"] == 1 and nll["calibration"]["test_seed"] == 0
    cal = calibration_scores(run, "nll")
    s_in = -vaeood.compute_features(run, "fashion_mnist", "test", "log_px", data_dir=str(data))["log_px_nats"]
    s_ood = -vaeood.compute_features(run, "mnist", "test", "log_px", data_dir=str(data))["log_px_nats"]
    cal_again = -vaeood.compute_features(run, "fashion_mnist", "train", "log_px", start=300, stop=450, seed=1,
                                         data_dir=str(data))["log_px_nats"]
    np.testing.assert_allclose(cal, cal_again, rtol=1e-6)
    t = conformal.threshold(cal, 0.1)
    assert nll["alphas"]["0.1"]["fpr"] == pytest.approx((s_in > t.value).mean())
    assert nll["alphas"]["0.1"]["tpr"]["mnist"]["tpr"] == pytest.approx((s_ood > t.value).mean())
    table = format_decision_table(rates)
    assert "| nll | 0.1 | 150 |" in table and "TPR mnist" in table


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_the_decisions_page_python_example_runs(tmp_path, monkeypatch, capsys):
    """The Python block of docs/decisions.md, on a tiny normalised-decoder run."""
    import re
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "decisions.md").read_text()
    section = page[page.index("## In Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    data = tmp_path / "data"
    write_npz(data, "fashion_mnist", "train", blobs(400, 0))
    monkeypatch.setenv("VAEOOD_DATA", str(data))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "runs/fm", "--model.likelihood=dlogistic", "--data.limit=300", *TINY]) == 0
    (tmp_path / "new_images").mkdir()
    for i, img in enumerate([*blobs(5, 1), *strokes(5, 3)]):
        Image.fromarray(img).save(tmp_path / "new_images" / f"{i}.png")
    capsys.readouterr()
    exec(compile(code, "docs/decisions.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "10 images from new_images/" in printed and "Guarantee marginal" in printed
    assert len(_read_csv(tmp_path / "flags.csv")) == 10


def test_detect_writes_an_html_page_beside_the_csv_protected_like_it(tiny, tmp_path, capsys):
    """The page a person looks at (vaeood.decisions.detect_report): written beside the CSV and named in
    the "wrote" line, its counts and images those of the CSV and summary; an existing .html
    that detect did not write, or one linked into the run, is refused before any work."""
    from test_detect_report import Page, png_of

    run, folder = tiny["run"], tiny["folder"]
    _calibrated(tiny)
    out = tmp_path / "r.csv"
    assert main(["detect", str(run), str(folder), "--alpha", "0.1", "--out", str(out)]) == 0
    assert f"wrote {out}, {tmp_path / 'r.summary.json'} and {tmp_path / 'r.html'}" in capsys.readouterr().out
    rows = _read_csv(out)
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    page = Page((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert summary["html"] == "r.html" and page.text["n-images"] == "60"
    assert page.text["n-flagged"].startswith(f"{summary['n_flagged']} (") and \
        page.text["guarantee"] == summary["guarantee_text"]
    scores = np.array([float(r["score"]) for r in rows])
    most = page.sections["most-ood"]
    assert len(most) == 16 and most[0]["index"] == int(np.argmax(scores))
    for fig in most + page.sections["borderline"] + page.sections["typical"]:
        row = rows[fig["index"]]
        assert row["file"] in fig["caption"] and fig["flagged"] == (row["flagged"] == "1")
        original = np.asarray(Image.open(folder / row["file"]))
        np.testing.assert_array_equal(np.asarray(png_of(fig["img"]["src"])), original.repeat(3, 0).repeat(3, 1))
    assert png_of(page.histogram["src"]).size[0] > 400
    assert main(["detect", str(run), str(folder), "--out", str(out)]) == 0  # its own page is replaced

    (tmp_path / "mine.html").write_text("<p>mine</p>")
    (tmp_path / "lnk.html").symlink_to(run / "config.json")
    for name, message in (("mine", "mine.html exists and is not a file detect wrote"),
                          ("lnk", "lies inside the run directory"), ("page.html", "would be written over the CSV")):
        target = tmp_path / (name if name.endswith(".html") else name + ".csv")
        assert main(["detect", str(run), str(folder), "--out", str(target)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / (name + ".csv")).exists()
    assert (tmp_path / "mine.html").read_text() == "<p>mine</p>"
