"""The HTML page of ``vaeood detect`` (:mod:`vaeood.decisions.detect_report`), parsed with the
standard library's html.parser: its three image sections (counts, order, thumbnails that
decode to the expected size and pixels), the histogram, the counts and guarantee of the
summary, escaped file names, no external URL; FDR mode with and without a cut-off;
check_outputs protecting the page; and, where /usr/bin/chromium exists, the screenshot
check of scripts/screenshot_report.py. Detections are built directly (no model)."""

from __future__ import annotations

import base64
import io
import itertools
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vaeood.decisions import conformal
from vaeood.data import DataError
from vaeood.data.inputs import InputImages
from vaeood.data.listing import printable
from vaeood.decisions.detection import Detection
from vaeood.decisions.flagging import _summary
from vaeood.decisions.outputs import check_outputs
from vaeood.decisions.detect_report import HTML_HEAD, bh_cutoff_score, html_path_for, sections

NASTY = "<script>alert('x')</script> & \"q\" caf\\xe9\x1b[2J.png"
ROOT = Path(__file__).resolve().parents[1]


def make_detection(n=60, *, alpha=0.1, delta=None, fdr=False, shift=3.0, seed=0, channels=1, size=28,
                   skipped=(), n_cal=500):
    rng = np.random.default_rng(seed)
    cal = rng.normal(size=n_cal)
    scores = np.concatenate([rng.normal(size=n - n // 3), rng.normal(shift, 1, size=n // 3)])
    images = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
    names = [f"img_{i:05d}.png" for i in range(n)]
    names[int(np.argmax(scores))] = NASTY  # the most OOD image, shown first
    inputs = InputImages(images, names, "some/folder", "folder", skipped=list(skipped))
    record = {"detector": "nll", "detector_options": {"estimator": "elbo", "estimator_options": {}},
              "scores": cal, "dataset": "fashion_mnist", "split": "train", "calibration_slice": [300, 300 + n_cal],
              "train_slice": [0, 300], "fit_slice": None, "calibration_images_sha256": "ab" * 32,
              "checkpoint_sha256": "cd" * 32}
    decision = conformal.decide(cal, scores, alpha, delta=delta, fdr=fdr)
    rank = None if fdr else conformal.threshold(cal, alpha, delta).rank
    summary = _summary("some/folder", inputs, record, decision, alpha=alpha, delta=delta, fdr=fdr, rank=rank)
    summary["warnings"].append("a <warning> & more")
    return Detection(names, decision.scores, decision.p_values, decision.flagged, summary, images=images,
                     calibration_scores=cal)


class Page(HTMLParser):
    """Sections → figures (index, score, flagged, img attributes, caption), the histogram,
    the text of each element with an id, and every tag with its attributes."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.sections, self.tags, self.text, self.histogram = {}, [], {}, None
        self._section = self._figure = None
        self._ids = []  # (id, tag) of open elements with an id
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "section":
            self._section = a["id"]
            self.sections[self._section] = []
        elif tag == "figure":
            self._figure = {"index": int(a["data-index"]), "score": float(a["data-score"]),
                            "flagged": "flagged" in a["class"].split(), "img": None, "caption": ""}
            self.sections[self._section].append(self._figure)
        elif tag == "img" and self._figure is not None:
            self._figure["img"] = a
        elif tag == "img" and a.get("id") == "histogram":
            self.histogram = a
        if "id" in a and tag not in ("img", "section"):
            self._ids.append((a["id"], tag))
            self.text[a["id"]] = ""

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag == "section":
            self._section = None
        if self._ids and self._ids[-1][1] == tag:
            self._ids.pop()

    def handle_data(self, data):
        if self._figure is not None:
            self._figure["caption"] += data
        for i, _ in self._ids:
            self.text[i] += data


def png_of(uri: str) -> Image.Image:
    head = "data:image/png;base64,"
    assert uri.startswith(head), uri[:40]
    data = base64.b64decode(uri[len(head):], validate=True)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img


def test_the_page_shows_the_three_sections_in_order_with_thumbnails_that_decode():
    det = make_detection()
    html = det.html_text()
    assert html.startswith(HTML_HEAD)
    page = Page(html)
    s, scores, flagged = det.summary, det.scores, det.flagged
    assert list(page.sections) == ["most-ood", "borderline", "typical"]
    most, border, typical = (page.sections[k] for k in ("most-ood", "borderline", "typical"))
    assert [f["index"] for f in most] == list(np.argsort(-scores, kind="stable")[:16])
    assert [f["index"] for f in typical] == list(np.argsort(scores, kind="stable")[:16])
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(most))
    assert all(a["score"] <= b["score"] for a, b in itertools.pairwise(typical))
    # borderline: the 8 lowest-scoring flagged images, then the 8 highest-scoring unflagged ones
    above = [f for f in border if f["flagged"]]
    below = [f for f in border if not f["flagged"]]
    assert len(above) == len(below) == 8 and border == above + below
    assert sorted(f["index"] for f in above) == sorted(np.flatnonzero(flagged)[np.argsort(scores[flagged])[:8]])
    assert sorted(f["index"] for f in below) == sorted(np.flatnonzero(~flagged)[np.argsort(-scores[~flagged])[:8]])
    assert min(f["score"] for f in above) > s["threshold"] >= max(f["score"] for f in below)
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(border))
    assert "nearest the threshold on each side" in html
    for f in most + border + typical:
        i = f["index"]
        assert f["score"] == scores[i] and f["flagged"] == flagged[i]
        img = png_of(f["img"]["src"])
        assert img.size == (84, 84) and (f["img"]["width"], f["img"]["height"]) == ("84", "84")
        want = np.repeat(np.repeat(det.images[i, :, :, 0], 3, axis=0), 3, axis=1)  # nearest neighbour ×3
        np.testing.assert_array_equal(np.asarray(img), want)
        cap = f["caption"]
        assert printable(det.names[i]) in cap and f"{scores[i]:.6g}" in cap and f"{det.p_values[i]:.6g}" in cap
        assert ("not flagged" in cap) != bool(flagged[i])


def test_the_page_states_the_summary_and_escapes_names_and_links_nothing_outside():
    det = make_detection(skipped=[("cut.png", "truncated"), ("<i>.png", "not an image")])
    html = det.html_text()
    page = Page(html)
    s = det.summary
    assert page.text["n-images"] == "60" and page.text["n-flagged"].startswith(f"{s['n_flagged']} (")
    assert f"{100 * s['fraction_flagged']:.1f}%" in page.text["n-flagged"]
    assert page.text["n-skipped"] == "2" and page.text["n-left-out"] == "0"
    assert page.text["guarantee"] == s["guarantee_text"]
    assert "α = 0.1" in page.text["levels"] and "flag iff conformal p ≤ α = 0.1" in page.text["rule"]
    assert page.text["threshold"] == f"{s['threshold']:.6g}"
    assert "fashion_mnist/train[300:800]" in page.text["calibration"] and "cdcdcdcdcdcd" in page.text["checkpoint"]
    assert page.text["skipped"] == "cut.png: truncated<i>.png: not an image"
    assert "a <warning> & more" in html.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    # the nasty name: shown as text (escaped), never as markup or a terminal escape
    assert page.sections["most-ood"][0]["caption"].startswith(printable(NASTY))
    assert "<script>" not in html and "\x1b" not in html and "&lt;script&gt;" in html
    assert not any(tag in ("script", "link", "iframe", "object", "embed") for tag, _ in page.tags)
    for _tag, attrs in page.tags:
        assert "href" not in attrs and "srcset" not in attrs
        if "src" in attrs:
            assert attrs["src"].startswith("data:image/png;base64,")
    assert "http:" not in html and "https:" not in html and "url(" not in html
    hist = png_of(page.histogram["src"])
    assert hist.size == (int(page.histogram["width"]), int(page.histogram["height"])) and hist.size[0] > 400
    assert page.histogram["data-threshold"] == "yes"
    assert sum(1 for t, a in page.tags if t == "img") == 3 * 16 + 1


def test_fdr_mode_draws_bhs_cut_off_or_says_there_is_none():
    det = make_detection(fdr=True, alpha=0.1)
    assert det.summary["threshold"] is None and det.flagged.any()
    cut = bh_cutoff_score(det.calibration_scores, det.scores, det.flagged)
    np.testing.assert_array_equal(det.flagged, det.scores > cut)  # the cut-off is exact, as a score threshold
    page = Page(det.html_text())
    assert page.histogram["data-threshold"] == "yes" and f"score > {cut:.6g}" in page.text["cut-note"]
    assert page.text["threshold"] == "—" and "Benjamini–Hochberg" in page.text["rule"]
    assert len(page.sections["borderline"]) == 16

    none = make_detection(fdr=True, alpha=0.1, shift=0.0, n=20, seed=3)
    assert not none.flagged.any() and bh_cutoff_score(none.calibration_scores, none.scores, none.flagged) is None
    page = Page(none.html_text())
    assert page.histogram["data-threshold"] == "no" and "flagged nothing" in page.text["cut-note"]
    assert page.sections["borderline"] == [] and len(page.sections["most-ood"]) == 16


def test_sections_balance_the_borderline_and_colour_images_are_kept_rgb():
    scores = np.arange(10.0)
    flagged = scores > 7.5  # 2 flagged
    got = sections(scores, flagged, 6)
    assert list(got["most-ood"]) == [9, 8, 7, 6, 5, 4] and list(got["typical"]) == [0, 1, 2, 3, 4, 5]
    assert list(got["borderline"]) == [9, 8, 7, 6, 5, 4]  # both flagged, then 4 from the other side
    assert list(sections(scores, scores > 1.5, 4)["borderline"]) == [3, 2, 1, 0]
    det = make_detection(n=12, channels=3, size=32)
    fig = Page(det.html_text()).sections["typical"][0]
    img = png_of(fig["img"]["src"])
    assert img.mode == "RGB" and img.size == (96, 96)  # 32 × 3
    np.testing.assert_array_equal(np.asarray(img)[::3, ::3], det.images[fig["index"]])


def test_ten_thousand_images_encode_only_the_thumbnails_shown():
    det = make_detection(n=10_000, n_cal=1000)
    html = det.html_text()
    assert html.count('<img class="thumb"') == 48 and len(html) < 600_000


def test_write_puts_the_page_beside_the_csv_and_check_outputs_protects_it(tmp_path):
    det = make_detection(n=30)
    csv_path, summary_path, html_path = det.write(tmp_path / "r.csv")
    assert html_path == tmp_path / "r.html" == html_path_for(csv_path)
    assert html_path.read_text(encoding="utf-8").startswith(HTML_HEAD)
    assert '"html": "r.html"' in summary_path.read_text()
    run, images = tmp_path / "run", tmp_path / "in"
    run.mkdir()
    images.mkdir()
    check_outputs(tmp_path / "r.csv", [run], images)  # our own files: replaceable
    (tmp_path / "notes.html").write_text("<p>my notes</p>")
    (tmp_path / "empty.html").write_text("")
    (tmp_path / "link.html").symlink_to(run / "config.json")
    (images / "a.html").write_text("x")
    cases = [(tmp_path / "notes.csv", "notes.html exists and is not a file detect wrote"),
             (tmp_path / "link.csv", "lies inside the run directory"),
             (images.parent / "x.csv", None),
             (tmp_path / "r.html", "would be written over the CSV")]
    for out, message in cases:
        if message is None:
            check_outputs(out, [run], images)
            continue
        with pytest.raises(DataError, match=message):
            check_outputs(out, [run], images)
    check_outputs(tmp_path / "empty.csv", [run], images)  # an empty file: nothing to lose
    (tmp_path / "page.html").write_text("<html>")
    with pytest.raises(DataError, match="page.html is the input file"):  # the page would replace the input
        check_outputs(tmp_path / "page.csv", [run], tmp_path / "page.html")
    assert (tmp_path / "notes.html").read_text() == "<p>my notes</p>"


SCRIPT = ROOT / "scripts" / "screenshot_report.py"


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(),
                    reason="/usr/bin/chromium is absent (install it with `apt-get install -y chromium`) so the "
                           "page is not rendered; the parsing tests above still check it")
def test_the_page_renders_in_headless_chromium(tmp_path):
    det = make_detection()
    _, _, page = det.write(tmp_path / "r.csv")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, str(SCRIPT), str(page), "--height", "3200"], capture_output=True,
                          text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 24 flagged + 24 not flagged thumbnails visible" in done.stdout and "threshold line" in done.stdout
    assert (tmp_path / "r.png").exists()
    # a page whose first thumbnail does not decode: the check fails, naming it
    text = page.read_text(encoding="utf-8")
    at = text.index("base64,", text.index('<img class="thumb"')) + len("base64,")
    (tmp_path / "broken.html").write_text(text[:at] + "AAAA" + text[at + 300:], encoding="utf-8")
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "broken.html"), "--height", "3200"],
                          capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 1 and "thumbnail 1 of 48" in done.stderr and "image not shown" in done.stderr, \
        done.stderr
