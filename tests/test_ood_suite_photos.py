"""The ood-suite's photo family (``tinyimagenet64``) on a tiny folder of photos in Tiny ImageNet's
layout that the test writes itself: the sets it writes, the detectors it runs and leaves out,
the default detector and the decisions in metrics.json and the report."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from vaeood.data.errors import DataError
from vaeood.experiments import EXPERIMENTS
from vaeood.experiments.ood_suite import FAMILIES, SYNTHETIC, OODSuite
from vaeood.experiments.ood_suite.photos import NEAR_SAMPLE_SEED, find_photos, write_photo_sets
from vaeood.experiments.ood_suite.presets import DEFAULT_DETECTOR, TIN, TIN_OTHER

TRAIN = ("n00000001", "n00000002")  # the training classes
OTHER = ("n00000003", "n00000004", "n00000005")  # val/ only
HUES = {"n00000001": (200, 60, 40), "n00000002": (40, 80, 200), "n00000003": (60, 180, 60),
        "n00000004": (200, 200, 40), "n00000005": (120, 40, 160)}


def _photo(rng, wnid: str) -> np.ndarray:
    """A 64×64 RGB photo stand-in: the class's colour, a bright square somewhere, noise."""
    x = np.empty((64, 64, 3))
    x[:] = HUES[wnid]
    r, c = rng.integers(0, 40, 2)
    x[r:r + 24, c:c + 24] += 50
    return np.clip(x + rng.normal(0, 25, x.shape), 0, 255).astype(np.uint8)


def write_tiny_tin(root, n_train: int = 20, n_val: int = 4):
    """``root/tinyimagenet64/``: ``train/`` (n_train JPEGs per training class, the first one of the
    first class grey), ``val/`` (n_val per class of all five, one grey) and ``classes.tsv``."""
    rng = np.random.default_rng(0)
    folder = root / "tinyimagenet64"
    for split, wnids, n in (("train", TRAIN, n_train), ("val", TRAIN + OTHER, n_val)):
        for wnid in wnids:
            (folder / split / wnid).mkdir(parents=True)
            for i in range(n):
                image = Image.fromarray(_photo(rng, wnid))
                grey = i == 0 and wnid == wnids[0]
                (image.convert("L") if grey else image).save(folder / split / wnid / f"{split}_{wnid}_{i}.JPEG",
                                                             quality=90)
    rows = [f"{w}\tclass {w[-1]}, a made-up thing\t{int(w in TRAIN)}" for w in TRAIN + OTHER]
    (folder / "classes.tsv").write_text("wnid\twords\tin_train\n" + "\n".join(rows) + "\n")
    return folder


def test_the_photo_sets_split_val_by_class_draw_a_fixed_sample_and_record_grey_photos(tmp_path, monkeypatch):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)  # a folder without photos must find none, not the user's
    src = write_tiny_tin(tmp_path / "data")
    fam = FAMILIES[TIN]
    assert find_photos(fam, str(tmp_path / "data")) == src and find_photos(fam, str(tmp_path)) is None
    record = write_photo_sets(fam, src, tmp_path / "sets", limit=5)
    again = write_photo_sets(fam, src, tmp_path / "again", limit=5)
    assert record["sets"] == again["sets"]  # the same draw every time (seed NEAR_SAMPLE_SEED)
    assert record["near_sample_seed"] == NEAR_SAMPLE_SEED and record["other_classes"] == 3
    assert [c["wnid"] for c in record["classes"]] == list(TRAIN) and record["classes"][0]["words"].startswith("class")
    assert record["grey_to_rgb"] == {"train": 1, "val": 1}
    sets = {k: np.load(tmp_path / "sets" / f"{k.replace('/', '_')}.npz") for k in record["sets"]}
    train, test, near = sets[f"{TIN}/train"], sets[f"{TIN}/test"], sets[f"{TIN_OTHER}/test"]
    assert train["x"].shape == (40, 64, 64, 3) and sorted(np.bincount(train["y"])) == [20, 20]
    assert test["x"].shape == (8, 64, 64, 3) and set(test["y"]) == {0, 1}
    assert near["x"].shape == (5, 64, 64, 3) and near["y"].min() >= 2  # never a training class
    assert record["sets"][f"{TIN}/train"]["grey"] == 1 and record["sets"][f"{TIN}/test"]["grey"] == 1
    for s in record["sets"].values():
        assert "SHA-256" in s["source"] and "/tmp" not in s["source"] and str(tmp_path) not in s["source"]
    everything = write_photo_sets(fam, src, tmp_path / "all", limit=None)
    assert everything["sets"][f"{TIN_OTHER}/test"]["n"] == 12


def test_a_training_class_missing_from_val_is_refused(tmp_path):
    src = write_tiny_tin(tmp_path, n_train=2, n_val=1)
    for f in (src / "val" / TRAIN[1]).iterdir():
        f.unlink()
    (src / "val" / TRAIN[1]).rmdir()
    with pytest.raises(DataError, match=TRAIN[1]):
        write_photo_sets(FAMILIES[TIN], src, tmp_path / "sets", limit=None)


@pytest.fixture(scope="module")
def photo_suite(tmp_path_factory):
    """The smoke preset's settings on the photo family alone, one seed, few images (40 training
    photos: 16 trained on, 12 to fit on, 12 to calibrate on; 8 + 12 val photos, 12 noise and 12
    constant images) and a few detectors: the default, one that declares a companion model, `nll`."""
    root = tmp_path_factory.mktemp("photo_suite")
    write_tiny_tin(root / "data")
    smoke = EXPERIMENTS.get("ood-suite").presets["smoke"]
    tiny = replace(smoke, seeds=(0,), n_fits={TIN: 12}, test_limits={TIN: 12},
                   detectors=("nll", "likelihood_ratio", "feature_knn", DEFAULT_DETECTOR))
    suite = OODSuite("ood-suite", "OOD detector suite", FAMILIES, {"smoke": tiny})
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.delenv("VAEOOD_DATA", raising=False)
    mp.setenv("HOME", str(root / "home"))
    try:
        suite.run(out, "smoke", data_dir=str(root / "data"), families=(TIN,), progress=False,
                  overrides={"data.limit": "16", "model.base_channels": "4", "model.latent_dim": "4"})
    finally:
        mp.undo()
    return out, json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text()


@pytest.mark.slow  # e2e: trains a VAE and runs the backbone on about 100 photos (15-30 s on 2 cores)
def test_the_photo_family_runs_the_default_detector_with_decisions_and_says_what_the_backbone_saw(photo_suite):
    out, metrics, report = photo_suite
    fam = metrics["families"][TIN]
    assert fam["ood"] == [TIN_OTHER, *SYNTHETIC]
    assert fam["kinds"] == {TIN_OTHER: "near", "uniform_noise": "far", "constant": "far"}
    assert {f"{TIN}/train", f"{TIN}/test", f"{TIN_OTHER}/test"} <= set(fam["data"])
    for name in (f"{TIN}_train", f"{TIN}_test", f"{TIN_OTHER}_test"):
        assert (out / "runs" / "data" / TIN / f"{name}.npz").is_file()
    with np.load(out / "runs" / "data" / "3x64x64" / "uniform_noise_test.npz") as f:
        assert f["x"].shape[1:] == (64, 64, 3)
    # no extra models for 64×64 photos: the detectors that declare one are left out, and the report says why
    assert list(fam["left_out"]) == ["likelihood_ratio"] and "background" in fam["left_out"]["likelihood_ratio"]
    assert list(fam["seeds"]["0"]["training"]) == ["main"]
    assert list(fam["summary"]) == ["nll", "feature_knn", DEFAULT_DETECTOR]
    pairs = [f"{TIN}→{o}" for o in fam["ood"]]
    assert list(metrics["verdict"]["default"]) == pairs
    decisions = fam["seeds"]["0"]["detectors"][DEFAULT_DETECTOR]["decisions"]
    assert decisions["alphas"]["0.1"]["tpr"].keys() == set(fam["ood"])  # 12 calibration photos: α = 0.1 at least
    assert fam["seeds"]["0"]["fit_data"]["n"] == 12
    # each fitted detector is fitted once: the calibration (seed 1) took evaluate's fit (seed 0)
    for name in ("feature_knn", DEFAULT_DETECTOR):
        with np.load(out / "runs" / f"{TIN}-seed0" / "main" / "calibration" / f"{name}.npz") as f:
            record = json.loads(str(f["meta"]))
        assert (record["seed"], record["fit_seed"]) == (1, 0)
    assert "### Tiny ImageNet 64" in report  # its decisions table
    assert f"`{DEFAULT_DETECTOR}`, the detector to pick, on every pair" in report
    assert f"{TIN}→{TIN_OTHER}" in report and "leaves out `likelihood_ratio`" in report
    assert "pretrained on ImageNet" in report and "Every one of these classes is an ImageNet class" in report
    assert metrics["backbone"]["pretrained_on"].startswith("ImageNet")
    text = (out / "metrics.json").read_text() + report
    assert not re.search(r"(?<![\w.])/(tmp|home|root|work)/", text)


def test_the_default_table_gives_the_default_minus_the_better_of_its_two_views():
    """The suite's headline table: on rotated digits the pixel view is better (0.969) and the
    default 0.908 is 0.061 below it, flagged; on a photo pair the content view is the better one."""
    from vaeood.experiments.ood_suite.report_parts import default_table

    def stats(m):
        return {"auroc": {"mean": m}}

    out = {"verdict": {"default": {"mnist→mnist_rot90": {"auroc": 0.908, "interval": [0.9, 0.92], "verdict": "ok"},
                                   "cifar10→tinyimagenet": {"auroc": 0.83, "interval": [0.82, 0.84], "verdict": "ok"}},
                       "pixel": {"mnist→mnist_rot90": {"auroc": 0.969, "interval": [0.96, 0.97]},
                                 "cifar10→tinyimagenet": {"auroc": 0.66, "interval": [0.65, 0.67]}}},
           "families": {"mnist": {"kinds": {"mnist_rot90": "near"},
                                  "summary": {"feature_knn": {"mnist_rot90": stats(0.785)},
                                              "feature_gaussian": {"mnist_rot90": stats(0.70)}}},
                        "cifar10": {"summary": {"feature_knn": {"tinyimagenet": stats(0.84)},
                                                "feature_gaussian": {"tinyimagenet": stats(0.75)}}}}}
    rows = [line for line in "\n".join(default_table(out)).splitlines() if line.startswith(("| mnist", "| cifar10"))]
    assert "0.785 (`feature_knn`)" in rows[0] and "-0.061 **(below by more than 0.02)**" in rows[0]
    assert "0.840 (`feature_knn`)" in rows[1] and "-0.010" in rows[1] and "more than 0.02" not in rows[1]
