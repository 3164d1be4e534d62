"""The vocabulary of the package docstring, and the old names kept for one release: each
still works, gives what its new name gives, and says (a DeprecationWarning, or a notice on
stderr for the command) that it is deprecated."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import vaeood
from tinydata import blobs, write_fig2a_data
from vaeood.cli import main
from vaeood.training.config import Config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocabulary")
    data = write_fig2a_data(root / "data")
    config = Config().override({"train.epochs": "1", "model.base_channels": "4", "model.latent_dim": "4",
                                "data.limit": "64"})
    return vaeood.train(config, root / "run", data_dir=str(data)), data


def test_the_package_docstring_opens_with_the_vocabulary():
    doc = vaeood.__doc__
    for word in ("**log_px**", "**detector score**", "**detect**", "**llr**", "**conform**", "**n_fit**",
                 "**image digest**"):
        assert word in doc, word
    assert doc.index("Vocabulary") < doc.index("**log_px**")


def test_the_public_names_are_the_new_ones():
    assert {"log_px", "detector_scores"} <= set(vaeood.__all__)
    from vaeood.evaluation.evaluate import detector_scores
    from vaeood.evaluation.log_px import log_px
    assert vaeood.log_px is log_px and vaeood.detector_scores is detector_scores


def test_vaeood_score_warns_and_gives_log_px(run):
    run_dir, data = run
    new = vaeood.log_px(run_dir, "mnist", data_dir=str(data), limit=16)
    with pytest.warns(DeprecationWarning, match=r"vaeood\.score is now vaeood\.log_px"):
        old = vaeood.score(run_dir, "mnist", data_dir=str(data), limit=16)
    assert set(old) == set(new)
    np.testing.assert_array_equal(old["log_px_nats"], new["log_px_nats"])

    from vaeood.evaluation.log_px import log_px_meta, score_meta
    with pytest.warns(DeprecationWarning, match="log_px_meta"):
        assert score_meta(old) == log_px_meta(new)


def test_vaeood_detect_warns_and_gives_detector_scores(run):
    from vaeood.detectors import make_detector

    model = vaeood.load_model(run[0])[0]
    images = blobs(6, 3)
    detector = make_detector("nll").fit({})
    new = vaeood.detector_scores(model, detector, images)
    with pytest.warns(DeprecationWarning, match=r"vaeood\.detect is now vaeood\.detector_scores"):
        old = vaeood.detect(model, detector, images)
    assert new.shape == (6,) and np.isfinite(new).all()
    np.testing.assert_array_equal(old, new)
    # nll's detector score is −log_px of the same image, same noise seed
    log_px = vaeood.features.features_of(model, images, "log_px", {"estimator": "elbo"})["log_px_nats"]
    np.testing.assert_allclose(new, -log_px, rtol=1e-6)


def test_the_old_module_name_of_log_px_warns_and_is_the_same_module(monkeypatch):
    import vaeood.evaluation.log_px as new

    for old in ("vaeood.evaluation.scoring", "vaeood.scoring"):
        monkeypatch.delitem(sys.modules, old, raising=False)  # it warns on its first import
        with pytest.warns(DeprecationWarning, match=f"{old} moved to vaeood.evaluation.log_px"):
            assert importlib.import_module(old) is new


def test_vaeood_score_still_works_and_says_it_is_deprecated(run, capsys):
    run_dir, data = run
    argv = [str(run_dir), "--dataset", "mnist", "--data-dir", str(data), "--limit", "16"]
    assert main(["log-px", *argv]) == 0
    new = capsys.readouterr()
    assert "mnist/test: 16 images, mean log p(x) = " in new.out and "deprecated" not in new.err
    assert main(["score", *argv]) == 0
    old = capsys.readouterr()
    assert old.out == new.out  # the same estimates (reused from the run's cache)
    notice = [line for line in old.err.splitlines() if "deprecated" in line]
    assert notice == ["vaeood: `vaeood score` is deprecated, use `vaeood log-px` (the old name goes in vaeood 0.3)"]


def test_the_help_names_log_px(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "log-px" in out and "log p(x) estimates" in out


# ----------------------------------------------------------------- conform and n_fit, renamed in 0.2
def test_fit_is_now_conform_and_the_old_keyword_warns_and_gives_the_same(run):
    from vaeood.evaluation.log_px import log_px_meta
    from tinydata import write_npz

    run_dir, data = run
    write_npz(data, "colour", "test", blobs(8, 0, size=32, channels=3))
    new = vaeood.log_px(run_dir, "colour", data_dir=str(data), conform="resize")
    with pytest.warns(DeprecationWarning, match=r"log_px\(fit=\.\.\.\) is now log_px\(conform=\.\.\.\)"):
        old = vaeood.log_px(run_dir, "colour", data_dir=str(data), fit="resize")
    np.testing.assert_array_equal(old["log_px_nats"], new["log_px_nats"])
    assert log_px_meta(new)["conform"]["method"] == "resize" and "fit" not in log_px_meta(new)
    with pytest.raises(TypeError, match="both fit= and its new name conform="):
        vaeood.log_px(run_dir, "colour", data_dir=str(data), fit="resize", conform="resize")


def test_fit_limit_is_now_n_fit_and_the_old_keywords_warn_and_give_the_same(run, tmp_path):
    run_dir, data = run
    common = dict(detectors=["nll", "typicality"], data_dir=str(data), limit=16)
    new = vaeood.evaluate(run_dir, "fashion_mnist", ["mnist"], out_dir=tmp_path / "new", conform="pad", n_fit=40,
                          **common)
    with pytest.warns(DeprecationWarning) as caught:
        old = vaeood.evaluate(run_dir, "fashion_mnist", ["mnist"], out_dir=tmp_path / "old", fit="pad",
                              fit_limit=40, **common)
    said = " ".join(str(w.message) for w in caught)
    assert "evaluate(fit=...) is now evaluate(conform=...)" in said
    assert "evaluate(fit_limit=...) is now evaluate(n_fit=...)" in said
    assert old["results"] == new["results"] and old["fit_data"] == new["fit_data"]
    assert new["conform"] == "pad" and new["fit_data"]["n"] == 40 and "fit" not in new
    with pytest.warns(DeprecationWarning, match=r"fit_detector\(n=\.\.\.\) is now fit_detector\(n_fit=\.\.\.\)"):
        by_n = vaeood.fit_detector(run_dir, "typicality", n=40, data_dir=str(data))
    assert by_n.fit_info == vaeood.fit_detector(run_dir, "typicality", n_fit=40, data_dir=str(data)).fit_info


@pytest.mark.parametrize("old, new", [("folder", "inputs"), ("image_folder", "folder_dataset"),
                                      ("image_files", "listing")])
def test_the_old_names_of_the_image_reading_modules_warn_and_are_the_same_modules(monkeypatch, old, new):
    monkeypatch.delitem(sys.modules, f"vaeood.data.{old}", raising=False)
    with pytest.warns(DeprecationWarning, match=f"vaeood.data.{old} moved to vaeood.data.{new}"):
        assert importlib.import_module(f"vaeood.data.{old}") is importlib.import_module(f"vaeood.data.{new}")


def test_the_old_module_name_of_conform_warns_and_is_the_same_module(monkeypatch):
    import vaeood.data.conform as new

    monkeypatch.delitem(sys.modules, "vaeood.data.fit", raising=False)
    with pytest.warns(DeprecationWarning, match="vaeood.data.fit moved to vaeood.data.conform"):
        old = importlib.import_module("vaeood.data.fit")
    assert old is new
    images = blobs(3, 0)[..., None]
    with pytest.warns(DeprecationWarning, match="fit_images is now vaeood.data.conform.conform_images"):
        padded = old.fit_images(images, (1, 32, 32), "pad")
    np.testing.assert_array_equal(padded, new.conform_images(images, (1, 32, 32), "pad"))


def test_data_fit_and_fit_limit_on_the_command_line_still_work_with_a_notice(run, tmp_path, capsys):
    run_dir, data = run
    assert main(["train", str(tmp_path / "r"), "--data-dir", str(data), "--data.fit=pad", "--train.epochs=1",
                 "--model.base_channels=4", "--model.latent_dim=4", "--data.limit=32"]) == 0
    err = capsys.readouterr().err
    assert "vaeood: command line: data.fit is now data.conform (the old keys go in vaeood 0.3)" in err
    assert Config.from_file(tmp_path / "r" / "config.json").data.conform == "pad"

    argv = ["evaluate", str(run_dir), "--in", "fashion_mnist", "--ood", "mnist", "--data-dir", str(data),
            "--detectors", "typicality", "--limit", "16", "--out", str(tmp_path / "e")]
    assert main([*argv, "--n-fit", "40"]) == 0
    new = capsys.readouterr()
    assert main([*argv, "--fit-limit", "40"]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and "deprecated" not in new.err
    notice = [line for line in old.err.splitlines() if "deprecated" in line]
    assert notice == ["vaeood: --fit-limit is deprecated, use --n-fit (the old name goes in vaeood 0.3)"]


def test_an_old_runs_config_with_data_fit_loads_as_data_conform(run, tmp_path):
    import json
    import shutil

    from vaeood.training.run_dir import Run

    old_run = tmp_path / "old"
    shutil.copytree(run[0], old_run)
    path = old_run / "config.json"
    raw = json.loads(path.read_text())
    raw["data"]["fit"] = raw["data"].pop("conform")
    path.write_text(json.dumps(raw))
    with pytest.warns(DeprecationWarning, match="data.fit is now data.conform") as caught:
        config = Run(old_run).config
    assert len(caught) == 1 and config == Config.from_file(run[0] / "config.json")
    raw["data"]["conform"] = "pad"
    path.write_text(json.dumps(raw))
    with pytest.raises(vaeood.training.config.ConfigError, match="both data.fit and its new name data.conform"):
        Run(old_run).config


def test_calibration_records_name_no_conform_so_their_format_stays_2(run, tmp_path):
    """An older format is refused with "calibrate again" (tests/test_detect.py checks it)."""
    import shutil

    cal_run = tmp_path / "cal"
    shutil.copytree(run[0], cal_run)
    record = vaeood.calibrate(cal_run, "nll", n_calibration=32, data_dir=str(run[1]))
    assert "fit" not in record and "conform" not in record
    assert record["format"] == 2
