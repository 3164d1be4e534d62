"""The fig2 experiment's "Is it the variance?" analysis, end to end on tiny stand-in data
(one cheap variant, two seeds): it only adds to the experiment's numbers, and its pieces
are the ones the experiment scored."""

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
    before = exp.run(out, "tiny", data_dir=str(data), variance=False)
    report_before = (out / "report.md").read_text()
    after = exp.run(out, "tiny", data_dir=str(data))  # the runs and their scores are reused
    return exp, data, out, before, report_before, after


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_the_variance_analysis_only_adds(tiny):
    exp, data, out, before, report_before, after = tiny
    assert "variance" not in before and "variance" in after
    for key in ("summary", "datasets"):
        assert after["models"]["keras_blog"][key] == before["models"]["keras_blog"][key]
    for seed in ("seed0", "seed1"):
        assert after["models"]["keras_blog"]["runs"][seed]["results"] == \
            before["models"]["keras_blog"]["runs"][seed]["results"]
    assert after["verdict"] == before["verdict"]
    report = (out / "report.md").read_text()
    section = re.search(r"## Is it the variance\?\n.*?(?=## Figure 2, ours)", report, re.S).group(0)
    strip = lambda text: re.sub(r"\) on \S+; vaeood", ") on DATE; vaeood", text)  # noqa: E731  (the time stamp)
    assert strip(report.replace(section, "")) == strip(report_before)
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
