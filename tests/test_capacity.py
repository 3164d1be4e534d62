"""The capacity study end to end on tiny data, with a tiny preset patched in."""

import json

import pytest
from scipy.stats import spearmanr

from tinydata import write_fig2a_data
from vaeood.cli import main
from vaeood.experiments import EXPERIMENTS
from vaeood.experiments.capacity import CapacityPreset


@pytest.fixture()
def tiny_preset(monkeypatch):
    study = EXPERIMENTS.get("capacity")
    monkeypatch.setitem(study.presets, "tiny", CapacityPreset(
        {"model.likelihood": "dlogistic", "train.epochs": "1"}, widths=(0.5, 1, 2), latents=(2,),
        base_channels=4, base_latent=4, k=4, iwae_limit=16))
    return study


@pytest.mark.slow  # e2e: reproduces an experiment (trains its models)
def test_capacity_study_reports_the_sweep(tmp_path, monkeypatch, tiny_preset, capsys):
    monkeypatch.delenv("VAEOOD_DATA", raising=False)
    data = write_fig2a_data(tmp_path / "data")
    out = tmp_path / "cap"
    assert main(["reproduce", "capacity", "--preset", "tiny", "--out", str(out), "--data-dir", str(data)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    models = metrics["models"]
    assert list(models) == ["width_x0.5_z4", "width_x1_z4", "width_x2_z4", "width_x1_z2"]
    assert [models[v]["base_channels"] for v in models] == [2, 4, 8, 4]
    assert metrics["seeds"] == [0, 1, 2]
    widths = [models[v] for v in ["width_x0.5_z4", "width_x1_z4", "width_x2_z4"]]
    params = [m["num_parameters"] for m in widths]
    assert params == sorted(params) and len(set(params)) == 3
    for est in ("elbo", "iwae"):
        # the trend's points: every seed's model of the width sweep
        aurocs = [[r["evaluations"][est]["results"]["nll"]["mnist"]["auroc"] for r in m["runs"].values()]
                  for m in widths]
        x = [p for p, a in zip(params, aurocs, strict=True) for _ in a]
        y = [v for a in aurocs for v in a]
        expected = spearmanr(x, y).statistic if len(set(y)) > 1 else float("nan")
        verdict = metrics["verdict"][est]
        got = verdict["spearman_params_vs_auroc"]  # NaN is written as null
        assert (float("nan") if got is None else got) == pytest.approx(expected, nan_ok=True)
        assert verdict["trend"]["n_points"] == 9
        for m, a in zip(widths, aurocs, strict=True):
            summary = m["summary"][est]["nll"]["auroc"]
            assert summary["values"] == pytest.approx(a) and summary["n_seeds"] == 3
            lo, hi = summary["interval"]
            assert summary["verdict"] == ("separates" if lo > 0.5 else "inverted" if hi < 0.5
                                          else "indistinguishable")
    iwae = models["width_x1_z4"]["runs"]["seed1"]["evaluations"]["iwae"]
    assert iwae["datasets"]["mnist"]["n"] == 16 and iwae["estimator_options"] == {"k": 4}
    assert models["width_x1_z4"]["runs"]["seed1"]["evaluations"]["elbo"]["datasets"]["mnist"]["n"] == 128
    assert (out / "runs" / "width_x2_z4_seed2" / "checkpoint.pt").exists()
    report = (out / "report.md").read_text()
    assert "Dai & Wipf" in report and "Spearman" in report
    auroc = models["width_x2_z4"]["summary"]["elbo"]["nll"]["auroc"]
    assert f"{auroc['mean']:.3f} ± {auroc['sd']:.3f}" in report
    assert (out / "figures" / "capacity.png").stat().st_size > 1000
    assert "width_x2_z4 [iwae]" in capsys.readouterr().out
