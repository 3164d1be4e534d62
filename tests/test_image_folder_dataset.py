"""A folder of PNG/JPEG images as a dataset: ``load_dataset(folder, split)`` and
``--data.name=FOLDER`` / ``--dataset`` / ``--in`` / ``--ood`` (vaeood.data.folder_dataset).

The first test writes real Fashion-MNIST images (a few hundred, from
``$VAEOOD_DATA/fashion_mnist_train.npz``, the shared data; skipped without it) as PNG
files in two class folders and checks the loader returns exactly those pixels and labels
in its documented order. The others use small synthetic images (tests/tinydata.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import vaeood
from tinydata import blobs, strokes, write_npz
from vaeood.training.checkpoint import load_checkpoint
from vaeood.cli import main
from vaeood.data import DataError, load_dataset
from vaeood.decisions.records import NoCalibrationError, calibration_path, load_calibration
from vaeood.decisions.fitted_detector import fitted_path

MLP = ["--train.epochs=1", "--model.arch=mlp", "--model.hidden_dim=32", "--model.latent_dim=4",
       "--train.batch_size=32"]


def _shared_fashion_mnist() -> Path:
    for where in (os.environ.get("VAEOOD_DATA"), Path(__file__).parents[2] / "shared" / "data"):
        if where and (Path(where) / "fashion_mnist_train.npz").is_file():
            return Path(where) / "fashion_mnist_train.npz"
    pytest.skip("real Fashion-MNIST (fashion_mnist_train.npz in $VAEOOD_DATA) not available")


def _hash_order(names):
    return sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())


def _write(folder: Path, images, prefix="img", sub: str | None = None) -> list[str]:
    where = folder / sub if sub else folder
    where.mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(where / f"{prefix}_{i:03d}.png")
        names.append(f"{sub}/{prefix}_{i:03d}.png" if sub else f"{prefix}_{i:03d}.png")
    return names


def test_real_fashion_mnist_pngs_in_class_folders_load_exactly_in_hash_order(tmp_path):
    with np.load(_shared_fashion_mnist()) as f:
        x, y = f["x"][:2000], f["y"][:2000]
    x = x.reshape(len(x), 28, 28)
    folder = tmp_path / "fm"
    expected = {}  # relative name -> (pixels, label)
    for label, cls in ((0, "0_tshirt"), (1, "1_trouser")):
        for i in np.flatnonzero(y == label)[:120]:
            (folder / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / cls / f"{i:05d}.png")
            expected[f"{cls}/{i:05d}.png"] = (x[i], label)
    order = _hash_order(expected)

    data = load_dataset(str(folder), "train")
    assert len(data) == len(expected) == 240 and data.shape == (28, 28, 1)
    assert np.array_equal(data.images[..., 0], np.stack([expected[n][0] for n in order]))
    assert np.array_equal(data.labels, [expected[n][1] for n in order])
    assert data.name == "fm" and data.split == "train"
    assert data.folder["classes"] == ["0_tshirt", "1_trouser"]
    # in name order the last images would all be trousers; in hash order both classes are held out
    assert set(data.labels[-40:]) == {0, 1}

    again = load_dataset(str(folder) + "/", "train")  # deterministic; a trailing '/' is the same folder
    assert np.array_equal(again.images, data.images) and again.source == data.source
    recorded = json.dumps(data.provenance())
    assert str(tmp_path) not in recorded and "'fm'" in data.source
    assert data.folder["sha256"] in data.source

    # one file's bytes change but not its pixels (a text chunk): the digest changes
    first = folder / order[0]
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "a")
    Image.open(first).save(first, pnginfo=info)
    before = first.read_bytes()
    info = PngImagePlugin.PngInfo()
    info.add_text("note", "b")
    Image.open(first).save(first, pnginfo=info)
    assert len(first.read_bytes()) == len(before) and first.read_bytes() != before
    changed = load_dataset(str(folder), "train")
    assert np.array_equal(changed.images, data.images)
    assert changed.folder["sha256"] != data.folder["sha256"] and changed.source != data.source


def test_a_plain_word_is_never_a_folder_and_a_flat_folder_is_unlabelled(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    write_npz(data_dir, "pets", "train", blobs(20, 0))
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "pets", strokes(5, 1))  # a folder named like the dataset, here
    assert len(load_dataset("pets", "train", data_dir=data_dir)) == 20  # the npz, as before
    flat = load_dataset("./pets", "train")
    assert len(flat) == 5 and (flat.labels == -1).all() and flat.folder["classes"] == []
    with pytest.raises(DataError, match="no such folder"):
        load_dataset("./missing", "train")


def _bad_folder(root: Path) -> Path:
    folder = root / "bad"
    _write(folder, blobs(40, 0))
    good = (folder / "img_000.png").read_bytes()
    (folder / "corrupt.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(blobs(1, 5, size=32)[0]).save(folder / "odd.png")
    (folder / "notes.png").write_text("not an image\n")
    return folder


def test_a_bad_folder_is_refused_naming_each_file_or_trains_skipping_or_fitting_them(tmp_path, capsys):
    folder = _bad_folder(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(run), f"--data.name={folder}", *MLP]) == 2
    err = capsys.readouterr().err
    assert "3 of 43 files cannot be used" in err
    assert "corrupt.png: truncated or corrupt" in err
    assert "odd.png: C×H×W = 1×32×32, not the folder's most common shape C×H×W = 1×28×28" in err
    assert "data.conform=" in err and "notes.png: not an image file" in err and "data.skip_bad=true" in err

    assert main(["train", str(run), f"--data.name={folder}", "--data.skip_bad=true", *MLP]) == 0
    trained = load_checkpoint(run)["train_data"]
    assert trained["split_size"] == 40 and trained["name"] == "bad"
    assert [name for name, _ in trained["folder"]["skipped"]] == ["corrupt.png", "notes.png", "odd.png"]
    assert "3 bad files skipped" in trained["source"] and str(tmp_path) not in json.dumps(trained)

    fitted = tmp_path / "fitted"
    assert main(["train", str(fitted), f"--data.name={folder}", "--data.skip_bad=true", "--data.conform=resize",
                 *MLP]) == 0
    trained = load_checkpoint(fitted)["train_data"]
    assert trained["split_size"] == 41
    assert [name for name, _ in trained["folder"]["skipped"]] == ["corrupt.png", "notes.png"]
    assert trained["folder"]["conform"]["method"] == "resize" and trained["folder"]["conform"]["changed"] == 1
    assert trained["folder"]["conform"]["from_shapes"] == {"1×32×32": 1}
    data = load_dataset(str(folder), "train", conform="resize", skip_bad=True)
    assert data.shape == (28, 28, 1) and len(data) == 41


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_train_on_a_folder_then_score_evaluate_calibrate_and_refuse_it_changed(tmp_path, capsys):
    train_dir, test_in, test_ood = tmp_path / "train", tmp_path / "test_in", tmp_path / "test_ood"
    _write(train_dir, blobs(60, 0), sub="round")
    _write(train_dir, strokes(60, 1), sub="lines")
    _write(test_in, blobs(20, 2))
    _write(test_ood, strokes(20, 3))
    run = tmp_path / "run"
    assert main(["train", str(run), f"--data.name={train_dir}", "--data.holdout=40", *MLP]) == 0
    trained = load_checkpoint(run)["train_data"]
    assert trained["trained_range"] == [0, 80] and trained["folder"]["classes"] == ["lines", "round"]

    assert main(["log-px", str(run), "--dataset", str(test_in)]) == 0
    assert main(["evaluate", str(run), "--in", str(test_in), "--ood", str(test_ood), "--detectors", "nll",
                 "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert str(test_ood) in json.dumps(metrics)
    capsys.readouterr()

    record = vaeood.calibrate(run, "nll")
    assert record["calibration_slice"] == [80, 120] and record["dataset"] == str(train_dir)
    assert load_calibration(run)["n_calibration"] == 40
    decided = vaeood.decide(run, test_ood)
    assert len(decided.flagged) == 20

    # one image's bytes change (same count): the held-out images are not those training left out
    first = train_dir / "round" / "img_000.png"
    Image.fromarray(255 - blobs(1, 0)[0]).save(first)
    with pytest.raises(NoCalibrationError, match="folder 'train' changed since the run trained on it"):
        vaeood.calibrate(run, "nll")
    # detect rests on the model and the saved calibration scores and fit, each checked, not on the folder:
    # it decides as before; without the saved fit it must refit on the folder, and refuses
    np.testing.assert_array_equal(vaeood.decide(run, test_ood).scores, decided.scores)
    fitted_path(calibration_path(run, "nll")).unlink()
    with pytest.raises(NoCalibrationError, match="changed since the run trained on it"):
        vaeood.decide(run, test_ood)
    first.unlink()  # one file fewer: refused the same way, naming both counts
    with pytest.raises(NoCalibrationError, match="then: 120 images.*now: 119 images"):
        vaeood.calibrate(run, "nll")


def test_class_folder_layout_hidden_files_and_files_beside_the_classes(tmp_path, caplog):
    folder = tmp_path / "pets"
    _write(folder, blobs(3, 0), sub="cat")
    _write(folder, strokes(2, 1), sub="dog")
    (folder / "cat" / ".DS_Store").write_bytes(b"\0")
    (folder / ".git").mkdir()
    Image.fromarray(blobs(1, 2)[0]).save(folder / "stray.png")
    with pytest.raises(DataError, match="stray.png: a file beside the class folders"):
        load_dataset(str(folder), "train")
    data = load_dataset(str(folder), "train", skip_bad=True)
    assert len(data) == 5 and sorted(data.labels.tolist()) == [0, 0, 0, 1, 1]
    assert data.folder["skipped"] == [["stray.png", "a file beside the class folders (put it in one of them)"]]
    assert [name for name, _ in data.folder["left_out"]] == [".git", "cat/.DS_Store"]
    assert data.provenance()["folder"]["classes"] == ["cat", "dog"]


def test_a_link_up_inside_a_class_folder_is_a_loop_as_at_the_top(tmp_path):
    folder = tmp_path / "pets"
    _write(folder, blobs(3, 0), sub="cat")
    _write(folder, strokes(2, 1), sub="dog")
    (folder / "cat" / "up").symlink_to("..")  # the folder above the class: a loop, not a subfolder
    (folder / "dog" / "self").symlink_to(".")
    (folder / "dog" / "inner").mkdir()  # a real subfolder stays one
    data = load_dataset(str(folder), "train", skip_bad=True)
    loop = "a symbolic link to this folder or one above it (a loop): not followed"
    assert len(data) == 5 and sorted(map(tuple, data.folder["skipped"])) == [
        ("cat/up", loop), ("dog/inner", "a subfolder (folders are not read recursively)"), ("dog/self", loop)]


def test_a_folder_is_decoded_into_one_array_never_stacked_from_a_list(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    _write(folder, blobs(6, 0))
    Image.fromarray(blobs(1, 1, size=20)[0]).save(folder / "small.png")

    def no_stack(*args, **kwargs):
        raise AssertionError("np.stack called: the images would be held twice")
    monkeypatch.setattr(np, "stack", no_stack)
    data = load_dataset(str(folder), "test", conform="pad")
    assert len(data) == 7 and data.images.flags["C_CONTIGUOUS"] and data.images.flags["OWNDATA"]
    assert data.split == "test" and data.folder["conform"]["changed"] == 1
    small = [i for i, n in enumerate(sorted(["small.png", *[f"img_{i:03d}.png" for i in range(6)]],
             key=lambda n: hashlib.sha256(n.encode()).hexdigest())) if n == "small.png"][0]
    assert (data.images[small, :4] == 0).all() and (data.images[small, -4:] == 0).all()  # padded 20 → 28


def test_an_unchanged_folder_is_reused_in_a_process_and_a_changed_one_read_again(tmp_path, caplog):
    folder = tmp_path / "f"
    _write(folder, blobs(4, 0))
    first = load_dataset(str(folder), "train")
    first.images[:] = 0  # the caller's own copy
    with caplog.at_level(logging.DEBUG, logger="vaeood.data"):
        again = load_dataset(str(folder), "test")
    assert "reusing it" in caplog.text and again.split == "test"
    assert again.images.any() and again.folder["sha256"] == first.folder["sha256"]
    Image.fromarray(strokes(1, 1)[0]).save(folder / "img_000.png")  # another size and time: read again
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="vaeood.data"):
        changed = load_dataset(str(folder), "train")
    assert "reusing it" not in caplog.text and changed.folder["sha256"] != first.folder["sha256"]


def test_an_existing_folder_is_that_folder_with_or_without_a_slash_unless_a_dataset_of_that_name_is_found(
        tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "photos", blobs(4, 0))
    plain, slashed = load_dataset("photos", "train"), load_dataset("photos/", "train")
    assert plain.folder["sha256"] == slashed.folder["sha256"] and len(plain) == 4
    _write(tmp_path / "mnist", blobs(4, 1))
    write_npz(tmp_path / "data", "mnist", "train", strokes(6, 2))
    with caplog.at_level(logging.WARNING, logger="vaeood.data"):
        official = load_dataset("mnist", "train", data_dir=tmp_path / "data")
    assert len(official) == 6 and official.folder is None  # the dataset, not the folder
    assert "'mnist' is both a dataset and a folder here: using the dataset (write ./mnist for the folder)" \
        in caplog.text


def test_the_working_size_is_the_median_scaled_to_a_long_side_of_64(tmp_path):
    from vaeood.data.working_size import working_size

    for i, (h, w) in enumerate([(480, 640), (480, 640), (100, 80), (300, 400)]):
        Image.fromarray(np.zeros((h, w), np.uint8)).save(tmp_path / f"{i}.png")
    assert working_size(tmp_path) == (48, 64)  # median 390×520, scaled by 64/520
    assert working_size(tmp_path, max_side=1000) == (390, 520)  # never scaled up
    folder = load_dataset(str(tmp_path), "train", conform="resize", image_size=(48, 64))
    assert folder.images.shape == (4, 48, 64, 1) and folder.folder["conform"]["changed"] == 4


def test_fit_image_size_is_checked_as_the_config_field(tmp_path, capsys):
    _write(tmp_path / "photos", blobs(4, 0))
    assert main(["fit", str(tmp_path / "photos"), "--out", str(tmp_path / "m"), "--image-size", "0", "5"]) == 2
    assert "data.image_size = [0, 5]: must be [H, W]: two whole numbers ≥ 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
