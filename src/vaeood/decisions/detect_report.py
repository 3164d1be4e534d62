"""The HTML page of a :class:`vaeood.decisions.detection.Detection`: what ``vaeood detect`` decided,
for a person to look at (``FILE.html`` beside ``FILE.csv`` and ``FILE.summary.json``).

One self-contained file: CSS inline, every image a ``data:image/png;base64`` URI, no
script, no link to any other file or to the network. It shows

- the counts, the rule, the guarantee applied (``summary["guarantee_text"]``), α, δ or
  the FDR level, the detector and its options, the calibration slice, the checkpoint's
  digest prefix, skipped and left-out files with their reasons, and the warnings;
- the histogram of the input's detector scores against the calibration scores, with the
  score threshold (flag iff score > t). In FDR mode the threshold is not fixed in
  advance: Benjamini–Hochberg's cut-off on this batch is drawn as the equivalent score
  threshold (:func:`bh_cutoff_score`), or the page says there is none (nothing flagged);
- three rows of thumbnails (:func:`sections`): the most OOD images (highest score first),
  the borderline ones (the flagged images with the lowest scores and the unflagged ones
  with the highest, i.e. those nearest the threshold on each side, highest score first),
  and the most typical ones (lowest score first). Each is upscaled by an integer factor
  with nearest-neighbour pixels (28×28 → 84×84) and captioned with its file name
  (escaped: HTML, control characters and undecodable bytes), score, p-value and decision.

Only the thumbnails shown are encoded: for 10,000+ images the page holds at most
``3 × per_section`` small PNGs. Thumbnail frames are red (flagged) or green (not
flagged) and the histogram is framed in purple: ``scripts/screenshot_report.py`` finds
these colours in a headless-browser screenshot to check that the page renders.
"""

from __future__ import annotations

import base64
import html
import io
import logging

import numpy as np

from .conformal import count_at_least
from ..data.listing import printable

log = logging.getLogger(__name__)

# the first bytes of every page: check_outputs replaces an existing FILE.html only when it starts so
HTML_HEAD = ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
             '<meta name="generator" content="vaeood detect">\n')
PER_SECTION = 16
THUMB_PX = 96  # thumbnails are upscaled by the largest integer factor that keeps them ≤ this (at least 1)
SHOW_FILES = 50  # skipped / left-out files listed before "... and N more"

# colours the screenshot check looks for (exact in the page; matplotlib draws the histogram's)
FLAGGED_COLOUR = "#d0103a"
KEPT_COLOUR = "#10a040"
FRAME_COLOUR = "#8000d0"
CALIBRATION_COLOUR = "#1f5fbf"
INPUT_COLOUR = "#f08c00"
THRESHOLD_COLOUR = "#e00000"
HIST_ALPHA = 0.55
BORDER_PX = 4

SECTIONS = {
    "most-ood": ("Most out-of-distribution",
                 "the {n} images with the highest detector scores, highest first"),
    "borderline": ("Borderline",
                   "the images nearest the threshold on each side: the {above} flagged images with the lowest "
                   "scores (just above the threshold) and the {below} unflagged images with the highest scores "
                   "(at or just below it), highest score first; a line marks the threshold between them"),
    "typical": ("Most typical",
                "the {n} images with the lowest detector scores (the most in-distribution-looking), lowest first"),
}


def html_path_for(csv_path):
    """Where :meth:`vaeood.decisions.detection.Detection.write` puts the page of ``csv_path``:
    ``<stem>.html`` beside it."""
    from pathlib import Path

    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + ".html")


def bh_cutoff_score(calibration, scores, flagged) -> float | None:
    """Benjamini–Hochberg's cut-off on this batch as a score threshold: the calibration order
    statistic t with flagged ⟺ score > t, or None when nothing was flagged.

    The flagged images are those whose count m_j = #{c_i ≥ s_j} is at most m, the largest
    count among the flagged (BH rejects the R smallest p-values, and p = (1 + m_j)/(n + 1)
    falls with the score); m_j ≤ m ⟺ s_j > c_(n−m), the (n − m)-th smallest calibration
    score. m < n because a flagged p-value is ≤ q < 1."""
    flagged = np.asarray(flagged, dtype=bool)
    if not flagged.any():
        return None
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    m = int(count_at_least(cal, np.asarray(scores)[flagged]).max())
    return float(cal[len(cal) - m - 1])


def sections(scores, flagged, per_section: int = PER_SECTION, *, has_cut: bool = True) -> dict[str, np.ndarray]:
    """Indices of the images each section shows (see the module doc; ties in score keep
    the input order). ``borderline`` is split as evenly as the two sides allow (``per_section
    // 2`` each, the rest from the other side when one side has fewer), and empty when
    there is no threshold (``has_cut`` False: FDR mode with nothing flagged)."""
    scores = np.asarray(scores, dtype=np.float64)
    flagged = np.asarray(flagged, dtype=bool)
    k = max(0, int(per_section))
    down = np.argsort(-scores, kind="stable")
    out = {"most-ood": down[:k], "typical": np.argsort(scores, kind="stable")[:k]}
    above, below = down[flagged[down]], down[~flagged[down]]  # each highest score first
    if not has_cut:
        out["borderline"] = down[:0]
        return out
    n_above = min(len(above), k // 2)
    n_below = min(len(below), k - n_above)
    n_above = min(len(above), k - n_below)
    out["borderline"] = np.concatenate([above[len(above) - n_above:], below[:n_below]])
    return out


def thumbnail_png(image: np.ndarray, px: int = THUMB_PX) -> tuple[bytes, int, int]:
    """One uint8 ``[H, W, C]`` image (C = 1 or 3) as PNG bytes, upscaled by the largest
    integer factor ≥ 1 that keeps it ≤ ``px`` (nearest neighbour: every pixel a square)."""
    from PIL import Image

    image = np.asarray(image)
    h, w = image.shape[:2]
    f = max(1, px // max(h, w))
    big = np.repeat(np.repeat(image, f, axis=0), f, axis=1)
    big = big[..., 0] if big.ndim == 3 and big.shape[2] == 1 else big
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(big, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), h * f, w * f


def histogram_png(calibration, scores, threshold: float | None, threshold_label: str) -> tuple[bytes, int, int]:
    """The density histograms of the calibration and input scores on shared bins, with the
    threshold as a vertical line (none when ``threshold`` is None); PNG bytes, width, height."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # on use (slow import); not pyplot: no global state

    cal, s = np.asarray(calibration, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    values = np.concatenate([cal, s] + ([np.array([threshold])] if threshold is not None else []))
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, 61)
    dpi = 100
    fig = Figure(figsize=(8, 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.hist(cal, bins=edges, density=True, histtype="stepfilled", alpha=HIST_ALPHA, color=CALIBRATION_COLOUR,
            label=f"calibration (in-distribution, n={len(cal)})")
    ax.hist(s, bins=edges, density=True, histtype="stepfilled", alpha=HIST_ALPHA, color=INPUT_COLOUR,
            label=f"input (n={len(s)})")
    if threshold is not None:
        ax.axvline(threshold, color=THRESHOLD_COLOUR, linewidth=2.5, label=threshold_label)
    ax.set_xlabel("detector score (higher = more out-of-distribution)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    w, h = fig.canvas.get_width_height()
    return buf.getvalue(), w, h


def _e(text) -> str:
    """Text as HTML: undecodable bytes and control characters shown as ``\\xNN`` first."""
    return html.escape(printable(str(text)), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(x: float) -> str:
    return f"{float(x):.6g}"


CSS = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px 24px; color: #111;
       background: #fff; max-width: 1400px; }}
h1 {{ font-size: 20px; margin: 0 0 8px; }} h2 {{ font-size: 17px; margin: 22px 0 4px; }}
table.facts {{ border-collapse: collapse; font-size: 13px; }}
table.facts th {{ text-align: left; vertical-align: top; padding: 2px 12px 2px 0; font-weight: 600;
                 white-space: nowrap; }}
table.facts td {{ padding: 2px 0; vertical-align: top; }}
p.note, p.definition {{ font-size: 13px; color: #333; margin: 2px 0 8px; max-width: 1100px; }}
p#guarantee {{ font-size: 13px; background: #f4f4f8; border-left: 4px solid #888; padding: 6px 10px;
              max-width: 1100px; }}
ul.warnings li {{ color: #8a4b00; font-size: 13px; }}
ul.files {{ font-size: 12px; margin: 2px 0; }}
img#histogram {{ border: {BORDER_PX}px solid {FRAME_COLOUR}; display: block; image-rendering: auto; }}
div.grid {{ display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }}
figure.thumb {{ margin: 0; width: 132px; font-size: 11px; line-height: 1.3; }}
figure.thumb img {{ display: block; image-rendering: pixelated; border: {BORDER_PX}px solid {KEPT_COLOUR}; }}
figure.thumb.flagged img {{ border-color: {FLAGGED_COLOUR}; }}
figure.thumb figcaption {{ margin-top: 2px; }} figure.thumb span.name {{ overflow-wrap: anywhere; }}
span.flag {{ color: {FLAGGED_COLOUR}; font-weight: 700; }} span.kept {{ color: {KEPT_COLOUR}; font-weight: 700; }}
div.cut {{ width: 6px; align-self: stretch; background: {THRESHOLD_COLOUR}; margin: 0 6px; }}
"""


def page(detection, per_section: int = PER_SECTION, thumb_px: int = THUMB_PX) -> str:
    """The HTML page of ``detection`` (see the module doc). Uses ``detection.images`` (uint8
    ``[N, H, W, C]``, the images scored, in the order of ``names``) for the thumbnails and
    ``detection.calibration_scores`` for the histogram; the page says so where either is missing."""
    s = detection.summary
    scores = np.asarray(detection.scores, dtype=np.float64)
    flagged = np.asarray(detection.flagged, dtype=bool)
    cal = detection.calibration_scores
    cut, cut_text, cut_note = _cut(s, cal, scores, flagged)
    parts = [HTML_HEAD, f"<title>vaeood detect: {_e(s['input'])}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"]
    parts.append(f"<h1>vaeood detect: {s['n_images']} images from {_e(s['input'])}</h1>\n")
    parts.append(_facts(s))
    parts.append(f'<p id="guarantee">{_e(s["guarantee_text"])}</p>\n')
    if s.get("warnings"):
        parts.append('<h2>Warnings</h2>\n<ul class="warnings">'
                     + "".join(f"<li>{_e(w)}</li>" for w in s["warnings"]) + "</ul>\n")
    parts.append('<h2 id="scores">Scores: input against calibration</h2>\n')
    if cal is not None:
        png, w, h = histogram_png(cal, scores, cut, cut_text)
        parts.append(f'<img id="histogram" alt="histogram of detector scores" width="{w}" height="{h}" '
                     f'data-threshold="{"yes" if cut is not None else "no"}" src="{_data_uri(png)}">\n')
    else:
        parts.append('<p class="note" id="no-histogram">The calibration scores are not available: '
                     'no histogram.</p>\n')
    parts.append(f'<p class="note" id="cut-note">{_e(cut_note)}</p>\n')
    parts.append(_skipped(s))
    has_cut = s["guarantee"] != "fdr" or bool(flagged.any())
    picked = sections(scores, flagged, per_section, has_cut=has_cut)
    for key in SECTIONS:
        parts.append(_section(detection, key, picked[key], has_cut, cut_text, thumb_px))
    parts.append('<p class="note">Written by vaeood detect; the CSV beside this page has every image.</p>\n'
                 "</body>\n</html>\n")
    return "".join(parts)


def _cut(s: dict, cal, scores, flagged) -> tuple[float | None, str, str]:
    """The score line to draw (None: none), its legend, and the sentence saying what it is."""
    if s["guarantee"] != "fdr":
        return (s["threshold"], f"threshold t = {_num(s['threshold'])}",
                f"Score threshold t = {_num(s['threshold'])}: the calibration order statistic of rank "
                f"{s.get('rank')} of {s['n_calibration']}; an image is flagged iff its score > t.")
    cut = bh_cutoff_score(cal, scores, flagged) if cal is not None else None
    if cut is not None:
        return (cut, f"BH cut-off on this batch = {_num(cut)}",
                f"FDR mode: Benjamini–Hochberg has no threshold fixed in advance. Its cut-off on this batch, as a "
                f"score: flagged ⟺ score > {_num(cut)} (the calibration score below which the flagged images' "
                f"p-values stop qualifying). Another batch gives another cut-off.")
    if flagged.any():
        return None, "", "FDR mode: the calibration scores are not available, so BH's cut-off score is not drawn."
    return None, "", ("FDR mode: Benjamini–Hochberg flagged nothing in this batch, so there is no cut-off to draw "
                      "and no borderline images to show.")


def _section(detection, key: str, idx: np.ndarray, has_cut: bool, cut_text: str, thumb_px: int) -> str:
    """One section of thumbnails (``idx``: the images, in the order shown)."""
    title, definition = SECTIONS[key]
    flagged = np.asarray(detection.flagged, dtype=bool)
    above = int(flagged[idx].sum()) if key == "borderline" else 0
    text = definition.format(n=len(idx), above=above, below=len(idx) - above)
    if key == "borderline" and not has_cut:
        text = "no threshold in this batch (FDR mode, nothing flagged): no borderline images"
    parts = [f'<section id="{key}">\n<h2>{_e(title)} ({len(idx)})</h2>\n'
             f'<p class="definition">{_e(text)}.</p>\n<div class="grid">\n']
    images = detection.images
    if images is None:
        parts.append('<p class="note">The images are not available (the Detection was made without them).</p>\n')
    for j, i in enumerate(idx):
        if key == "borderline" and j == above and 0 < above < len(idx):
            parts.append(f'<div class="cut" title="{_e(cut_text)}"></div>\n')
        parts.append(_thumb(detection.names[i], int(i), detection.scores[i], detection.p_values[i], flagged[i],
                            None if images is None else images[i], thumb_px))
    parts.append("</div>\n</section>\n")
    return "".join(parts)


def _thumb(name, index, score, p, flagged, image, px) -> str:
    cls = "thumb flagged" if flagged else "thumb"
    decision = '<span class="flag">flagged</span>' if flagged else '<span class="kept">not flagged</span>'
    img = ""
    if image is not None:
        png, h, w = thumbnail_png(image, px)
        img = f'<img class="thumb" alt="{_e(name)}" width="{w}" height="{h}" src="{_data_uri(png)}">'
    return (f'<figure class="{cls}" data-index="{index}" data-score="{float(score)!r}">{img}'
            f'<figcaption><span class="name">{_e(name)}</span><br>score {_num(score)}<br>p = {_num(p)}<br>'
            f"{decision}</figcaption></figure>\n")


def _rule(s: dict) -> str:
    if s["guarantee"] == "marginal":
        return f"flag iff conformal p ≤ α = {s['alpha']:g} (⟺ score > t)"
    if s["guarantee"] == "conditional":
        return (f"flag iff score > t, the calibration order statistic of rank {s.get('rank')} "
                f"(FPR ≤ α = {s['alpha']:g} with probability ≥ 1 − δ = {1 - s['delta']:g})")
    return f"Benjamini–Hochberg over this batch's p-values at FDR level q = {s['alpha']:g}"


def _facts(s: dict) -> str:
    cal = s["calibration"]
    options = ", ".join(f"{k}={v}" for k, v in s["detector_options"].items()) or "none"
    fitted = s["fitted"]["description"] if s.get("fitted") else "none (the images had the model's shape)"
    rows = [
        ("input", f"{s['input']} ({s['input_kind']})", "input"),
        ("images scored", str(s["n_images"]), "n-images"),
        ("flagged", f"{s['n_flagged']} ({100 * s['fraction_flagged']:.1f}%)", "n-flagged"),
        ("skipped files", str(len(s.get("skipped") or [])), "n-skipped"),
        ("left-out files", str(len(s.get("left_out") or [])), "n-left-out"),
        ("rule", _rule(s), "rule"),
        ("α / δ / FDR", f"α = {s['alpha']:g}; δ = {'—' if s['delta'] is None else format(s['delta'], 'g')}; "
                        f"FDR: {'yes, q = α' if s['fdr'] else 'no'}", "levels"),
        ("threshold", "—" if s["threshold"] is None else _num(s["threshold"]), "threshold"),
        ("detector", f"{s['detector']} (options: {options})", "detector"),
        ("calibration", f"{s['n_calibration']} held-out images {cal['dataset']}/{cal['split']}"
                        f"[{cal['slice'][0]}:{cal['slice'][1]}] (model trained on "
                        f"[{cal['train_slice'][0]}:{cal['train_slice'][1]}]"
                        + (f", detector fitted on [{cal['fit_slice'][0]}:{cal['fit_slice'][1]}]"
                           if cal.get("fit_slice") else "") + f"); images SHA-256 {cal['images_sha256'][:12]}…",
         "calibration"),
        ("checkpoint", f"SHA-256 {s['checkpoint_sha256'][:12]}…", "checkpoint"),
        ("images fitted", fitted, "fitted"),
        ("scores", s["score_direction"], "direction"),
    ]
    if s.get("n_escaped"):
        rows.append(("CSV escaping", f"{s['n_escaped']} file names: {s['csv_escaping']}", "escaping"))
    body = "".join(f'<tr><th>{_e(k)}</th><td id="{i}">{_e(v)}</td></tr>\n' for k, v, i in rows)
    return f'<table class="facts">\n{body}</table>\n'


def _skipped(s: dict) -> str:
    out = []
    for key, title in (("skipped", "Skipped files"), ("left_out", "Left-out files")):
        files = s.get(key) or []
        if not files:
            continue
        items = "".join(f"<li>{_e(n)}: {_e(r)}</li>" for n, r in files[:SHOW_FILES])
        more = f"<li>… and {len(files) - SHOW_FILES} more (see the summary JSON)</li>" \
            if len(files) > SHOW_FILES else ""
        out.append(f'<h2>{title} ({len(files)})</h2>\n'
                   f'<ul class="files" id="{key.replace("_", "-")}">{items}{more}</ul>\n')
    return "".join(out)
