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
