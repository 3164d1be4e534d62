"""vaeood.ImageOODDetector: the arrays it reads (layout and value range never guessed), and,
on one tiny fitted detector, that it decides as ``vaeood detect`` does, saves, loads and
refuses a changed file."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import vaeood
from tinydata import blobs, strokes
from vaeood.cli import main
from vaeood.data.checksums import file_hexdigest
from vaeood.data.conform import conform_images
from vaeood.data.errors import DataError
from vaeood.image_arrays import as_images
from vaeood.image_detector import SavedDetectorError

SIZE = 16
TINY = {"model.base_channels": 4, "model.latent_dim": 4}


def test_a_layout_is_inferred_only_where_unambiguous():
    nhwc = np.stack(blobs(4, 0, size=SIZE, channels=3))
    assert np.array_equal(as_images(nhwc.transpose(0, 3, 1, 2)), nhwc)  # N×C×H×W: only the second axis is 3
    assert np.array_equal(as_images(torch.from_numpy(nhwc)), nhwc)  # a tensor as the array
    grey = np.stack(blobs(5, 0, size=SIZE))
    assert as_images(grey).shape == (5, SIZE, SIZE, 1)  # N×H×W: no axis of 1, 3 or 4
    both = np.zeros((2, 3, 8, 3), np.uint8)  # N×C×H×W with W = 3, or N×H×W×C with H = 3
    with pytest.raises(DataError, match=r"ambiguous layout.*channels='first'.*channels='last'"):
        as_images(both)
    assert as_images(both, channels="first").shape == (2, 8, 3, 3)
    with pytest.raises(DataError, match=r"neither its second nor its last axis"):
        as_images(np.zeros((2, 5, 8, 5), np.uint8))


def test_a_chw_image_is_never_read_as_hwc_or_as_grey_images():
    chw = np.zeros((3, SIZE, SIZE), np.uint8)
    with pytest.raises(DataError, match=r"shape \(3, 16, 16\): ambiguous, its first axis.*X\[None\]"):
        as_images(chw)
    with pytest.raises(DataError, match="no channel axis for channels='last'"):
        as_images(chw, channels="last")
    assert as_images(chw[None], channels="first").shape == (1, SIZE, SIZE, 3)
    assert as_images(chw, channels="none").shape == (3, SIZE, SIZE, 1)  # said to be three grey images


def test_floats_must_state_their_range():
    images = np.stack(blobs(3, 0, size=SIZE, channels=3))
    with pytest.raises(DataError, match=r"X has dtype float32; say what its values mean: value_range=\(0, 1\)"):
        as_images(images.astype(np.float32) / 255)
    assert np.array_equal(as_images(images.astype(np.float32) / 255, value_range=(0, 1)), images)
    assert np.array_equal(as_images(images.astype(np.float64), value_range=(0, 255)), images)
    with pytest.raises(DataError, match=r"values in \[0, 255\], outside value_range=\(0, 1\)"):
        as_images(images.astype(np.float32), value_range=(0, 1))
    with pytest.raises(DataError, match="value_range=\\(0, 100\\): must be \\(0, 1\\) or \\(0, 255\\)"):
        as_images(images.astype(np.float32), value_range=(0, 100))
    with pytest.raises(DataError, match="4 channels.*X\\[..., :3\\]"):
        as_images(np.zeros((2, SIZE, SIZE, 4), np.uint8))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A detector fitted on 250 RGB blobs (200 trained on, 50 held out), one epoch."""
    train = np.stack(blobs(250, 5, size=SIZE, channels=3))
    return vaeood.ImageOODDetector(epochs=1, detector="fused", overrides=TINY).fit(train)


def _new_images() -> np.ndarray:
    return np.concatenate([np.stack(blobs(6, 1, size=SIZE, channels=3)),
                           np.stack(strokes(6, 3, size=SIZE, channels=3))])


@pytest.mark.slow
def test_the_same_images_in_either_layout_give_bit_identical_scores(fitted):
    images = _new_images()
    nhwc = fitted.score_samples(images)
    assert np.array_equal(nhwc, fitted.score_samples(images.transpose(0, 3, 1, 2).copy()))
    assert np.array_equal(nhwc, fitted.score_samples(torch.from_numpy(images).permute(0, 3, 1, 2)))
    assert nhwc.dtype == np.float64 and nhwc.shape == (12,)
    assert nhwc[6:].min() > nhwc[:6].max()  # strokes are further from blobs than blobs are


@pytest.mark.slow
def test_predict_is_p_value_at_most_alpha(fitted):
    images = _new_images()
    p = fitted.p_values(images)
    assert np.array_equal(fitted.predict(images), (p <= fitted.alpha).astype(np.int64))
    n = len(fitted._record["scores"])
    assert np.allclose(p * (n + 1), np.round(p * (n + 1)))  # (1 + #{calibration scores ≥ s}) / (n + 1)


@pytest.mark.slow
def test_save_and_load_round_trip_and_the_cli_decides_with_the_saved_detector(fitted, tmp_path, capsys):
    images = _new_images()
    saved = tmp_path / "det"
    fitted.save(saved)
    loaded = vaeood.load(saved)
    assert np.array_equal(loaded.p_values(images), fitted.p_values(images))
    assert loaded.get_params() == {**fitted.get_params(), "run_dir": saved}
    folder = tmp_path / "new"
    folder.mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    assert main(["detect", str(saved), str(folder), "--out", str(tmp_path / "flags.csv")]) == 0, capsys.readouterr()
    with open(tmp_path / "flags.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["p_value"]) for r in rows] == pytest.approx(fitted.p_values(images), abs=1e-12)


@pytest.mark.slow
def test_load_refuses_a_saved_detector_changed_since(fitted, tmp_path):
    saved = tmp_path / "det"
    fitted.save(saved)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        fitted.save(saved)
    with pytest.raises(FileExistsError, match="already holds a run"):  # before its training data is replaced
        vaeood.ImageOODDetector(run_dir=saved).fit(np.zeros((200, SIZE, SIZE, 3), np.uint8))
    manifest = json.loads((saved / "detector.json").read_text())
    for files, message in (({**manifest["files"], "../elsewhere.npz": "0" * 64}, "lists '../elsewhere.npz', not a"),
                           ({k: v for k, v in manifest["files"].items() if k != "checkpoint.pt"},
                            "lists no SHA-256 of checkpoint.pt")):
        (saved / "detector.json").write_text(json.dumps({**manifest, "files": files}))
        with pytest.raises(SavedDetectorError, match=message):
            vaeood.load(saved)
    (saved / "detector.json").write_text(json.dumps(manifest))
    calibration = saved / "calibration" / "fused.npz"
    data = bytearray(calibration.read_bytes())
    data[-1] ^= 1
    calibration.write_bytes(bytes(data))
    with pytest.raises(SavedDetectorError, match=r"saved detector .*calibration/fused.npz changed since it was saved"):
        vaeood.load(saved)
    (saved / "detector.json").unlink()
    with pytest.raises(SavedDetectorError, match="no detector.json"):
        vaeood.load(saved)


def test_an_unfitted_detector_says_so():
    with pytest.raises(DataError, match=r"not fitted: call fit\(X\) first"):
        vaeood.ImageOODDetector().predict(np.zeros((1, SIZE, SIZE, 3), np.uint8))


@pytest.mark.slow
def test_fit_on_a_folder_named_without_a_slash(tmp_path, monkeypatch, caplog):
    """A folder (here ``photos``, no '/') is read as ``vaeood fit ./photos/`` reads it."""
    caplog.set_level(logging.INFO, logger="vaeood.training.run_dir")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    for i, img in enumerate(blobs(200, 5, size=SIZE, channels=3)):
        Image.fromarray(img).save(tmp_path / "photos" / f"{i:03d}.png")
    det = vaeood.ImageOODDetector(epochs=1, detector="fused", overrides=TINY).fit("photos")
    assert det.n_images_ == 200 and det.image_shape_ == (3, SIZE, SIZE)
    assert json.loads((det.run_dir_ / "config.json").read_text())["data"]["name"] == "photos/"
    assert det.predict(_new_images()[6:]).all()  # strokes, far from the blobs
    # an array of another size is scored after the run's recorded transform (resize), as detect scores it
    big = np.stack(blobs(4, 7, size=2 * SIZE, channels=3))
    scores = det.score_samples(big)
    np.testing.assert_array_equal(scores, det.score_samples(conform_images(big, (3, SIZE, SIZE), "resize")))
    assert sum("recorded transform, resize" in r.getMessage() for r in caplog.records) == 1  # said once


class _RunsAShellCommand:
    """Unpickling this runs a shell command: what a hostile saved fit would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _reseal(saved, changed: dict) -> None:
    """Rewrite the manifest's SHA-256 of each changed file, as an attacker who knows the format would."""
    manifest = json.loads((saved / "detector.json").read_text())
    manifest.update(changed)
    manifest["files"] = {name: file_hexdigest(saved / name, "sha256") for name in manifest["files"]}
    (saved / "detector.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_load_never_runs_code_from_the_file_and_reads_other_versions_by_the_format(fitted, tmp_path, caplog):
    images = _new_images()
    saved = tmp_path / "det"
    fitted.save(saved)
    pkl, marker = saved / "calibration" / "fused.fitted.pkl", tmp_path / "PWNED"
    pkl.write_bytes(pickle.dumps({"format": 2, "detector": _RunsAShellCommand(marker)}))
    with pytest.raises(SavedDetectorError, match=r"saved detector .*fused.fitted.pkl changed since it was saved"):
        vaeood.load(saved)
    # with every digest redone (the calibration record's and the manifest's), the fit is still never unpickled
    # outside the restricted loader: refused, fitted again, the same decisions
    calibration = saved / "calibration" / "fused.npz"
    with np.load(calibration) as f:
        scores, meta = f["scores"], json.loads(str(f["meta"]))
    meta["fitted_sha256"] = hashlib.sha256(pkl.read_bytes()).hexdigest()
    np.savez(calibration, scores=scores, meta=np.array(json.dumps(meta)))
    _reseal(saved, {})
    with caplog.at_level(logging.WARNING):
        loaded = vaeood.load(saved)
    assert not marker.exists()
    assert any("global posix.system is not allowed" in r.getMessage() for r in caplog.records), caplog.text
    assert np.array_equal(loaded.p_values(images), fitted.p_values(images))
    # another vaeood version: read when its format is this one's; another format refused
    _reseal(saved, {"vaeood_version": "0.0.1"})
    assert np.array_equal(vaeood.load(saved).p_values(images), fitted.p_values(images))
    _reseal(saved, {"format": 2})
    with pytest.raises(SavedDetectorError, match="of format 2, but this vaeood reads format 1; fit and save it again"):
        vaeood.load(saved)


def test_a_backbone_that_is_unknown_or_read_by_no_detector_is_refused_before_anything_is_written(tmp_path, capsys):
    images = np.stack(blobs(250, 5, size=SIZE, channels=3))
    with pytest.raises(vaeood.training.config.ConfigError, match="backbone must be one of efficientnet_lite0, "):
        vaeood.ImageOODDetector(backbone="resnet", run_dir=tmp_path / "a").fit(images)
    with pytest.raises(vaeood.training.config.ConfigError, match="detector 'nll' reads no pretrained backbone"):
        vaeood.ImageOODDetector(detector="nll", backbone="efficientnet_lite2", run_dir=tmp_path / "b").fit(images)
    assert main(["fit", "fashion_mnist", "--out", str(tmp_path / "c"), "--backbone", "resnet"]) != 0
    assert "backbone must be one of" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.slow  # e2e: trains a model
def test_the_chosen_backbone_is_the_one_the_fitted_detector_reads(tmp_path):
    train = np.stack(blobs(250, 5, size=SIZE, channels=3))
    det = vaeood.ImageOODDetector(epochs=1, detector="feature_knn", backbone="efficientnet_lite2", overrides=TINY,
                                  run_dir=tmp_path / "run").fit(train)
    assert det._record["detector_options"]["backbone"] == "efficientnet_lite2"
    cached = sorted(p.name for p in (tmp_path / "run" / "features").rglob("*backbone*"))
    assert cached and all("efficientnet_lite2" in name for name in cached)
    # the same fit with the default backbone scores the same new images otherwise
    lite0 = vaeood.ImageOODDetector(epochs=1, detector="feature_knn", overrides=TINY).fit(train)
    new = _new_images()
    assert not np.allclose(det.score_samples(new), lite0.score_samples(new))


@pytest.mark.slow  # e2e: trains a model
def test_labels_given_with_an_array_reach_the_detectors_that_fit_a_classifier(tmp_path):
    # sorted by class: in the given order the held-out fifth the detectors fit on would be all class 1
    train = np.concatenate([blobs(125, 5, size=SIZE, channels=3), strokes(125, 3, size=SIZE, channels=3)])
    y = np.repeat([0, 1], 125)
    det = vaeood.ImageOODDetector(epochs=1, detector="feature_energy", overrides=TINY, run_dir=tmp_path / "run")
    det.fit(train, y)  # feature_energy refuses images without two labelled classes: the labels got there
    with np.load(tmp_path / "run" / "data" / "images_train.npz") as saved:
        order = saved["order"]
        assert sorted(order) == list(range(250)) and not np.array_equal(order, np.arange(250))
        assert np.array_equal(saved["x"], train[order]) and np.array_equal(saved["y"], y[order])
        assert 0.3 < saved["y"][-50:].mean() < 0.7  # both classes in the last fifth
    assert det.predict(train[:5]).shape == (5,)
    with pytest.raises(vaeood.training.config.ConfigError, match="feature_energy: .*hold 1 class"):
        vaeood.ImageOODDetector(epochs=1, detector="feature_energy", overrides=TINY).fit(train)


def test_labels_are_refused_unless_one_integer_per_image_of_an_array(tmp_path):
    images = np.zeros((4, SIZE, SIZE, 3), np.uint8)
    for y, why in (([0, 1, 1], r"shape \(4,\), got shape \(3,\)"), ([0, 1, 1, 0.5], "integer class labels"),
                   ([0, 1, -1, 0], "labels >= 0"), (np.array(["a"] * 4), "integer class labels")):
        with pytest.raises(ValueError, match=f"y: expected .*{why}"):
            vaeood.ImageOODDetector(run_dir=tmp_path / "r").fit(images, y)
    with pytest.raises(ValueError, match="labels are for images given as an array"):
        vaeood.ImageOODDetector(run_dir=tmp_path / "r").fit(str(tmp_path), [0])
    assert not (tmp_path / "r").exists()
