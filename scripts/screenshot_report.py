#!/usr/bin/env python
"""Render a ``vaeood detect`` HTML page in headless Chromium and check the screenshot.

Usage:
    python scripts/screenshot_report.py results.html [--out results.png] [--width 1280] [--height 5000]

Chromium: ``--chromium PATH``, else ``$CHROMIUM``, else ``/usr/bin/chromium`` or one on the
PATH (``chromium``, ``chromium-browser``, ``google-chrome``). Install it on Debian/Ubuntu
with ``apt-get install -y chromium``.

What is checked, in the PNG screenshot (PIL + NumPy), against what the page holds (read
with the standard library's ``html.parser``): the page's thumbnails are framed red
(flagged) or green (not flagged) and its histogram purple, in colours of
:mod:`vaeood.decisions.detect_report`. The script finds every such frame (connected regions of
that colour) and requires

- as many red and green frames as the page has flagged and unflagged thumbnails, in
  the page's order (top to bottom, left to right), each showing its own image: the
  pixels inside the frame are those of the thumbnail's PNG (decoded from the page's
  data URI; mean difference ≤ 8 of 255), so a broken or missing image fails;
- one purple frame with the histogram inside, showing the histogram's PNG likewise,
  with the calibration and input bars' colours (as matplotlib blends them over white)
  and, when the page draws one, the threshold line's colour, each on at least 30 pixels.

Exit 0 and one line saying what was seen; 1 with the reasons when a check fails; 2 when
Chromium is missing or fails. The screenshot is kept (``--out``, default beside the page
as ``<stem>.png``), cropped of the blank space below the page.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's vaeood
from vaeood import detect_report as page_style  # noqa: E402

TOLERANCE = 14  # per channel, for a colour to count as the one looked for
MIN_PIXELS = 30


def find_chromium(given: str | None) -> str | None:
    """``given`` if it is an executable (and only it, when given), else the first found."""
    if given:
        return given if Path(given).is_file() and os.access(given, os.X_OK) else None
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class PageParts(HTMLParser):
    """The thumbnails (flagged or not) and the histogram of a page."""

    def __init__(self):
        super().__init__()
        self.flagged = self.kept = 0
        self.thumbs = []  # (flagged, src) in the page's order
        self.histogram = None  # the <img id="histogram"> attributes
        self._figure = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "figure" and "thumb" in classes:
            self._figure = "flagged" in classes
        elif tag == "img" and "thumb" in classes and self._figure is not None:
            if self._figure:
                self.flagged += 1
            else:
                self.kept += 1
            self.thumbs.append((self._figure, a.get("src") or ""))
        elif tag == "img" and a.get("id") == "histogram":
            self.histogram = a

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None


def rgb(hex_colour: str) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i:i + 2], 16) for i in (0, 2, 4)], dtype=np.float64)


def over_white(hex_colour: str, alpha: float) -> np.ndarray:
    return alpha * rgb(hex_colour) + (1 - alpha) * 255.0


def near(pixels: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return (np.abs(pixels.astype(np.float64) - colour) <= TOLERANCE).all(axis=-1)


def frames(pixels: np.ndarray, colour: np.ndarray, min_side: int) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (y0, y1, x0, x1) of the connected regions of ``colour`` at least
    ``min_side`` pixels high and wide (a frame; text in that colour is smaller)."""
    from scipy import ndimage

    labels, _ = ndimage.label(near(pixels, colour))
    boxes = []
    for sl in ndimage.find_objects(labels):
        if sl is not None and sl[0].stop - sl[0].start >= min_side and sl[1].stop - sl[1].start >= min_side:
            boxes.append((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop))
    return boxes


def inside(pixels, box, border):
    y0, y1, x0, x1 = box
    return pixels[y0 + border:y1 - border, x0 + border:x1 - border]


def blank_reason(region: np.ndarray) -> str | None:
    if region.size == 0:
        return "empty"
    white = (region >= 245).all(axis=-1).mean()
    if white > 0.9:
        return f"{100 * white:.0f}% page white (image not drawn?)"
    if region.reshape(-1, 3).std(axis=0).max() < 1:
        return "one flat colour"
    return None


def decoded(src: str) -> np.ndarray | None:
    """The RGB pixels of a ``data:image/png;base64`` URI (composited over white), or None."""
    import base64
    import binascii

    from PIL import Image

    head = "data:image/png;base64,"
    if not src.startswith(head):
        return None
    try:
        img = Image.open(io.BytesIO(base64.b64decode(src[len(head):], validate=True)))
        img.load()
    except (binascii.Error, OSError, ValueError):
        return None
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, img.convert("RGBA")).convert("RGB"))


def mismatch(region: np.ndarray, src: str) -> str | None:
    """Why ``region`` of the screenshot does not show the image of ``src`` (None if it does)."""
    want = decoded(src)
    if want is None:
        return "the page's image does not decode"
    if region.shape != want.shape:
        return f"shown {region.shape[1]}×{region.shape[0]} px, the image is {want.shape[1]}×{want.shape[0]}"
    diff = float(np.abs(region.astype(np.float64) - want).mean())
    if diff > 8:
        return f"the pixels shown differ from the image's (mean difference {diff:.0f} of 255)"
    return None


def screenshot(chromium: str, page: Path, out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="vaeood-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
               "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", page.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"screenshot_report: {chromium} did not finish in 180 s") from None
    if done.returncode != 0 or not out.exists():
        tail = "\n".join((done.stderr or "").splitlines()[-5:])
        print(f"screenshot_report: {chromium} failed (exit {done.returncode}):\n{tail}", file=sys.stderr)
        raise SystemExit(2)


def check(page: Path, shot: Path) -> tuple[list[str], str]:
    """The failures (empty when every check passes) and a line saying what was seen."""
    from PIL import Image

    parts = PageParts()
    parts.feed(page.read_text(encoding="utf-8"))
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    border = page_style.BORDER_PX
    problems = []
    seen, found = {}, []
    for what, colour, expected in (("flagged", page_style.FLAGGED_COLOUR, parts.flagged),
                                   ("not flagged", page_style.KEPT_COLOUR, parts.kept)):
        boxes = frames(pixels, rgb(colour), min_side=2 * border + 8)
        seen[what] = len(boxes)
        found += [(box, what == "flagged") for box in boxes]
        if len(boxes) != expected:
            problems.append(f"{len(boxes)} {what} thumbnail frames in the screenshot, the page has {expected} "
                            "(page taller than the window? try --height)")
    if not problems:  # frames in reading order against the page's thumbnails
        found.sort(key=lambda bf: (bf[0][0], bf[0][2]))
        for j, ((box, is_flagged), (flagged, src)) in enumerate(zip(found, parts.thumbs, strict=True)):
            where = f"thumbnail {j + 1} of {len(parts.thumbs)} (x={box[2]}, y={box[0]})"
            if is_flagged != flagged:
                problems.append(f"{where}: framed as {'flagged' if is_flagged else 'not flagged'}, the page says "
                                f"{'flagged' if flagged else 'not flagged'} (out of order?)")
                continue
            reason = mismatch(inside(pixels, box, border), src)
            if reason:
                problems.append(f"{where}: image not shown ({reason})")
    hist = "no histogram in the page"
    if parts.histogram is None:
        problems.append("the page has no histogram (<img id=\"histogram\">)")
    else:
        boxes = frames(pixels, rgb(page_style.FRAME_COLOUR), min_side=50)
        if len(boxes) != 1:
            problems.append(f"{len(boxes)} purple histogram frames in the screenshot, expected 1")
        else:
            region = inside(pixels, boxes[0], border)
            want = {"calibration bars": over_white(page_style.CALIBRATION_COLOUR, page_style.HIST_ALPHA),
                    "input bars": over_white(page_style.INPUT_COLOUR, page_style.HIST_ALPHA)}
            if parts.histogram.get("data-threshold") == "yes":
                want["threshold line"] = rgb(page_style.THRESHOLD_COLOUR)
            counts = {name: int(near(region, c).sum()) for name, c in want.items()}
            for name, n in counts.items():
                if n < MIN_PIXELS:
                    problems.append(f"histogram: not visible: its {name} ({n} pixels of their colour)")
            reason = blank_reason(region) or mismatch(region, parts.histogram.get("src") or "")
            if reason:
                problems.append(f"histogram: not shown ({reason})")
            y0, y1, x0, x1 = boxes[0]
            hist = (f"histogram {x1 - x0}×{y1 - y0} px at y={y0} ("
                    + ", ".join(f"{name} {n} px" for name, n in counts.items()) + ")")
    line = (f"{seen.get('flagged', 0)} flagged + {seen.get('not flagged', 0)} not flagged thumbnails visible, "
            f"{hist}")
    return problems, line


def crop_blank_bottom(shot: Path) -> None:
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    a = np.asarray(img)
    rows = np.nonzero((a < 245).any(axis=(1, 2)))[0]
    if len(rows) and rows[-1] + 20 < a.shape[0]:
        img.crop((0, 0, a.shape[1], rows[-1] + 20)).save(shot)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("page", type=Path, help="an HTML page written by vaeood detect (FILE.html)")
    ap.add_argument("--out", type=Path, help="the screenshot (default: beside the page, <stem>.png)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=5000, help="window height: the page must fit (default 5000)")
    ap.add_argument("--chromium", help="the Chromium binary (default: $CHROMIUM, /usr/bin/chromium, PATH)")
    args = ap.parse_args(argv)
    if not args.page.is_file():
        print(f"screenshot_report: {args.page} is not a file", file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        where = f"--chromium {args.chromium} is not an executable file" if args.chromium else \
            "looked at $CHROMIUM, /usr/bin/chromium and chromium / chromium-browser / google-chrome on the PATH"
        print(f"screenshot_report: headless Chromium not found ({where}). Install it with "
              "`apt-get install -y chromium` (Debian/Ubuntu, as root) or pass --chromium PATH", file=sys.stderr)
        return 2
    out = args.out or args.page.with_suffix(".png")
    screenshot(chromium, args.page, out, args.width, args.height)
    problems, line = check(args.page, out)
    crop_blank_bottom(out)
    if problems:
        print(f"screenshot_report: FAILED for {args.page} (screenshot {out}):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"screenshot_report: ok: {line}; screenshot {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
