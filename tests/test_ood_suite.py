"""``vaeood reproduce ood-suite`` end to end on tiny data, and its pieces with known answers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tinydata import write_fig2a_data
from vaeood.cli import main
from vaeood.experiments import EXPERIMENTS, reproduce
from vaeood.experiments.ood_suite import SYNTHETIC, aggregate, scrub_paths, synthetic_images, verdict


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """One smoke-preset run through the command line on tiny stand-in data (no CIFAR-10)."""
    root = tmp_path_factory.mktemp("suite")
    data_dir = write_fig2a_data(root / "data", n_train=200, n_test=100)
    out = root / "out"
    mp = pytest.MonkeyPatch()
    mp.delenv("VAEOOD_DATA", raising=False)
    mp.setenv("HOME", str(root / "home"))  # no ~/.cache/vaeood with a CIFAR-10 in it
    try:
        code = main(["-q", "reproduce", "ood-suite", "--preset", "smoke", "--out", str(out), "--data-dir",
                     str(data_dir), "--data.limit=120", "--model.base_channels=4"])
    finally:
        mp.undo()
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text()), (out / "report.md").read_text()


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_every_detector_on_every_pair_with_seed_statistics(suite):
    out, metrics, report = suite
    preset = EXPERIMENTS.get("ood-suite").presets["smoke"]
    assert set(metrics["families"]) == {"fashion_mnist", "mnist"}
    assert metrics["families"]["fashion_mnist"]["ood"] == ["mnist", *SYNTHETIC, "fashion_mnist_rot90"]
    assert metrics["families"]["mnist"]["ood"] == ["fashion_mnist", *SYNTHETIC, "mnist_rot90"]
    assert metrics["families"]["mnist"]["kinds"] == {"fashion_mnist": "far", "uniform_noise": "far",
                                                     "constant": "far", "mnist_rot90": "near"}
    for fam in metrics["families"].values():
        # 80 fit images of 10 classes: no class of the 10 images a classifier needs, so feature_energy is
        # skipped, said in the report, and fused_content reads feature_knn alone
        skipped = {d for s in fam["seeds"].values() for d in s["skipped"]}
        assert skipped == {"feature_energy"} and "`feature_energy` was skipped on" in report
        assert list(fam["summary"]) == [d for d in preset.detectors if d not in skipped]
        for det, per_ood in fam["summary"].items():
            for ood in fam["ood"]:
                auroc = per_ood[ood]["auroc"]
                assert len(auroc["values"]) == len(preset.seeds) == 2
                assert auroc["mean"] == pytest.approx(np.mean(auroc["values"]))
                assert auroc["sd"] == pytest.approx(np.std(auroc["values"], ddof=1))
                assert 0.0 <= auroc["min"] <= auroc["mean"] <= auroc["max"] <= 1.0
                assert f"`{det}`" in report
        # the AUROC in the summary is the one of the per-image scores saved for that seed
        seed0 = fam["seeds"]["0"]["detectors"]["nll"]
        scores = np.load(out / seed0["scores_file"])
        in_name = [k for k in scores.files if k not in fam["ood"] and k != "_fit"][0]
        s_in, s_ood = scores[in_name], scores["uniform_noise"]
        pairs = (s_ood[:, None] > s_in[None, :]).mean() + 0.5 * (s_ood[:, None] == s_in[None, :]).mean()
        assert seed0["metrics"]["uniform_noise"]["auroc"] == pytest.approx(pairs)


@pytest.mark.slow  # e2e: reads the ood-suite its fixture reproduces
def test_fitting_slice_is_held_out_training_data_and_recorded(suite):
    _, metrics, report = suite
    for name, fam in metrics["families"].items():
        for seed in fam["seeds"].values():
            fd = seed["fit_data"]
            assert (fd["dataset"], fd["split"]) == (name, "train")
            assert fd["trained_range"] == [0, 120]  # --data.limit=120
            assert fd["start"] >= 120 and fd["stop"] - fd["start"] == fd["n"] == 80  # 200 - 120 held out
    assert "### Fitting data (held-out training images, never test images)" in report
    # the conformal decisions need a calibration slice after the fitting slice: 80 held-out
    # images are all taken by the fit here, so each detector says so instead of giving rates
    assert "## Decisions at a chosen false-alarm rate" in report
    for fam in metrics["families"].values():
        for det in fam["seeds"]["0"]["detectors"].values():
            assert det["decisions"] is not None
    assert "| fashion_mnist | 0 | fashion_mnist/train | [120, 200) | 80 | [0, 120) |" in report


@pytest.mark.slow  # e2e: reads the ood-suite its fixture reproduces
def test_report_figures_notes_and_no_machine_paths(suite):
    out, metrics, report = suite
    for fam in ("fashion_mnist", "mnist"):
        for kind in ("roc", "hist"):
            assert (out / "figures" / f"{kind}_{fam}.png").stat().st_size > 10_000
            assert f"](figures/{kind}_{fam}.png)" in report
    assert any("CIFAR-10 was not found" in n for n in metrics["notes"])
    assert any("Tiny ImageNet 64 was not found" in n and "`tinyimagenet64/`" in n for n in metrics["notes"])
    assert "## Which detector to use" in report and "## What each detector costs" in report
    # the default detector's AUROC on every pair with its interval, and the best one's
    pairs = [f"{f}→{o}" for f, fam in metrics["families"].items() for o in fam["ood"]]
    default = metrics["verdict"]["default"]
    assert list(default) == pairs and all(d["interval"][0] <= d["auroc"] <= d["interval"][1] for d in default.values())
    assert "`fused_content`, the detector to pick, on every pair" in report
    assert list(metrics["verdict"]["pixel"]) == pairs  # `fused`, the pixel view, beside it
    assert "`fused`, its pixel view alone" in report and "pretrained on ImageNet" in report
    assert all("95% interval" in line for line in metrics["verdict"]["lines"] if line.startswith("Best on"))
    text = (out / "metrics.json").read_text() + report
    assert str(out.parent) not in text  # neither the output folder nor the data folder's absolute path
    assert not re.search(r"(?<![\w.])/(tmp|home|root|work)/", text)
    # the noise/constant sets are the deterministic ones, written once per image shape
    with np.load(out / "runs" / "data" / "1x28x28" / "uniform_noise_test.npz") as f:
        np.testing.assert_array_equal(f["x"], synthetic_images("uniform_noise", 150, (1, 28, 28))[..., 0])


@pytest.mark.slow  # e2e: reads the ood-suite its fixture reproduces
def test_the_terminal_summary_shows_the_default_and_the_named_detectors_only(suite):
    """Twenty-one detectors on every pair fit in report.md; the terminal gets the default one,
    those the verdict names and the verdict, a screen at most."""
    _, metrics, _ = suite
    text = EXPERIMENTS.get("ood-suite").summary(metrics)
    rows = {line.split()[0] for line in text.splitlines() if line and not line.startswith(("-", "(", "NOTE"))}
    v = metrics["verdict"]
    named = {v["robust"]["detector"], "fused_content", "fused", *(b["detector"] for b in v["best"].values()),
             *(r["detector"] for r in v["robust_by_kind"].values() if r)}
    assert rows - {"detector"} == named and len(named) < len(metrics["settings"]["detectors"])
    assert "are in the report)" in text and len(text.splitlines()) <= 30


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_rerun_reuses_runs_and_gives_the_same_numbers(suite, tmp_path):
    out, metrics, _ = suite
    again = reproduce("ood-suite", out, preset="smoke", data_dir=str(out.parent / "data"),
                      overrides={"data.limit": "120", "model.base_channels": "4"}, families=("mnist",))
    assert {run["this_call"] for run in again["runs_used"].values()} == {"reused"}
    a = again["families"]["mnist"]["summary"]
    b = metrics["families"]["mnist"]["summary"]
    for det in a:
        for ood in again["families"]["mnist"]["ood"]:
            assert a[det][ood]["auroc"]["values"] == pytest.approx(b[det][ood]["auroc"]["values"], abs=1e-12)


def test_synthetic_images_known_properties():
    noise = synthetic_images("uniform_noise", 500, (3, 8, 8))
    const = synthetic_images("constant", 500, (3, 8, 8))
    assert noise.shape == const.shape == (500, 8, 8, 3) and noise.dtype == const.dtype == np.uint8
    np.testing.assert_array_equal(noise, synthetic_images("uniform_noise", 500, (3, 8, 8)))  # deterministic
    assert noise.min() == 0 and noise.max() == 255 and abs(noise.mean() - 127.5) < 2
    flat = const.reshape(500, -1, 3)
    assert (flat == flat[:, :1]).all()  # one colour per image
    assert len(np.unique(flat[:, 0, 0])) > 100  # and many colours over the set


def test_aggregate_and_verdict_known_answers():
    def seed(aurocs: dict) -> dict:
        return {"detectors": {d: {"metrics": {o: {"auroc": a, "auprc_in": a, "auprc_out": a, "fpr_at_80_tpr": 0.0,
                                                  "fpr_at_95_tpr": 0.0} for o, a in per.items()},
                                  "seconds": {"features": 1.0, "fit": 0.0, "score": 0.0, "extra_training": 0.0}}
                              for d, per in aurocs.items()}}

    per_seed = {0: seed({"a": {"x": 0.2, "y": 1.0}, "b": {"x": 0.9, "y": 0.95}}),
                1: seed({"a": {"x": 0.4, "y": 1.0}, "b": {"x": 0.95, "y": 0.97}})}
    summary = aggregate(per_seed)
    assert summary["a"]["x"]["auroc"]["mean"] == pytest.approx(0.3)
    assert summary["a"]["x"]["auroc"]["sd"] == pytest.approx(np.sqrt(0.02))
    out = {"families": {"f": {"ood": ["x", "y"], "summary": summary}}}
    v = verdict(out)
    assert v["best"] == {"f→x": {"detector": "b", "auroc": pytest.approx(0.925)},
                         "f→y": {"detector": "a", "auroc": pytest.approx(1.0)}}
    assert v["robust"]["detector"] == "b" and v["robust"]["worst_auroc"] == pytest.approx(0.925)
    assert [(f["detector"], f["pair"], f["kind"]) for f in v["failures"]] == [("a", "f→x", "fails (inverted)")]


def test_scrub_paths(tmp_path):
    out = tmp_path / "out"
    value = {"a": f"{out}/runs/x/scores.npz", "b": "/data/somewhere/fashion_mnist_train.npz (subset 'first4000')",
             "c": ["bits/dim", "fashion_mnist/test", f"vaeood reproduce ood-suite --out {out}"], "d": 3}
    assert scrub_paths(value, out) == {"a": "runs/x/scores.npz", "b": "fashion_mnist_train.npz (subset 'first4000')",
                                       "c": ["bits/dim", "fashion_mnist/test", "vaeood reproduce ood-suite --out out"],
                                       "d": 3}


def test_dose_plus_needs_its_three_statistics_and_scores_the_tails_above_the_bulk():
    from vaeood.detectors import make_detector

    det = make_detector("dose_plus")
    assert set(det.needs) == {"log_px", "posterior", "reconstruction", "compressed"}
    assert det.needs["compressed"] == {"codec": "png"}
    rng = np.random.default_rng(0)
    stats = ("log_px_nats", "png_bpd", "recon_log_l2")
    # correlated statistics: a point typical in each coordinate alone but off the joint ridge is OOD
    lp = rng.normal(-2000.0, 50.0, 3000)
    fit = {"log_px_nats": lp, "png_bpd": -lp / 1000.0 + rng.normal(0, 0.01, 3000),
           "recon_log_l2": rng.normal(1.0, 0.1, 3000)}
    det.fit(fit)
    on_ridge = {"log_px_nats": np.array([-2000.0]), "png_bpd": np.array([2.0]), "recon_log_l2": np.array([1.0])}
    off_ridge = {"log_px_nats": np.array([-2050.0]), "png_bpd": np.array([1.95]), "recon_log_l2": np.array([1.0])}
    assert det.score(off_ridge)[0] > det.score(on_ridge)[0] + 5.0
    assert list(det.options["stats"]) == list(stats)


def test_lpath_copod_scores_do_not_depend_on_the_other_images_scored():
    from vaeood.detectors import make_detector

    rng = np.random.default_rng(0)
    stats = ("recon_log_l2", "mu_z_norm", "sigma_z_norm")
    fit = {k: rng.normal(0.0, 1.0, 500) for k in stats}
    det = make_detector("lpath_copod").fit(fit)
    probe = {k: np.array([0.0, 4.0]) for k in stats}
    crowd = {k: np.r_[probe[k], np.full(1000, 4.0)] for k in stats}  # many more outliers like the second
    alone, with_crowd = det.score(probe), det.score(crowd)[:2]
    np.testing.assert_allclose(with_crowd, alone)
    assert alone[1] > alone[0]


def test_dose_plus_keeps_a_joint_kde_where_dose_defaults_to_independent_ones():
    from vaeood.detectors import make_detector

    assert make_detector("dose_plus").options["kde"] == "joint"
