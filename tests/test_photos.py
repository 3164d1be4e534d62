"""Photos as they come, end to end on the real Tiny ImageNet JPEGs of ``$VAEOOD_DATA``
(e.g. ../shared/data, with ``tinyimagenet64/``): ``vaeood fit`` on a small copy of the
training classes (grey JPEGs among colour ones, as in the release) with no flags, then
``vaeood detect`` with no flags on their validation photos, uniform noise and photos of
other sizes and modes (a 640×480 one, a palette one, an EXIF-rotated one)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaeood.cli import main
from vaeood.decisions.conformal import threshold
from vaeood.decisions.conformal_rates import realised_fpr_upper

PHOTOS = Path(os.environ.get("VAEOOD_DATA", "/nonexistent")) / "tinyimagenet64"
PER_CLASS, VAL_PER_CLASS, NOISE = 50, 10, 100


def _copy_photos(dest: Path) -> tuple[Path, Path]:
    """``dest/train/<wnid>/`` with the first PER_CLASS training photos of each class, and
    ``dest/new/`` with VAL_PER_CLASS validation photos of each training class plus NOISE
    uniform-noise 64×64 PNGs."""
    train, new = dest / "train", dest / "new"
    new.mkdir(parents=True)
    for cls in sorted((PHOTOS / "train").iterdir()):
        (train / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:PER_CLASS]:
            shutil.copy(f, train / cls.name / f.name)
        for f in sorted((PHOTOS / "val" / cls.name).iterdir())[:VAL_PER_CLASS]:
            shutil.copy(f, new / f.name)
    rng = np.random.default_rng(0)
    for i in range(NOISE):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(new / f"noise_{i:03d}.png")
    return train, new


def _rows(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


@pytest.mark.slow  # e2e: trains a model (about 40 s on 2 busy cores)
@pytest.mark.skipif(not PHOTOS.is_dir(), reason="set VAEOOD_DATA (e.g. to ../shared/data, with tinyimagenet64/)")
def test_fit_and_detect_real_photos_with_no_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, new = _copy_photos(tmp_path)
    grey = sum(Image.open(f).mode == "L" for f in train.glob("*/*"))
    assert grey > 0  # the copy holds grey JPEGs among the colour ones, as the release does

    assert main(["fit", "train", "--out", "m", "--train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert f"images at 64×64 RGB; {grey} grey photos converted to RGB" in out

    upright = Image.open(sorted(new.glob("val*"))[0]).convert("RGB")
    upright.save(new / "x_upright.png")
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90° counter-clockwise to display": stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_270).save(new / "x_turned.png", exif=exif)
    upright.resize((640, 480)).save(new / "x_large.jpg", quality=95)
    upright.quantize(64).save(new / "x_palette.png")
    assert main(["detect", "m", "new", "--out", "flags.csv"]) == 0
    text = capsys.readouterr().out
    assert "palette photo converted to RGB" in text and "EXIF orientation applied to 1 photo" in text
    rows = _rows(tmp_path / "flags.csv")
    assert rows["x_turned.png"]["score"] == rows["x_upright.png"]["score"]  # the same photo, the same score
    val = np.array([int(r["flagged"]) for k, r in rows.items() if k.startswith("val")])
    noise = np.array([int(r["flagged"]) for k, r in rows.items() if k.startswith("noise")])
    assert len(val) == 10 * VAL_PER_CLASS and len(noise) == NOISE
    # realised FPR ≤ α within its sampling error: with 50 calibration images the threshold's own rate
    # scatters around α, so the count of false alarms is Beta-Binomial, not Binomial (11 of 100 measured)
    calibration = json.loads((tmp_path / "flags.summary.json").read_text())
    t = threshold(np.arange(float(calibration["n_calibration"])), 0.05)
    assert calibration["n_calibration"] == 50 and val.mean() <= realised_fpr_upper(t, len(val), level=0.99)
    assert noise.mean() == 1.0  # every noise image (measured: the lowest noise score is above the threshold)
