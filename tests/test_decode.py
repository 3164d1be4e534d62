"""Decoding one photo and converting it to 8-bit grey or RGB by the rules of
vaeood.data.decode: each conversion with a known answer, each refusal by name."""


import numpy as np
import pytest
from PIL import Image

from vaeood.data import DataError
from vaeood.data.decode import PNG_SIGNATURE, _to_array, conversion_text, decode_image, to_channels
from vaeood.data.inputs import read_image_folder

RNG = np.random.default_rng(0)
PHOTO = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # wider than tall: a quarter turn shows


def _save(path, img, **kw):
    img.save(path, **kw)
    return path


def test_grey_and_rgb_are_read_as_they_are(tmp_path):
    got = decode_image(_save(tmp_path / "rgb.png", Image.fromarray(PHOTO)))
    np.testing.assert_array_equal(got.pixels, PHOTO)
    assert got.conversions == ()
    grey = decode_image(_save(tmp_path / "grey.png", Image.fromarray(PHOTO[..., 0])))
    np.testing.assert_array_equal(grey.pixels[..., 0], PHOTO[..., 0])
    assert grey.conversions == ()


def test_grey_to_rgb_repeats_the_channel_and_rgb_to_grey_is_bt601_luma():
    grey = PHOTO[..., :1]
    rgb, what = to_channels(grey, 3)
    assert what == "grey → RGB" and (rgb == grey).all() and rgb.shape == (12, 20, 3)
    luma, what = to_channels(np.array([[[255, 0, 0], [0, 255, 0]]], np.uint8), 1)
    assert what == "RGB → grey" and luma[..., 0].tolist() == [[76, 150]]  # round(0.299·255), round(0.587·255)
    assert to_channels(PHOTO, 3) == (PHOTO, None)


def test_palette_becomes_rgb_or_grey(tmp_path):
    pal = Image.fromarray(PHOTO).quantize(16)
    got = decode_image(_save(tmp_path / "pal.png", pal))
    np.testing.assert_array_equal(got.pixels, np.asarray(pal.convert("RGB")))
    assert got.conversions == ("palette → RGB",)
    grey = decode_image(_save(tmp_path / "greypal.png", Image.fromarray(PHOTO[..., 0]).convert("P")))
    assert grey.pixels.shape == (12, 20, 1) and grey.conversions == ("palette → grey",)


def test_sixteen_bit_grey_is_scaled_by_255_over_65535(tmp_path):
    values = np.array([[0, 257, 32767, 65535]], np.uint16)
    got = decode_image(_save(tmp_path / "deep.png", Image.fromarray(values)))
    assert got.pixels[..., 0].tolist() == [[0, 1, 127, 255]] and got.conversions == ("16-bit grey → 8-bit",)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.fromarray(PHOTO).convert("CMYK")
    got = decode_image(_save(tmp_path / "cmyk.jpg", cmyk, quality=95))
    assert got.conversions == ("CMYK → RGB",) and got.pixels.shape == (12, 20, 3)
    assert np.abs(got.pixels.astype(int) - PHOTO).mean() < 12  # JPEG's loss only: the colours are kept


def test_transparency_is_refused_and_an_opaque_alpha_dropped(tmp_path):
    rgba = np.concatenate([PHOTO, np.full((12, 20, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(decode_image(_save(tmp_path / "opaque.png", Image.fromarray(rgba))).pixels, PHOTO)
    rgba[3, 4, 3] = 0
    with pytest.raises(DataError, match="transparency"):
        decode_image(_save(tmp_path / "clear.png", Image.fromarray(rgba)))
    la = Image.fromarray(PHOTO[..., 0]).convert("LA")
    la.putpixel((0, 0), (9, 100))
    with pytest.raises(DataError, match="transparency"):
        decode_image(_save(tmp_path / "la.png", la))


def test_an_exif_rotated_photo_gives_the_pixels_of_the_upright_one(tmp_path):
    upright = _save(tmp_path / "upright.png", Image.fromarray(PHOTO))
    stored = Image.fromarray(PHOTO).transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    turned = decode_image(_save(tmp_path / "turned.png", stored, exif=exif))
    np.testing.assert_array_equal(turned.pixels, decode_image(upright).pixels)
    assert turned.conversions == ("EXIF orientation applied",)
    both = read_image_folder(tmp_path)  # the header pass sees the upright size too: one shape, no conform
    np.testing.assert_array_equal(both.images[0], both.images[1])
    assert both.converted == {"EXIF orientation applied": 1}


def _chunks(png: bytes) -> list[bytes]:
    """A PNG's chunks, each whole (length, type, data, CRC), after the 8-byte signature."""
    out, at = [], 8
    while at < len(png):
        length = int.from_bytes(png[at:at + 4], "big")
        out.append(png[at:at + 12 + length])
        at += 12 + length
    return out


def test_an_exif_block_after_the_pixels_is_found_by_the_header_pass(tmp_path):
    # PNG allows eXIf after IDAT, where the header pass cannot see it without walking the chunks
    upright = _save(tmp_path / "upright.png", Image.fromarray(PHOTO))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = _save(tmp_path / "stored.png", Image.fromarray(PHOTO).transpose(Image.Transpose.ROTATE_90), exif=exif)
    chunks = _chunks(stored.read_bytes())
    late = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    assert len(late) == 1 and rest[-1][4:8] == b"IEND"
    (tmp_path / "late.png").write_bytes(PNG_SIGNATURE + b"".join(rest[:-1] + late + rest[-1:]))
    stored.unlink()
    with Image.open(tmp_path / "late.png") as img:
        assert "exif" not in img.info  # Pillow's header does not show it
    both = read_image_folder(tmp_path)  # one shape, 12×20: the late block's quarter turn was seen
    assert both.images.shape == (2, 12, 20, 3) and both.converted == {"EXIF orientation applied": 1}
    np.testing.assert_array_equal(both.images[0], decode_image(upright).pixels)
    np.testing.assert_array_equal(both.images[0], both.images[1])


def test_an_animated_image_is_refused_by_name(tmp_path):
    frames = [Image.fromarray(PHOTO), Image.fromarray(255 - PHOTO)]
    path = _save(tmp_path / "anim.png", frames[0], save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"an animated image \(2 frames\): refused, not cut to its first frame"):
        decode_image(path)


def test_a_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    path = _save(tmp_path / "big.png", Image.fromarray(PHOTO))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # 240 pixels: more than allowed, not twice as many
    with pytest.raises(DataError, match=r"decompression bomb: 20×12 = 240 pixels, more than Pillow's MAX_IMAGE_PIXELS"):
        decode_image(path)


def test_other_modes_are_refused_naming_the_mode():
    with pytest.raises(DataError, match="pixel format 'F'"):
        _to_array(Image.new("F", (2, 2)))


def test_a_folder_of_mixed_modes_takes_its_mode_and_counts_each_conversion(tmp_path):
    for i in range(3):
        _save(tmp_path / f"rgb{i}.jpg", Image.fromarray(np.roll(PHOTO, i, axis=0)), quality=95)
    _save(tmp_path / "grey.jpg", Image.fromarray(PHOTO[..., 0]), quality=95)
    _save(tmp_path / "pal.png", Image.fromarray(PHOTO).quantize(8))
    got = read_image_folder(tmp_path)
    assert got.images.shape == (5, 12, 20, 3)
    assert got.converted == {"grey → RGB": 1, "palette → RGB": 1}
    assert conversion_text(got.converted) == "1 grey photo converted to RGB; 1 palette photo converted to RGB"
    assert conversion_text({"grey → RGB": 141}) == "141 grey photos converted to RGB"
