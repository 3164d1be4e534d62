"""The fit calibrate saves for detect (vaeood.decisions.fitted_detector): used only when it is the
recorded file and reproduces its calibration sample, refused when it would run code, and
never a change of any decision."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

import vaeood
from tinydata import blobs, strokes, write_npz
from vaeood.cli import main
from vaeood.decisions.records import NoCalibrationError, calibration_path
from vaeood.decisions.scorer import DetectorScorer
from vaeood.decisions.fitted_detector import N_CHECK, check_rows, fitted_path, load_fitted

TINY = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A tiny run with `typicality` (a detector that fits) calibrated, and a folder of PNGs."""
    root = tmp_path_factory.mktemp("fitted")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(500, 0))
    run = root / "run"
    assert main(["train", str(run), "--data-dir", str(data), "--data.limit=300", *TINY]) == 0
    assert main(["calibrate", str(run), "--detector", "typicality", "--n-fit", "100", "--n", "100",
                 "--data-dir", str(data)]) == 0
    folder = root / "imgs"
    folder.mkdir()
    for i, img in enumerate([*blobs(10, 1), *strokes(10, 3)]):
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    return {"run": run, "data": str(data), "folder": folder}


def _copy(calibrated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(calibrated["run"], run)
    return run


def _no_refit(monkeypatch):
    def refuse(self, start, stop, seed=None):
        raise AssertionError("detect fitted the detector again")
    monkeypatch.setattr(DetectorScorer, "fit", refuse)


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_detect_uses_the_saved_fit_and_decides_as_a_fresh_fit_does(calibrated, tmp_path, monkeypatch):
    run = _copy(calibrated, tmp_path)
    path = calibration_path(run, "typicality")
    record = json.loads(str(np.load(path)["meta"]))
    assert record["fitted_sha256"] is not None and fitted_path(path).is_file()
    saved = load_fitted(fitted_path(path), record["fitted_sha256"])
    np.testing.assert_array_equal(saved["check_rows"], check_rows(100))
    assert len(saved["check_rows"]) == min(N_CHECK, 100)

    refitted = vaeood.decide(run, calibrated["folder"], "typicality", alpha=0.2, data_dir=calibrated["data"])
    with monkeypatch.context() as m:
        _no_refit(m)
        fast = vaeood.decide(run, calibrated["folder"], "typicality", alpha=0.2, data_dir=calibrated["data"])
    np.testing.assert_array_equal(fast.scores, refitted.scores)
    np.testing.assert_array_equal(fast.flagged, refitted.flagged)

    os.remove(fitted_path(path))  # no saved fit: the full fit, as before
    again = vaeood.decide(run, calibrated["folder"], "typicality", alpha=0.2, data_dir=calibrated["data"])
    np.testing.assert_array_equal(again.scores, refitted.scores)


def test_a_changed_fit_file_is_not_unpickled_and_the_detector_is_fitted_again(calibrated, tmp_path, monkeypatch,
                                                                               caplog):
    run = _copy(calibrated, tmp_path)
    fitted = fitted_path(calibration_path(run, "typicality"))
    expected = vaeood.decide(run, calibrated["folder"], "typicality", data_dir=calibrated["data"]).scores

    class Boom:  # a pickle that would run a command when loaded
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    fitted.write_bytes(pickle.dumps(Boom()))
    fits = []
    monkeypatch.setattr(DetectorScorer, "fit", lambda self, a, b, seed=None, real=DetectorScorer.fit: (
        fits.append(1), real(self, a, b, seed)))
    result = vaeood.decide(run, calibrated["folder"], "typicality", data_dir=calibrated["data"])
    assert fits and not (tmp_path / "pwned").exists()
    assert "SHA-256 differs" in caplog.text
    np.testing.assert_array_equal(result.scores, expected)


def test_the_restricted_loader_refuses_globals_that_run_code(tmp_path):
    import hashlib

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    path = tmp_path / "x.fitted.pkl"
    data = pickle.dumps({"format": 1, "detector": Boom()})
    path.write_bytes(data)
    # even with the right digest (a calibration record rewritten to match), nothing runs
    assert load_fitted(path, hashlib.sha256(data).hexdigest()) is None
    assert not (tmp_path / "pwned").exists()


def test_a_saved_fit_that_no_longer_reproduces_its_sample_is_replaced_by_a_full_fit(calibrated, tmp_path,
                                                                                   monkeypatch, caplog):
    run = _copy(calibrated, tmp_path)
    expected = vaeood.decide(run, calibrated["folder"], "typicality", data_dir=calibrated["data"]).scores
    # a feature computed differently now (another version's code, say): every score moves by 1
    real = DetectorScorer.score_images
    calls = []

    def shifted(self, images, seed):
        calls.append(len(images))
        return real(self, images, seed) + (1.0 if len(calls) == 1 else 0.0)
    monkeypatch.setattr(DetectorScorer, "score_images", shifted)
    result = vaeood.decide(run, calibrated["folder"], "typicality", data_dir=calibrated["data"])
    assert "no longer reproduces its calibration scores" in caplog.text
    assert calls[:2] == [min(N_CHECK, 100), 100]  # the sample, then every calibration image after the refit
    np.testing.assert_array_equal(result.scores, expected)


def test_a_fitted_sha256_that_is_not_a_digest_is_refused_naming_the_field(calibrated, tmp_path):
    run = _copy(calibrated, tmp_path)
    path = calibration_path(run, "typicality")
    with np.load(path) as f:
        scores, meta = f["scores"], json.loads(str(f["meta"]))
    meta["fitted_sha256"] = "not a digest"
    np.savez(path, scores=scores, meta=np.array(json.dumps(meta)))
    with pytest.raises(NoCalibrationError, match="field 'fitted_sha256'"):
        vaeood.decide(run, calibrated["folder"], "typicality", data_dir=calibrated["data"])


def test_a_fit_seed_that_is_not_an_integer_is_refused_naming_the_field(calibrated, tmp_path):
    run = _copy(calibrated, tmp_path)
    path = calibration_path(run, "typicality")
    with np.load(path) as f:
        scores, meta = f["scores"], json.loads(str(f["meta"]))
    assert meta["fit_seed"] == meta["seed"]  # calibrate's own fit: its seed
    meta["fit_seed"] = "0"
    np.savez(path, scores=scores, meta=np.array(json.dumps(meta)))
    with pytest.raises(NoCalibrationError, match="field 'fit_seed' is \"0\", expected an integer"):
        vaeood.decide(run, calibrated["folder"], "typicality", data_dir=calibrated["data"])


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_calibration_scores_come_from_the_feature_cache_equal_to_the_path_detect_scores_by(calibrated, tmp_path):
    """calibrate scores its slice through RUN/features (shared by every detector calibrated on
    the run); the guarantee rests on those scores being what score_images, the path of the
    images to decide on, gives the same images: equal to the bit."""
    run = _copy(calibrated, tmp_path)
    record = vaeood.calibrate(run, "dose_plus", n_fit=100, n_calibration=100, data_dir=calibrated["data"], seed=3)
    a, b = record["calibration_slice"]
    assert any(f"from{a}to{b}_seed3" in p.name for p in (run / "features").iterdir())
    scorer = DetectorScorer(run, "dose_plus", record["detector_options"], seed=3, data_dir=calibrated["data"])
    scorer.fit(*record["fit_slice"])
    images = np.load(os.path.join(calibrated["data"], "fashion_mnist_train.npz"))["x"][a:b]
    np.testing.assert_array_equal(scorer.score_images(images, 3), record["scores"])


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_decision_rates_use_the_saved_fit_and_give_the_rates_of_a_fresh_fit(calibrated, tmp_path, monkeypatch):
    from vaeood.decisions.run_rates import decision_rates

    run = _copy(calibrated, tmp_path)
    # the fixture has a training split only: its first 50 images stand in for a test set
    kwargs = dict(n_calibration=100, n_fit=100, data_dir=calibrated["data"], split="train", limit=50, seed=0)
    first = decision_rates(run, "fashion_mnist", [], ["typicality"], **kwargs)  # calibrates again (seed 1)
    with monkeypatch.context() as m:
        _no_refit(m)
        reused = decision_rates(run, "fashion_mnist", [], ["typicality"], **kwargs)
    os.remove(fitted_path(calibration_path(run, "typicality")))  # no saved fit: fitted again, same numbers
    refitted = decision_rates(run, "fashion_mnist", [], ["typicality"], **kwargs)
    assert first == reused == refitted
    assert first["typicality"]["calibration"]["seed"] == 1


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_a_saved_fit_is_used_when_float_sums_depend_on_the_batch(calibrated, tmp_path, monkeypatch, caplog):
    """A batch's size and its other images change float32 sums by rounding (oneDNN's kernels
    do): calibrate scores its slice in the feature cache's batches, detect its check sample in
    a batch of its own. The sample must be checked against the scores that path gave it at
    calibration, or the saved fit is never used. Here the encoder's output moves with the
    batch's size, much more than rounding does."""
    from vaeood.models.vae import VAE

    real = VAE.posterior
    monkeypatch.setattr(VAE, "posterior", lambda self, x: (lambda mu, lv: (mu + 1e-3 * len(x), lv))(*real(self, x)))
    run = _copy(calibrated, tmp_path)
    vaeood.calibrate(run, "typicality", n_fit=100, n_calibration=100, data_dir=calibrated["data"])
    with monkeypatch.context() as m:
        _no_refit(m)
        vaeood.decide(run, calibrated["folder"], "typicality", alpha=0.2, data_dir=calibrated["data"])
    assert "no longer reproduces" not in caplog.text


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_decision_rates_calibrate_with_evaluates_fit_and_detect_refits_it_with_its_seed(calibrated, tmp_path,
                                                                                        monkeypatch):
    """The ood-suite fits each detector once: evaluate's fit (features of seed 0) is taken by the
    calibration (seed 1), which records the fit's seed; a detect without the saved fit fits again
    with that seed and reproduces every calibration score (typicality's fit reads ELBOs, which
    move with the seed: a refit at the calibration's seed would not reproduce them)."""
    from vaeood.decisions.run_rates import decision_rates
    from vaeood.evaluation.evaluate import evaluate

    run = _copy(calibrated, tmp_path)
    shutil.rmtree(run / "calibration")
    kwargs = dict(n_fit=100, data_dir=calibrated["data"], split="train", limit=50, seed=0)
    fits = {}
    evaluate(run, "fashion_mnist", [], detectors=["typicality"], out_dir=tmp_path / "eval", keep_fits=fits, **kwargs)
    kept = fits["typicality"]
    assert (kept.dataset, kept.split, kept.start, kept.stop, kept.seed) == ("fashion_mnist", "train", 300, 400, 0)
    assert list(kept.scores) == ["fashion_mnist"] and len(kept.scores["fashion_mnist"]) == 50
    slices = []
    real_slice = DetectorScorer.score_slice
    monkeypatch.setattr(DetectorScorer, "score_slice", lambda self, images, seed: (
        slices.append((images.dataset, seed)), real_slice(self, images, seed))[1])
    with monkeypatch.context() as m:
        _no_refit(m)
        rates = decision_rates(run, "fashion_mnist", [], ["typicality"], n_calibration=100, fits=fits, **kwargs)
    assert slices == [("fashion_mnist", 1)]  # calibrate's slice only: the test set's scores are evaluate's
    record = json.loads(str(np.load(calibration_path(run, "typicality"))["meta"]))
    assert (record["seed"], record["fit_seed"], record["fit_slice"]) == (1, 0, [300, 400])
    assert rates["typicality"]["calibration"]["seed"] == 1
    # scored again here with the same fit instead (evaluate's scores withheld): the same rates
    shutil.rmtree(run / "calibration")
    slices.clear()
    monkeypatch.setattr(type(kept), "scores_of", lambda self, sets, args: None)
    again = decision_rates(run, "fashion_mnist", [], ["typicality"], n_calibration=100, fits=fits, **kwargs)
    assert again == rates and slices == [("fashion_mnist", 1), ("fashion_mnist", 1), ("fashion_mnist", 0)]

    os.remove(fitted_path(calibration_path(run, "typicality")))  # detect must fit again, at seed 0
    seeds = []
    monkeypatch.setattr(DetectorScorer, "fit", lambda self, a, b, seed=None, real=DetectorScorer.fit: (
        seeds.append(seed), real(self, a, b, seed)))
    vaeood.decide(run, calibrated["folder"], "typicality", alpha=0.2, data_dir=calibrated["data"])
    assert seeds == [0]
    # the same refit at the calibration's seed would not reproduce the calibration scores
    scorer = DetectorScorer(run, "typicality", record["detector_options"], seed=1, data_dir=calibrated["data"])
    scorer.fit(*record["fit_slice"])
    a, b = record["calibration_slice"]
    images = np.load(os.path.join(calibrated["data"], "fashion_mnist_train.npz"))["x"][a:b]
    assert not np.allclose(scorer.score_images(images, 1), np.load(calibration_path(run, "typicality"))["scores"])


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_calibrate_does_not_take_a_fit_of_other_images_or_options(calibrated, tmp_path):
    from vaeood.evaluation.evaluate import evaluate

    run = _copy(calibrated, tmp_path)
    fits = {}
    evaluate(run, "fashion_mnist", [], detectors=["typicality"], out_dir=tmp_path / "eval", keep_fits=fits,
             n_fit=50, data_dir=calibrated["data"], split="train", limit=50, seed=0)
    other_slice = vaeood.calibrate(run, "typicality", n_fit=100, n_calibration=100, data_dir=calibrated["data"],
                                   seed=1, fitted=fits["typicality"])
    iwae = {"estimator": "iwae", "estimator_options": {"k": 2}}
    other_options = vaeood.calibrate(run, "typicality", detector_options=iwae, n_fit=50, n_calibration=100,
                                     data_dir=calibrated["data"], seed=1, fitted=fits["typicality"])
    assert other_slice["fit_seed"] == other_options["fit_seed"] == 1  # fitted again, at the calibration's seed


@pytest.mark.slow  # e2e: trains a model, or fits and calibrates detectors on one
def test_decision_rates_use_neither_a_fit_nor_scores_made_otherwise(calibrated, tmp_path):
    """A kept fit of other images, even with the calibration's own seed, and scores of another
    number of test images are not used: the rates are those computed without them."""
    from vaeood.decisions.run_rates import decision_rates
    from vaeood.evaluation.evaluate import evaluate

    run = _copy(calibrated, tmp_path)
    common = dict(data_dir=calibrated["data"], split="train")
    fits = {}
    evaluate(run, "fashion_mnist", [], detectors=["typicality"], out_dir=tmp_path / "eval", keep_fits=fits,
             n_fit=50, limit=50, seed=1, **common)  # fitted on 50 images with features of seed 1
    kwargs = dict(n_calibration=100, n_fit=100, limit=50, seed=0, **common)
    shutil.rmtree(run / "calibration")
    given = decision_rates(run, "fashion_mnist", [], ["typicality"], fits=fits, **kwargs)
    shutil.rmtree(run / "calibration")
    alone = decision_rates(run, "fashion_mnist", [], ["typicality"], **kwargs)
    assert given == alone

    fits.clear()
    evaluate(run, "fashion_mnist", [], detectors=["typicality"], out_dir=tmp_path / "eval", keep_fits=fits,
             n_fit=100, limit=50, seed=0, **common)
    shutil.rmtree(run / "calibration")
    fewer = decision_rates(run, "fashion_mnist", [], ["typicality"], fits=fits, **{**kwargs, "limit": 40})
    assert fewer["typicality"]["n_in"] == 40  # not evaluate's 50 scores
