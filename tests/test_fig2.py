"""The fig2 experiment's "Is it the variance?" analysis and its feature-space panel, end to end
on tiny stand-in data (one cheap variant, two seeds): they only add to the experiment's
numbers, and their pieces are the ones the experiment scored."""

import dataclasses
import json
import re

import numpy as np
import pytest

from tinydata import write_fig2a_data
from vaeood.experiments import EXPERIMENTS
from vaeood.experiments.fig2 import KERAS_BLOG, Preset
from vaeood.experiments.variance_runs import model_scorer, scored_images
from vaeood.evaluation.log_px import log_px
from vaeood.evaluation.variance import WORDS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig2")
    data = write_fig2a_data(root / "data", n_train=256, n_test=96)
    exp = dataclasses.replace(EXPERIMENTS.get("fig2a"), models={"keras_blog": {**KERAS_BLOG, "model.hidden_dim": "16"}},
                              presets={"tiny": Preset({"data.name": "fashion_mnist", "train.epochs": "1"},
                                                      seeds=(0, 1), n_boot=200)})
    out = root / "out"
    before = exp.run(out, "tiny", data_dir=str(data), variance=False, features=False)
    report_before = (out / "report.md").read_text()
    after = exp.run(out, "tiny", data_dir=str(data))  # the runs and their scores are reused
    return exp, data, out, before, report_before, after


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_the_variance_analysis_and_the_feature_panel_only_add(tiny):
    exp, data, out, before, report_before, after = tiny
    assert "variance" not in before and "variance" in after
    assert "feature_space" not in before and "feature_space" in after
    for key in ("summary", "datasets"):
        assert after["models"]["keras_blog"][key] == before["models"]["keras_blog"][key]
    for seed in ("seed0", "seed1"):
        assert after["models"]["keras_blog"]["runs"][seed]["results"] == \
            before["models"]["keras_blog"]["runs"][seed]["results"]
    assert after["verdict"] == before["verdict"]
    report = (out / "report.md").read_text()
    section = re.search(r"## Is it the variance\?\n.*?(?=## Figure 2, ours)", report, re.S).group(0)
    panel = re.search(r"## The same question in feature space\n.*?(?=## Training)", report, re.S).group(0)
    claims = re.findall(r"- In feature space, .*?\n", report)
    assert len(claims) == 2  # one per density: gaussian, vae
    strip = lambda text: re.sub(r"\) on \S+; vaeood", ") on DATE; vaeood", text)  # noqa: E731  (the time stamp)
    for part in (section, panel, *claims):
        report = report.replace(part, "")
    assert strip(report) == strip(report_before)
    assert "Spearman ρ with log p(x)" in section and "Contrast-matched OOD images" in section


@pytest.mark.slow  # e2e: reads the fig2a run its fixture reproduces
def test_the_variance_record_uses_the_experiments_own_scores(tiny):
    exp, data, out, before, report_before, after = tiny
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["variance"]
    r = record["pairs"]["keras_blog"]["mnist"]
    assert record["verdict"]["keras_blog/mnist"].split(":")[0] in WORDS and r["verdict"] in WORDS
    # the AUROC before matching is the experiment's own (same scores, same bootstrap)
    own = metrics["models"]["keras_blog"]["summary"]["nll"]["mnist"]["auroc"]
    assert r["auroc"]["before"]["interval"] == own["interval"] and r["auroc"]["before"]["values"] == own["values"]
    assert r["spearman"]["pixel_var"]["pooled"]["n"] == 192 and r["spearman"]["pixel_var"]["pooled"]["n_seeds"] == 2
    x = np.load(data / "mnist_test.npz")["x"] / 255.0
    assert r["sets"]["ood"]["pixel_var"] == pytest.approx(x.var())
    assert r["sets"]["ood"]["per_image_var"]["mean"] == pytest.approx(x.reshape(96, -1).var(axis=1).mean())
    # the scorer of the matched images gives the cached scores on the original images, bit for bit
    run = out / "runs" / "keras_blog_seed1"
    kw = dict(split="test", estimator="elbo", estimator_options={}, data_dir=str(data), limit=None, device="cpu",
              allow_sample=False, progress=False)
    cached = log_px(run, "mnist", data_dir=str(data))
    images = scored_images(run, "mnist", cached, kw)
    assert np.array_equal(model_scorer(run, kw)(images), cached["log_px_nats"])
    with pytest.raises(ValueError, match="are not the ones scored"):
        scored_images(run, "mnist", log_px(run, "fashion_mnist", data_dir=str(data)), kw)


@pytest.mark.slow  # e2e: reads the fig2a run its fixture reproduces
def test_the_feature_panel_is_the_ledoit_wolf_gaussian_of_the_backbone_features(tiny):
    """The feature-space verdict: the Gaussian of the backbone's features of the images the pixel
    models trained on (its log density is scipy's: tests/test_feature_detectors.py), the test
    sets' log densities under it, the AUROC of −log p_feature(x) with OOD positive."""
    from vaeood.detectors import make_detector
    from vaeood.evaluation.metrics import ood_metrics
    from vaeood.features import compute_feature

    exp, data, out, before, report_before, after = tiny
    fs = json.loads((out / "metrics.json").read_text())["feature_space"]
    assert fs["backbone"]["feature_dim"] == 1280 and fs["train"]["range"] == [0, 256] and fs["train"]["n"] == 256
    assert {d: m["n"] for d, m in fs["datasets"].items()} == {"fashion_mnist": 96, "mnist": 96}
    run = out / "runs" / "keras_blog_seed0"
    features = {(name, split): compute_feature(run, name, split, "backbone", data_dir=str(data), limit=limit,
                                               shared_cache=out / "features")["backbone_features"].astype(float)
                for name, split, limit in (("fashion_mnist", "train", 256), ("fashion_mnist", "test", None),
                                           ("mnist", "test", None))}
    assert len(list((out / "features").iterdir())) == 3  # read from the experiment's cache, not computed again
    train = features.pop(("fashion_mnist", "train"))
    gauss = make_detector("feature_gaussian").fit({"backbone_features": train})
    log_p = {name: gauss.log_density_nats({"backbone_features": f}) for (name, _), f in features.items()}
    model = fs["models"]["gaussian"]
    for name, lp in log_p.items():
        assert model["mean_log_p_nats"][name]["mean"] == pytest.approx(lp.mean(), rel=1e-9)
    auroc = model["summary"]["mnist"]["auroc"]
    expected = ood_metrics(-log_p["fashion_mnist"], -log_p["mnist"])["auroc"]
    assert auroc["n_seeds"] == 1 and auroc["values"] == [pytest.approx(expected)]
    lo, hi = auroc["interval"]
    assert auroc["verdict"] == ("separates" if lo > 0.5 else "inverted" if hi < 0.5 else "indistinguishable")
    assert fs["verdict"]["gaussian/mnist"].startswith(auroc["verdict"] + ": AUROC")
    report = (out / "report.md").read_text()
    assert f"| features | gaussian, −log p_feature(x) | mnist | {auroc['mean']:.3f} (one fit) " in report
    assert f"**{auroc['verdict']}**" in report and "without padding" in report
    assert f"- In feature space, `gaussian/mnist`: {auroc['verdict']}" in report
    assert (out / fs["figure"]).stat().st_size > 1000
    # the VAE of the features: one fit per seed, each its ELBO (feature_vae_nll's −score) of the test features
    vae = fs["models"]["vae"]
    assert vae["seeded"] and [f["vae_images"] for f in vae["fit"]] == [205, 205]  # 256 less its 20% hold-out
    assert [f["epochs"] for f in vae["fit"]] == [60, 60]  # 750 steps would be 469 epochs here: the cap
    for seed, auroc_seed in zip((0, 1), vae["summary"]["mnist"]["auroc"]["values"], strict=True):
        det = make_detector("feature_vae_nll", {"seed": seed, "epochs": 60}).fit({"backbone_features": train})
        s = {name: det.score({"backbone_features": f}) for (name, _), f in features.items()}
        assert auroc_seed == pytest.approx(ood_metrics(s["fashion_mnist"], s["mnist"])["auroc"])
    assert "| features | vae, −log p_feature(x) | mnist |" in report


@pytest.mark.slow  # e2e: reads the fig2a run its fixture reproduces
def test_a_seeded_feature_density_is_fitted_once_per_seed_and_summarised_over_seeds(tiny, monkeypatch):
    """The hook for a density trained from a seed (a VAE of the features): one fit per training
    seed on the training features, each seed's AUROC its own, the interval over seeds."""
    from vaeood.evaluation.metrics import ood_metrics
    from vaeood.experiments import fig2_features

    exp, data, out, *_ = tiny
    fitted = []

    def fit(rows, seed):  # a toy density: −‖f − m‖², m the mean of a seed's half of the rows
        m = rows[np.random.default_rng(seed).permutation(len(rows))[:128]].mean(0)
        fitted.append((seed, len(rows)))
        return (lambda r: -((r - m) ** 2).sum(1)), {"seed": seed}

    monkeypatch.setattr(fig2_features, "DENSITIES", {"toy": fig2_features.FeatureDensity("toy", True, fit)})
    kw = dict(data_dir=str(data), device="cpu", allow_sample=False, progress=False, limit=None)
    fs = fig2_features.feature_panel(exp, out, exp.presets["tiny"], kw)
    assert fitted == [(0, 256), (1, 256)] and fs["models"]["toy"]["fit"] == [{"seed": 0}, {"seed": 1}]
    feats = {name: np.load(next((out / "features").glob(f"{name}_test_backbone*.npz")))["backbone_features"]
             for name in ("fashion_mnist", "mnist")}
    train = np.load(next((out / "features").glob("fashion_mnist_train_backbone*.npz")))["backbone_features"]
    expected = []
    for seed in (0, 1):
        m = train.astype(float)[np.random.default_rng(seed).permutation(256)[:128]].mean(0)
        expected.append(ood_metrics(*[((feats[n] - m) ** 2).sum(1) for n in ("fashion_mnist", "mnist")])["auroc"])
    auroc = fs["models"]["toy"]["summary"]["mnist"]["auroc"]
    assert auroc["n_seeds"] == 2 and auroc["values"] == pytest.approx(expected)
    assert fs["verdict"]["toy/mnist"].startswith(auroc["verdict"]) and "over 2 seeds" in fs["verdict"]["toy/mnist"]
