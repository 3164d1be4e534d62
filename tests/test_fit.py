"""``vaeood fit FOLDER --out MODEL`` then ``vaeood detect MODEL FOLDER``: the README's first
example, on real images (the bundled Fashion-MNIST and MNIST sample, so it never skips)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from vaeood.cli import main
from vaeood.decisions.conformal_rates import binomial_upper
from vaeood.data.sample import load_sample
from vaeood.decisions.records import calibrated_detectors, default_detector
from vaeood.pipeline import holdout_for


def _pngs(folder, images, prefix):
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0]).save(folder / f"{prefix}{i:04d}.png")


def _flags(path) -> tuple[np.ndarray, np.ndarray]:
    """The flags of the Fashion-MNIST files and of the MNIST files of a detect CSV."""
    with open(path, newline="") as f:
        rows = {r["file"]: int(r["flagged"]) for r in csv.DictReader(f)}
    return (np.array([v for k, v in rows.items() if k.startswith("fm")]),
            np.array([v for k, v in rows.items() if k.startswith("mn")]))


@pytest.mark.slow
def test_fit_on_a_folder_then_detect_a_mixed_folder_keeps_the_fpr_and_finds_mnist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _pngs(tmp_path / "train", load_sample("fashion_mnist", "train").images, "fm")  # 3,000 real images
    _pngs(tmp_path / "new", load_sample("fashion_mnist", "test").images[:500], "fm")
    _pngs(tmp_path / "new", load_sample("mnist", "test").images[:500], "mn")

    assert main(["fit", "train/", "--out", "model", "--train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "trained model on 2400 of the 3000 images of train/ " in out and "600 held out for the detector" in out
    # a flat folder has no classes: the content view is feature_knn alone, and the line says why
    assert ("calibrated detector fused_content (content: feature_knn alone; no feature_energy: the fit images are "
            "unlabelled (a flat folder, or an array fitted without y)) on the held-out images (fitted on [2400:2700], "
            "calibrated on [2700:3000])") in out
    assert "next: vaeood detect model IMAGES --out flagged.csv" in out
    assert calibrated_detectors("model") == ["fused_content"] and default_detector("model") == "fused_content"

    assert main(["detect", "model", "new/", "--out", "flags.csv"]) == 0  # no --detector: the calibrated default
    fm, mn = _flags(tmp_path / "flags.csv")
    assert len(fm) == len(mn) == 500
    assert fm.mean() <= binomial_upper(0.05, 500)  # FPR ≤ α within binomial error
    # the default flags 92% of the MNIST digits (measured), the pixel view alone 95% or more: on digits the
    # content view adds nothing and the truncated rule counts the pixel view only below p = 0.05 (docs/findings.md)
    assert mn.mean() >= 0.90
    assert main(["calibrate", "model", "--detector", "fused"]) == 0
    assert main(["detect", "model", "new/", "--detector", "fused", "--out", "fused.csv"]) == 0
    fm, mn = _flags(tmp_path / "fused.csv")
    assert fm.mean() <= binomial_upper(0.05, 500) and mn.mean() >= 0.95  # TPR on MNIST of the pixel view
    assert (tmp_path / "flags.html").is_file() and (tmp_path / "flags.summary.json").is_file()


def test_the_held_out_count_and_what_fit_refuses(tmp_path, capsys):
    assert [holdout_for(n) for n in (200, 1000, 35000, 60000)] == [40, 200, 7000, 7000]
    assert main(["fit", "fashion_mnist", "--out", str(tmp_path / "m"), "--data.holdout=10"]) == 2
    assert "vaeood fit chooses data.name (its SOURCE) and data.holdout" in capsys.readouterr().err
    folder = tmp_path / "few"
    _pngs(folder, load_sample("fashion_mnist", "test").images[:50], "x")
    assert main(["fit", str(folder), "--out", str(tmp_path / "m")]) == 2
    assert "50 images; vaeood fit needs at least 200" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # e2e: the command line trains and scores models
def test_fit_counts_a_folder_as_training_reads_it_with_skip_bad(tmp_path, capsys):
    """The held-out count comes from the images training uses: data.skip_bad applies to it too."""
    folder = tmp_path / "imgs"
    _pngs(folder, load_sample("fashion_mnist", "test").images[:250], "x")
    (folder / "notes.png").write_text("not an image")
    tiny = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--detector", "nll"]
    assert main(["fit", str(folder), "--out", str(tmp_path / "refused"), *tiny]) == 2
    assert "notes.png" in capsys.readouterr().err
    assert main(["fit", str(folder), "--out", str(tmp_path / "m"), "--data.skip_bad=true", *tiny]) == 0
    assert "on 200 of the 250 images" in capsys.readouterr().out  # the bad file counted out, 50 held out


@pytest.mark.slow  # e2e: the command line trains a model
def test_fit_warns_when_a_files_classes_are_sorted_across_its_split(tmp_path, capsys, caplog):
    """A file sorted by class would calibrate on its last classes alone: said, naming them."""
    sample = load_sample("fashion_mnist", "test")
    order = np.argsort(sample.labels[:250], kind="stable")
    np.savez(tmp_path / "shop_train.npz", x=sample.images[:250][order], y=sample.labels[:250][order])
    tiny = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--detector", "nll"]
    assert main(["fit", "shop", "--data-dir", str(tmp_path), "--out", str(tmp_path / "m"), *tiny]) == 0
    said = capsys.readouterr().err + caplog.text
    y = sample.labels[:250][order]
    never_trained = sorted(set(y[200:].tolist()) - set(y[:200].tolist()))  # the last classes, held out only
    assert "its classes are not mixed across vaeood fit's split" in said and len(never_trained) >= 2
    assert f"the training images: no image of classes {', '.join(map(str, never_trained))}" in said


def test_a_split_is_called_unmixed_only_when_its_classes_differ_by_far():
    from vaeood.data.split_order import unmixed_split

    parts = {"first": (0, 800), "middle": (800, 900), "last": (900, 1000)}
    y = np.repeat(np.arange(10), 100)
    assert unmixed_split(y, parts) == ("first: no image of classes 8, 9; middle: no image of classes 0, 1, 2, 3, "
                                       "4, 5, 6, 7, 9; last: no image of classes 0, 1, 2, 3, 4, 5, 6, 7, 8")
    assert unmixed_split(np.random.default_rng(0).permutation(y), parts) is None  # a random order
    assert unmixed_split(np.zeros(1000, int), parts) is None  # unlabelled
    assert unmixed_split(np.arange(1000), parts) is None  # image ids, not classes: each in one part by necessity
    many = np.repeat(np.arange(100), 10)  # sorted: the last fifth's 20 classes never trained on, named up to ten
    assert unmixed_split(many, {"a": (0, 800), "b": (800, 1000)}) == \
        "a: no image of classes 80, 81, 82, 83, 84, 85, 86, 87, 88, 89 … (20 classes)"  # b expects 2 a class: unnamed
    # the same shares in every part, however the first part is ordered within itself
    assert unmixed_split(np.r_[np.repeat([0, 1], 400), np.tile([0, 1], 100)], {"a": (0, 800), "b": (800, 1000)}) is None
    skewed = np.r_[np.tile([0, 0, 0, 1], 200), np.tile([0, 1, 1, 1], 50)]  # 25% against 75% of class 1
    assert unmixed_split(skewed, {"a": (0, 800), "b": (800, 1000)}).startswith("the class shares differ between")
