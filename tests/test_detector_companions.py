"""A detector that declares a companion model is trained for and run by the ood-suite with
no edit to the suite: the example of docs/extending.md, executed as written there."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tinydata import write_fig2a_data
from vaeood.detectors import DETECTORS, ModelSpec
from vaeood.evaluation.log_px import log_px
from vaeood.experiments import EXPERIMENTS
from vaeood.experiments.ood_suite import SuitePreset
from vaeood.experiments.ood_suite.planning import extra_runs, plan_models, runs_on
from vaeood.training.config import ConfigError

EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
TINY = {"data.limit": "120", "train.epochs": "1", "model.base_channels": "4"}


def _companion_example() -> str:
    """The code block of the section on detectors that need a companion model."""
    section = EXTENDING.read_text().split("## A detector that needs a companion model", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def capacity_ratio(monkeypatch):
    """The documented detector, registered for this test only."""
    monkeypatch.setattr(DETECTORS, "_items", dict(DETECTORS._items))  # restored after the test
    module = types.ModuleType("capacity_ratio_example")  # a module of its own, as a user's file is
    monkeypatch.setitem(sys.modules, module.__name__, module)  # (decisions pickle the fitted detector)
    exec(compile(_companion_example(), str(EXTENDING), "exec"), module.__dict__)
    return DETECTORS.get("capacity_ratio")


def _preset(**kwargs) -> SuitePreset:
    return SuitePreset(seeds=(0,), train={"fashion_mnist": TINY}, test_limit=60, n_fit=40, synthetic_images=60,
                       families=("fashion_mnist",), **kwargs)


def test_the_plan_reads_the_declarations(capacity_ratio):
    dets = ["nll", "capacity_ratio", "likelihood_ratio", "lpath_2m", "llr"]
    models = plan_models(dets, _preset(models={"wide": {"model.latent_dim": "32"}}))
    assert list(models) == ["main", "low_capacity", "background", "wide", "small", "hvae"]
    assert models["main"]["for"] == ["nll", "capacity_ratio", "likelihood_ratio"]
    assert models["low_capacity"] == {"overrides": {"model.latent_dim": "2"}, "for": ["capacity_ratio"]}
    assert models["background"]["overrides"] == {"data.noise_rate": "0.2", "train.weight_decay": "0.0001"}
    assert models["wide"] == {"overrides": {"model.latent_dim": "32"}, "for": ["lpath_2m"]}  # the preset's, by name
    assert models["small"]["overrides"] == {"model.latent_dim": "2"}
    assert models["hvae"]["overrides"]["model.arch"] == "hvae" and models["hvae"]["for"] == ["llr"]
    assert [runs_on(d) for d in dets] == ["main", "main", "main", "wide", "hvae"]
    assert extra_runs("lpath_2m", {"second_run": "x"}) == ["wide", "small"]
    assert extra_runs("capacity_ratio", {"small_run": None}) == []


def test_two_declarations_of_one_model_must_agree(capacity_ratio, monkeypatch):
    monkeypatch.setattr(capacity_ratio, "companions", {"small_run": ModelSpec("small", {"model.latent_dim": "3"})})
    with pytest.raises(ConfigError, match="declares model 'small'"):
        plan_models(["lpath_2m", "capacity_ratio"], _preset())


def test_the_suite_trains_the_declared_companion_and_runs_the_detector_with_it(capacity_ratio, tmp_path,
                                                                                monkeypatch):
    data = write_fig2a_data(tmp_path / "data", n_train=200, n_test=100)
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    suite = dataclasses.replace(EXPERIMENTS.get("ood-suite"),
                                presets={"tiny": _preset(detectors=("nll", "capacity_ratio"))})
    out_dir = tmp_path / "out"
    out = suite.run(out_dir, "tiny", data_dir=str(data))

    seed = out["families"]["fashion_mnist"]["seeds"][0]
    assert list(seed["training"]) == ["main", "low_capacity"]
    assert seed["training"]["low_capacity"]["config"]["model"]["latent_dim"] == 2
    assert seed["training"]["main"]["config"]["model"]["latent_dim"] != 2
    det = seed["detectors"]["capacity_ratio"]
    assert det["model"] == "main" and det["extra_runs"] == ["low_capacity"]
    assert det["options"]["small_run"] == "runs/fashion_mnist-seed0/low_capacity"
    assert det["seconds"]["extra_training"] == seed["training"]["low_capacity"]["train_seconds"] > 0
    assert set(det["metrics"]) == set(out["families"]["fashion_mnist"]["ood"])
    # its scores are the companion's log p(x) minus the main model's, image by image
    runs = out_dir / "runs" / "fashion_mnist-seed0"
    kw = dict(estimator="elbo", data_dir=str(data), limit=60, seed=0)
    expected = log_px(runs / "low_capacity", "mnist", **kw)["log_px_nats"] - log_px(runs / "main", "mnist", **kw)[
        "log_px_nats"]
    np.testing.assert_allclose(np.load(out_dir / det["scores_file"])["mnist"], expected, rtol=1e-6)
    report = (out_dir / "report.md").read_text()
    assert "`low_capacity` (`model.latent_dim=2`) for `capacity_ratio`" in report
    assert out["settings"]["models"]["low_capacity"]["for"] == ["capacity_ratio"]
