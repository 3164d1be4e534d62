"""``vaeood reproduce one-class``: the smoke preset end to end on the bundled MNIST sample, and
its pieces with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vaeood.cli import main
from vaeood.experiments import EXPERIMENTS
from vaeood.experiments.one_class import BACKBONE_DETECTORS, DETECTORS, MODEL, PIXEL_DETECTORS, SOURCES


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The smoke preset through the command line, on the MNIST sample bundled with vaeood
    (real digits: 100 of each class), counting what the features layer computes."""
    from vaeood.features import core

    root = tmp_path_factory.mktemp("one_class")
    out = root / "out"
    computed = []
    real = core.features_of
    mp = pytest.MonkeyPatch()
    mp.delenv("VAEOOD_DATA", raising=False)
    mp.setenv("HOME", str(root / "home"))  # no ~/.cache/vaeood: the bundled sample stands in
    mp.setattr(core, "features_of", lambda model, images, name, *a, desc="", **k: (
        computed.append((name, desc, len(images))), real(model, images, name, *a, desc=desc, **k))[1])
    try:
        code = main(["-q", "reproduce", "one-class", "--preset", "smoke", "--out", str(out)])
    finally:
        mp.undo()
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text(), computed


@pytest.mark.slow  # e2e: reproduces an experiment (trains a VAE per class, runs the backbone)
def test_one_row_per_class_every_detector_an_auroc_in_0_1_and_the_mean(smoke):
    out, metrics, report, _ = smoke
    preset = EXPERIMENTS.get("one-class").presets["smoke"]
    mnist = metrics["datasets"]["mnist"]
    assert list(mnist["classes"]) == [str(c) for c in preset.classes]
    for d in DETECTORS:
        s = mnist["summary"][d]
        assert len(s["auroc"]) == len(preset.classes) and all(0.0 <= a <= 1.0 for a in s["auroc"])
        assert s["mean"] == pytest.approx(np.mean(s["auroc"]))
        assert s["interval"][0] <= s["mean"] <= s["interval"][1]
        for c, a, (lo, hi) in zip(preset.classes, s["auroc"], s["intervals"], strict=True):
            assert lo <= a <= hi
            assert mnist["classes"][str(c)]["metrics"][d]["auroc"] == pytest.approx(a)
    # the detectors fitted on held-out images of the class, never on test images
    for c in preset.classes:
        cls = mnist["classes"][str(c)]
        fit = cls["fit_data"]
        assert fit["dataset"] == f"mnist_class{c}" and fit["split"] == "train"
        assert fit["start"] == fit["trained_range"][1] == cls["data"]["trained"] and fit["n"] == preset.n_fit
    # the test set holds every class; each class's images are in-distribution once
    assert sum(mnist["test"]["per_class"].values()) <= mnist["test"]["n"]
    assert all(n > 0 for n in mnist["test"]["per_class"].values())


@pytest.mark.slow  # e2e: reads the run its fixture reproduces
def test_the_backbone_features_of_the_test_set_are_computed_once_not_once_per_class(smoke):
    out, _, _, computed = smoke
    test_backbone = [c for c in computed if c[0] == "backbone" and "mnist_oneclass" in c[1]]
    assert len(test_backbone) == 1  # the second class read the shared cache
    fit_backbone = [c for c in computed if c[0] == "backbone" and "_class" in c[1]]
    assert len(fit_backbone) == 2  # each class's own held-out images, once each
    # the VAE's features are per run: the test set's log p(x) is computed by both classes' models
    assert len([c for c in computed if c[0] == "log_px" and "mnist_oneclass" in c[1]]) == 2
    shared = list((out / "features").glob("mnist_oneclass_test_backbone*.npz"))
    assert len(shared) == 1
    assert not list((out / "runs").glob("*/features/*backbone*"))


@pytest.mark.slow  # e2e: reads the run its fixture reproduces
def test_the_report_has_both_published_groups_the_notes_and_no_machine_paths(smoke):
    out, metrics, report, _ = smoke
    assert "### No pretraining" in report and "### ImageNet-pretrained" in report
    assert report.index("### No pretraining") < report.index("ours: `fused`") < report.index("### ImageNet-pretrained")
    assert report.index("### ImageNet-pretrained") < report.index("ours: `fused_content`")
    for method in ("Deep SVDD", "GEOM", "RotNet-style", "CSI", "PANDA", "Mean-Shifted Contrastive"):
        assert method in report
    assert "the backbone saw ImageNet" in report and "bundled sample" in report
    assert "mnist_train.npz" in report and len(metrics["datasets"]["mnist"]["sources"][0]["files"][0]["sha256"]) == 64
    assert "## Wall time" in report and metrics["timing"]["wall_seconds"] > 0
    assert "## `fused_content` against its two views" in report
    for text in (report, (out / "metrics.json").read_text()):
        assert str(out) not in text and "/tmp" not in text


def test_the_gap_to_the_better_view_is_the_default_minus_the_best_of_pixels_and_features():
    from vaeood.experiments.one_class_report import view_gaps

    summary = {d: {"mean": m} for d, m in (("fused", 0.63), ("feature_knn", 0.916), ("feature_gaussian", 0.873),
                                           ("fused_content", 0.911), ("joint_knn", 0.99))}
    gap = view_gaps(summary, "fused_content")
    assert gap["feature_name"] == "feature_knn" and gap["gap"] == pytest.approx(0.911 - 0.916)
    summary["fused"]["mean"] = 0.97  # the pixel view better (digits)
    assert view_gaps(summary, "fused_content")["gap"] == pytest.approx(0.911 - 0.97)
    assert view_gaps({"fused": {"mean": 0.9}, "fused_content": {"mean": 0.9}}, "fused_content") is None


def test_the_cifar10_protocol_and_its_note():
    cifar = SOURCES["cifar10"]
    assert cifar.classes_from == ("train", 0, 45000) and cifar.test_from == ("train", 45000, None)
    assert "1,000" in cifar.note
    quick = EXPERIMENTS.get("one-class").presets["quick"]
    assert quick.test_images["cifar10"] == 2000  # train[45000:47000]
    assert set(quick.datasets) == {"mnist", "fashion_mnist", "cifar10"} and quick.classes == tuple(range(10))
    assert set(PIXEL_DETECTORS) | set(BACKBONE_DETECTORS) == set(DETECTORS)


def test_the_model_is_the_one_vaeood_fit_trains():
    from vaeood.pipeline import MODEL as FIT_MODEL

    assert MODEL.items() <= FIT_MODEL.items()
    assert set(FIT_MODEL) - set(MODEL) == {"train.epochs"}  # the presets set the budget
