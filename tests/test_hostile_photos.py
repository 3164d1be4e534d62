"""Hostile photo files (issue 34, item 2) through `vaeood detect MODEL FOLDER` and the reader of
`vaeood fit FOLDER`: each one refused by name with its reason, or handled by a rule of
vaeood.data.decode / vaeood.data.listing, never a traceback, a hang or a Pillow warning
without the file's name. Also two refusals of the run and the saved object: data.image_size
given for a dataset, and vaeood.load of a path that does not exist. Tiny data written by the test."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import vaeood
from tinydata import blobs, write_npz
from vaeood.cli import main
from vaeood.data import DataError, load_dataset
from vaeood.data.decode import decode_image
from vaeood.image_detector import SavedDetectorError

TINY = ["--train.epochs=1", "--model.base_channels=4", "--model.latent_dim=4", "--train.batch_size=64"]
GOOD = blobs(4, 1)
LONG_NAME = "n" * 251 + ".png"  # 255 bytes, the longest name most file systems take
NEWLINE_NAME = "two\nlines.png"


def _png(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **kw)
    return out.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", **kw)
    return out.getvalue()


def _bomb() -> bytes:
    """A 100-byte PNG whose header declares 50,000×50,000 grey pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) +
            chunk(b"IEND", b""))


def _exif_jpeg(damage) -> bytes:
    """An RGB JPEG with an EXIF block (orientation 6, a maker) damaged by ``damage(block)``."""
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "maker"
    data = _jpeg(Image.fromarray(np.repeat(GOOD[0][..., None], 3, -1)), exif=exif.tobytes())
    start = data.index(b"Exif\0\0") + 6
    block = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else exif.tobytes()
    return data[:start] + damage(block) + data[start + len(block):]


REFUSED = {  # file name: (bytes, the reason named)
    "bomb.png": (_bomb(), "refused as a decompression bomb"),
    "cut.jpg": (None, "truncated or corrupt"),
    "exif_header.jpg": (_exif_jpeg(lambda b: b"\xff" * 8 + b[8:]), "corrupt EXIF block (no TIFF header)"),
    "exif_tags.jpg": (_exif_jpeg(lambda b: b[:14] + b"\xff" * 4 + b[18:]),  # the maker's length
                      "corrupt EXIF block (Pillow: Tag data larger than file"),
    "exif_turn.jpg": (_exif_jpeg(lambda b: b[:30] + b"\xff" * 4 + b[34:]),  # the orientation's value
                      "corrupt EXIF block (orientation 65535, not one of 1–8)"),
    "text.jpg": (b"not a photo\n" * 10, "not an image file (Pillow cannot identify it)"),
    "empty.png": (b"", "an empty file (0 bytes)"),
    "bad\nname.jpg": (b"text", "not an image file"),
}
HANDLED = {  # file name: (bytes, the conversion counted, or None)
    "cmyk.jpg": (_jpeg(Image.fromarray(np.repeat(GOOD[0][..., None], 3, -1)).convert("CMYK")), "CMYK → RGB"),
    "sixteen.png": (_png(Image.fromarray(GOOD[1].astype(np.uint16) * 257)), "16-bit grey → 8-bit"),
    "one_bit.png": (_png(Image.fromarray(GOOD[2] > 127)), "1-bit → grey"),
    "png_bytes.jpg": (_png(Image.fromarray(GOOD[3])), None),
    NEWLINE_NAME: (_png(Image.fromarray(GOOD[3])), None),
    LONG_NAME: (_png(Image.fromarray(GOOD[3])), None),
}
OTHER_SIZE = {"dot.png": (1, 1), "strip.png": (10, 20_000)}  # (H, W)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run on 300 of 400 grey 28×28 'fashion_mnist' blobs, calibrated for nll on 100 held-out
    ones, and a folder of 4 good blobs with every hostile file of this module beside them."""
    root = tmp_path_factory.mktemp("photos")
    data = root / "data"
    write_npz(data, "fashion_mnist", "train", blobs(400, 0))
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("VAEOOD_DATA", str(data))  # detect scores the calibration images again: it finds them here
    run = root / "run"
    assert main(["train", str(run), "--data-dir", str(data), "--data.limit=300", *TINY]) == 0
    assert main(["calibrate", str(run), "--detector", "nll", "--n", "100", "--data-dir", str(data)]) == 0
    folder = root / "hostile"
    folder.mkdir()
    for i, img in enumerate(GOOD):
        Image.fromarray(img).save(folder / f"good{i}.png")
    whole = _jpeg(Image.fromarray(GOOD[0]))
    REFUSED["cut.jpg"] = (whole[: len(whole) // 2], REFUSED["cut.jpg"][1])
    for name, (data_bytes, _) in {**REFUSED, **HANDLED}.items():
        (folder / name).write_bytes(data_bytes)
    for name, (h, w) in OTHER_SIZE.items():
        Image.fromarray(np.full((h, w), 200, np.uint8)).save(folder / name)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "up").symlink_to("..")
    with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:
        f.write(_png(Image.fromarray(GOOD[0])))
    yield {"data": data, "run": run, "folder": folder, "root": root}
    monkeypatch.undo()


def _shown(name: str) -> str:
    """A file name as messages print it: a newline escaped."""
    return name.replace("\n", "\\n")


def _rows(path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


REASONS = {**{name: why for name, (_, why) in REFUSED.items()},
           "loop.png": "a symbolic link loop: not followed",
           "up": "a symbolic link to this folder or one above it (a loop): not followed",
           "caf\\xe9.png": "its name is not valid UTF-8",
           "dot.png": "C×H×W = 1×1×1, not the model's C×H×W = 1×28×28",
           "strip.png": "C×H×W = 1×10×20000, not the model's C×H×W = 1×28×28"}


def test_detect_names_each_hostile_file_with_its_reason_then_skips_them(tiny, tmp_path, capsys):
    run, folder, out = tiny["run"], tiny["folder"], tmp_path / "o.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of Pillow's without the file's name
        assert main(["detect", str(run), str(folder), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        n_files = len(REFUSED) + len(HANDLED) + len(OTHER_SIZE) + len(GOOD) + 3
        assert f"{len(REASONS)} of {n_files} files cannot be used" in err and not out.exists()
        for name, why in REASONS.items():
            assert f"  {_shown(name)}: {why}" in err, name
        assert "Traceback" not in err and "bad\nname" not in err  # a newline in a name is shown escaped

        assert main(["detect", str(run), str(folder), "--skip-bad", "--resize", "--out", str(out)]) == 0
    rows = _rows(out)
    # handled: the good files, the converted ones, and the 1×1 and 20,000×10 images resized by --resize
    assert sorted(rows) == sorted([f"good{i}.png" for i in range(4)] + list(HANDLED) + list(OTHER_SIZE))
    summary = json.loads(out.with_name("o.summary.json").read_text())
    assert sorted(n for n, _ in summary["skipped"]) == sorted(n for n in REASONS if n not in OTHER_SIZE)
    assert all(REASONS[name] in reason for name, reason in summary["skipped"])
    assert summary["converted"] == {"1-bit → grey": 1, "16-bit grey → 8-bit": 1, "CMYK → RGB": 1, "RGB → grey": 1}
    assert summary["fitted"]["from_shapes"] == {"1×1×1": 1, "1×10×20000": 1}
    # PNG bytes in a .jpg are read by content: the same pixels, the same score, as the PNG named .png;
    # so are the files named with a newline and with 255 bytes
    same = {float(rows[n]["score"]) for n in ("good3.png", "png_bytes.jpg", NEWLINE_NAME, LONG_NAME)}
    assert len(same) == 1
    # the 16-bit PNG (v · 257) scores as its 8-bit source
    assert float(rows["sixteen.png"]["score"]) == pytest.approx(float(rows["good1.png"]["score"]), rel=1e-6)


def test_a_folder_of_many_empty_files_is_refused_in_one_summarised_message(tiny, tmp_path, capsys):
    folder = tmp_path / "empties"
    folder.mkdir()
    for i, img in enumerate(GOOD):
        Image.fromarray(img).save(folder / f"good{i}.png")
    for i in range(2000):
        (folder / f"e{i:04d}.jpg").touch()
    out = tmp_path / "o.csv"
    assert main(["detect", str(tiny["run"]), str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2000 of 2004 files cannot be used" in err and "e0000.jpg: an empty file (0 bytes)" in err
    assert "... and 1980 more" in err and len(err.splitlines()) < 30
    assert main(["detect", str(tiny["run"]), str(folder), "--skip-bad", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 2000 files: e0000.jpg (an empty file (0 bytes))" in printed and len(printed.splitlines()) < 30
    assert len(_rows(out)) == 4


def test_fit_reads_a_hostile_folder_by_the_same_rules(tiny, tmp_path, capsys, monkeypatch):
    """`vaeood fit FOLDER` refuses the folder naming each bad file before any training; its reader,
    with data.skip_bad and the working size, keeps the handled files and resizes the odd sizes."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(tiny["folder"]), "--out", "m", *TINY]) == 2
    err = capsys.readouterr().err
    for name, why in REASONS.items():
        if name not in OTHER_SIZE:  # fit resizes every size to its working size
            assert f"{_shown(name)}: {why}" in err, name
    assert "Traceback" not in err and not (tmp_path / "m" / "checkpoint.pt").exists()
    data = load_dataset(str(tiny["folder"]), "train", conform="resize", skip_bad=True, image_size=(28, 28))
    assert sorted(n for n, _ in data.folder["skipped"]) == sorted(n for n in REASONS if n not in OTHER_SIZE)
    assert data.images.shape == (len(GOOD) + len(HANDLED) + len(OTHER_SIZE), 28, 28, 1)


def test_corrupt_exif_is_refused_whatever_pillow_makes_of_it(tmp_path):
    """Pillow reads a damaged EXIF block in part, or not at all, with a warning that names no file:
    the orientation is then not known, so the file is refused, by name, with no warning."""
    rng = np.random.default_rng(0)
    for i in range(30):
        def damage(block, i=i):
            b = bytearray(block)
            for at in rng.integers(0, len(b), 1 + i % 4):
                b[at] = rng.integers(0, 256)
            return bytes(b)
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(_exif_jpeg(damage))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                decoded = decode_image(path)
            except DataError as err:
                assert "corrupt" in str(err)
            else:  # the orientation read whole, or its tag gone (an EXIF block without one)
                with Image.open(path) as img:
                    assert decoded.conversions == ("EXIF orientation applied",) or img.getexif().get(0x0112) is None


def test_image_size_for_a_dataset_is_refused_naming_its_shape(tiny, tmp_path, capsys):
    assert main(["train", str(tmp_path / "r"), "--data-dir", str(tiny["data"]), "--data.image_size=[32,32]",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "data.image_size=[32, 32] applies to a folder of images only" in err
    assert "fashion_mnist (train) is a dataset of 28×28 images" in err and "remove --data.image_size" in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_loading_a_saved_detector_from_a_path_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(SavedDetectorError, match=r"nowhere: no such file or folder"):
        vaeood.load(tmp_path / "nowhere")
    with pytest.raises(SavedDetectorError, match="no detector.json"):
        vaeood.load(tmp_path)
