"""Step 3 of reading images: decode one PNG/JPEG file and convert it to 8-bit grey or RGB
by stated rules (:func:`decode_image`), then to the run's mode (:func:`to_channels`). Every conversion
made is named, so that a folder's summary can count them ("141 grey photos converted to
RGB"); every image that cannot be converted by a stated rule is refused with the reason.

The rules, in the order they apply:

- **Decompression bombs** are refused: an image of more than Pillow's
  ``Image.MAX_IMAGE_PIXELS`` pixels (89,478,485 by default) is never decoded.
- **Animated images** (an animated PNG) are refused, naming the number of frames: cutting
  one to its first frame would score a picture the user never chose.
- **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``), so the pixels are
  the photo as a viewer shows it, upright. An EXIF block Pillow cannot read whole (it warns
  "Corrupt EXIF data", "Tag data larger than file", ...), without its TIFF header, or
  with an orientation other than 1–8 is refused, naming the problem: the orientation a viewer shows is then not known.
- **Format by content**: a file is read as the format its bytes hold, whatever its
  suffix says (PNG bytes named ``.jpg`` are read as the PNG they are); bytes that are
  no PNG or JPEG (a text file named ``.jpg``) are refused as "not an image file".
- **Palette** images (``P``) become RGB, or grey when every palette colour used is grey;
  **1-bit** images (``1``) become grey 0/255.
- **16-bit grey** (``I;16``, as Pillow opens a 16-bit PNG) becomes 8-bit by
  ``round(v · 255 / 65535)`` (0 → 0, 65535 → 255). A 16-bit colour PNG is read by
  Pillow as 8-bit RGB (the high byte of each value). 32-bit integer (``I``) and float
  (``F``) images are refused: their range is not known.
- **CMYK** JPEGs become RGB by Pillow's conversion (``Image.convert("RGB")``, which
  undoes the inversion Adobe's JPEGs store).
- **Transparency** (``LA``, ``RGBA``, ``PA``, a palette's transparent colour) is refused
  when any pixel has alpha < 255 (what lies behind a transparent pixel is not known);
  an opaque alpha channel is dropped.
- Any other mode (``YCbCr`` files Pillow cannot convert, ``LAB``, ``HSV``) is refused.

To the run's mode (:func:`to_channels`): grey → RGB repeats the grey channel three times;
RGB → grey takes the BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (see
:mod:`vaeood.data.conform`).

A folder's images are decoded by :func:`decode_into`, one at a time, straight into one
preallocated array of the target shape (each brought to it by step 4,
:mod:`vaeood.data.conform`), so that a folder is never held twice.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .conform import conform_images, convert_channels, shape_reason, shape_text
from .errors import DataError
from .regular_files import open_regular_file

FORMATS = {"PNG", "JPEG"}
PNG_SIGNATURE, JPEG_SIGNATURE = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
_ORIENTATION = 0x0112  # the EXIF tag
_SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that turn the image a quarter
_MODE_NAMES = {1: "grey", 3: "RGB"}
_UNKNOWN_ORIENTATION = ": the orientation a viewer shows is not known; save the image again without its EXIF block"


@dataclass(frozen=True)
class Decoded:
    """One decoded image: ``pixels`` uint8 ``[H, W, C]`` (C = 1 or 3) and the
    ``conversions`` made (e.g. ``"EXIF orientation applied"``, ``"16-bit grey → 8-bit"``)."""

    pixels: np.ndarray
    conversions: tuple[str, ...] = ()


def decode_image(path: str | os.PathLike) -> Decoded:
    """One PNG/JPEG file as 8-bit grey or RGB by the rules of the module docstring;
    :class:`DataError` with the reason (without the file name: the caller names it) when
    it cannot be used."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with open_regular_file(path) as f, corrupt_metadata_refused():
            with Image.open(f) as img:
                _check_header(img)
                img.verify()  # PNG: every chunk's CRC and the end chunk (a cut-off file fails here)
            f.seek(0)
            with Image.open(f) as img:
                img.load()  # decodes every pixel (a truncated JPEG fails here)
                turned = _orientation(img) != 1
                pixels, converted = _to_array(ImageOps.exif_transpose(img) if turned else img)
                return Decoded(pixels, ("EXIF orientation applied",) * turned + converted)
    except DataError:
        raise
    except (PermissionError, FileNotFoundError) as err:  # e.g. a broken symbolic link
        raise DataError(f"cannot be read ({err.strerror or err})") from None
    except UnidentifiedImageError:
        with open_regular_file(path) as f:
            head = f.read(8)
        if head.startswith(PNG_SIGNATURE) or head.startswith(JPEG_SIGNATURE):
            raise DataError("truncated or corrupt (a PNG/JPEG signature but no readable header)") from None
        raise DataError("not an image file (Pillow cannot identify it)") from None
    except Image.DecompressionBombError as err:
        raise DataError(f"refused as a decompression bomb ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err) or type(err).__name__
        raise DataError(f"truncated or corrupt ({reason})") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The pixels of :func:`decode_image`: uint8 ``[H, W, C]``, C = 1 or 3."""
    return decode_image(path).pixels


def _check_header(img) -> None:
    """Refuse, before decoding, what is never decoded: another format, a decompression
    bomb, an animated image."""
    from PIL import Image

    if img.format not in FORMATS:
        raise DataError(f"a {img.format} image, not PNG or JPEG")
    pixels = img.width * img.height
    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        raise DataError(f"refused as a decompression bomb: {img.width}×{img.height} = {pixels:,} pixels, more than "
                        f"Pillow's MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS:,})")
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise DataError(f"an animated image ({frames} frames): refused, not cut to its first frame; save the frame "
                        "to score as a still PNG/JPEG")


@contextmanager
def corrupt_metadata_refused():
    """Run the ``with`` body (opening and reading an image) with Pillow's warnings caught:
    its decompression-bomb warning ignored (:func:`_check_header` refuses by name), and any
    warning it gives of metadata it cannot read whole ("Corrupt EXIF data", "Tag data
    larger than file", ...) raised as :class:`DataError` (module docstring), never printed
    without the file's name."""
    from PIL import Image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield
    said = [str(w.message).strip() for w in caught if issubclass(w.category, UserWarning)]
    if said:
        raise DataError(f"corrupt EXIF block (Pillow: {said[0]}){_UNKNOWN_ORIENTATION}")


def _orientation(img) -> int:
    """The EXIF orientation of an opened image (1 without one); :class:`DataError` for an EXIF
    block without its TIFF header, of which Pillow would silently read no tag, and for an
    orientation that is not one of 1–8."""
    raw = img.info.get("exif") or b""
    body = raw[6:] if raw.startswith(b"Exif\0\0") else raw
    if raw and body[:4] not in (b"MM\0*", b"II*\0"):
        raise DataError(f"corrupt EXIF block (no TIFF header){_UNKNOWN_ORIENTATION}")
    orientation = img.getexif().get(_ORIENTATION, 1)
    if orientation not in range(1, 9):
        raise DataError(f"corrupt EXIF block (orientation {orientation!r}, not one of 1–8){_UNKNOWN_ORIENTATION}")
    return orientation


def header_shape(img) -> tuple[int, int, int] | None:
    """``(H, W, C)`` of an opened (not decoded) image as :func:`decode_image` will return
    it, from its header alone (size, mode, EXIF orientation), or None when only decoding
    tells (a palette image, an unusual mode, an unreadable header)."""
    channels = {"L": 1, "1": 1, "LA": 1, "I;16": 1, "RGB": 3, "RGBA": 3, "PA": 3, "CMYK": 3}.get(img.mode)
    if img.format not in FORMATS or channels is None or getattr(img, "n_frames", 1) > 1:
        return None
    if img.format == "PNG" and "exif" not in img.info:  # no eXIf chunk before the pixels
        if _png_has_late_exif(img):
            return None
        turned = False  # no EXIF block at all: upright
    else:
        turned = _orientation(img) in _SWAPS_SIDES
    return (img.width, img.height, channels) if turned else (img.height, img.width, channels)


def _png_has_late_exif(img) -> bool:
    """Whether an opened PNG may hold an ``eXIf`` chunk after its first ``IDAT``, where the
    header does not show it: a walk over the chunk headers from there, reading no pixel data.
    Pillow's ``getexif`` instead decodes the whole image to look (0.16 ms of a 64×64 photo),
    which would make the header pass decode every PNG twice. True also when the walk cannot
    finish (a cut-off or broken file): the image is then decoded, which names the reason."""
    import struct

    from PIL import PngImagePlugin

    fp, here = img.fp, img.fp.tell()
    try:
        fp.seek(img.tile[0][2] - 8)  # the first IDAT's chunk header: length and type, 8 bytes
        chunks = PngImagePlugin.ChunkStream(fp)
        while True:
            cid, pos, length = chunks.read()
            if cid in (b"eXIf", b"IEND"):
                return cid == b"eXIf"
            fp.seek(pos + length + 4)  # past the chunk's data and CRC
    except (OSError, SyntaxError, ValueError, IndexError, struct.error):
        return True
    finally:
        fp.seek(here)


def _to_array(img) -> tuple[np.ndarray, tuple[str, ...]]:
    mode = img.mode
    if mode == "P":
        has_alpha = "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        if img.mode == "RGB":
            rgb = np.asarray(img)
            if (rgb[..., :1] == rgb).all():  # a grey palette
                return np.ascontiguousarray(rgb[..., :1]), ("palette → grey",)
            return rgb, ("palette → RGB",)
        return _drop_opaque_alpha(np.asarray(img)), ("palette → RGB",)
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8)[..., None], ("1-bit → grey",)
    if mode in ("I;16", "I;16B", "I;16L"):
        values = np.asarray(img).astype(np.float64)
        return np.rint(values * (255 / 65535)).astype(np.uint8)[..., None], ("16-bit grey → 8-bit",)
    if mode == "CMYK":
        return np.asarray(img.convert("RGB"), dtype=np.uint8), ("CMYK → RGB",)
    if mode in ("LA", "RGBA", "PA"):
        return _drop_opaque_alpha(np.asarray(img.convert("RGBA" if mode == "PA" else mode))), ()
    if mode == "L":
        return np.asarray(img, dtype=np.uint8)[..., None], ()
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8), ()
    raise DataError(f"pixel format {mode!r} is not supported (8-bit or 16-bit grey, RGB, palette or CMYK, with an "
                    "opaque alpha channel at most); convert it to 8-bit grey or RGB first")


def _drop_opaque_alpha(arr: np.ndarray) -> np.ndarray:
    alpha = arr[..., -1]
    if (alpha != 255).any():
        raise DataError(f"has transparency ({int((alpha != 255).sum())} pixels with alpha < 255): refused, as what "
                        "lies behind a transparent pixel is not known; flatten it onto a background first")
    out = arr[..., :-1]
    return np.ascontiguousarray(out if out.ndim == 3 else out[..., None])


def to_channels(pixels: np.ndarray, channels: int) -> tuple[np.ndarray, str | None]:
    """``pixels`` ``[H, W, C]`` in the run's mode (``channels`` 1 or 3) by the rule of the
    module docstring, and the conversion made (``"grey → RGB"``), or None."""
    have = pixels.shape[-1]
    if have == channels:
        return pixels, None
    return convert_channels(pixels[None], channels)[0], f"{_MODE_NAMES[have]} → {_MODE_NAMES[channels]}"


def conversion_text(counts: dict[str, int]) -> str:
    """``{"grey → RGB": 141}`` → ``"141 grey photos converted to RGB"``, joined by ``"; "``."""
    parts = []
    for what, n in sorted(counts.items()):
        if " → " in what:
            src, dst = what.split(" → ")
            parts.append(f"{n} {src} {'photo' if n == 1 else 'photos'} converted to {dst}")
        else:
            parts.append(f"{what} to {n} {'photo' if n == 1 else 'photos'}")
    return "; ".join(parts)


def decode_into(items: list, target, conform: str | None, bad: list) -> tuple[np.ndarray, list[str], Counter,
                                                                           Counter]:
    """Decode ``items`` (:class:`~vaeood.data.listing.Found`) in their order into one
    preallocated uint8 ``[N, H, W, C]`` array of the ``target`` shape (one image in memory at a
    time beside it, never a list of arrays to stack), converted to the target's channels and,
    for another size, conformed by ``conform``. A file that fails to decode, or (without
    ``conform``) decodes to another size than its header said, is appended to ``bad``. Returns
    the images, their names, ``{"C×H×W": count}`` of the images conformed and
    ``{conversion: count}`` of the conversions made."""
    if target is None:
        return np.zeros((0, 1, 1, 1), np.uint8), [], Counter(), Counter()
    out = np.empty((len(items), *target), dtype=np.uint8)
    names: list[str] = []
    fitted: Counter = Counter()
    conversions: Counter = Counter()
    for item in items:
        try:
            decoded = decode_image(item.path)
        except DataError as err:
            bad.append((item.name, str(err)))
            continue
        arr, changed = to_channels(decoded.pixels, target[2])
        if arr.shape != tuple(target):
            if conform is None:
                bad.append((item.name, shape_reason(decoded.pixels.shape, target, model=False)))
                continue
            have = decoded.pixels.shape
            fitted[shape_text((have[2], *have[:2]))] += 1
            arr = conform_images(arr[None].copy(), (target[2], target[0], target[1]), conform)[0]  # writable for torch
        conversions.update(decoded.conversions + ((changed,) if changed else ()))
        out[len(names)] = arr
        names.append(item.name)
    if len(names) < len(out):
        out.resize((len(names), *target), refcheck=False)  # in place: no second copy
    return out, names, fitted, conversions
