"""``report.md`` of ``vaeood reproduce one-class`` (:mod:`.one_class`): the protocol and its
notes, our mean AUROCs beside the published ones in two groups (no pretraining; ImageNet-
pretrained), the AUROC of every class, training, time and data provenance."""

from __future__ import annotations

from ..evaluation.report import interval_text, markdown_table
from .common import report_header


def mean_text(s: dict) -> str:
    """``0.912 [0.901–0.923]``: a detector's mean AUROC over the classes and its interval."""
    return f"{s['mean']:.3f} [{interval_text(s['interval'])}]"


def render_report(out: dict) -> str:
    results = out["datasets"]
    samples = [f"{s['dataset']}/{s['split']} ({s['source']})" for r in results.values() for s in r["sources"]
               if s["is_sample"]]
    return "\n".join([*report_header(out["title"], out, samples), *_protocol(out), *_published(out),
                      *_views(out), *_per_class(out), *_training_and_data(out)])


def _protocol(out: dict) -> list[str]:
    bb, dets = out["backbone"], out["detectors"]
    lines = ["## Protocol", "",
             "For each dataset and each class c: a VAE (conv, discretised-logistic decoder: the model `vaeood fit` "
             "trains) is trained on images of class c only, its last images held out and never trained on; every "
             "detector is fitted on those held-out images (every choice a detector makes is made on "
             "in-distribution images); one labelled test set is scored with class c in-distribution and the other "
             "classes OOD (the positive class).", ""]
    for r in out["datasets"].values():
        split, start, stop = r["test"]["range"]
        counts = sorted(cls["data"]["n"] for cls in r["classes"].values())
        span = f"{counts[0]:,}" + (f"–{counts[-1]:,}" if counts[-1] != counts[0] else "")
        lines.append(f"- {r['title']}: {span} images of a class, the last "
                     f"{out['settings']['n_fit']:,} held out to fit the detectors; test images "
                     f"{split}[{start}:{stop}] ({r['test']['n']:,}, every class)."
                     + (f" **Note:** {r['note']}." if r["note"] else ""))
    lines += ["", f"Preset budget: {out['note']}.", "",
              f"The detectors `{'`, `'.join(dets['backbone'])}` read the features of a frozen {bb['name']} at "
              f"{bb['size']} px pretrained on ImageNet-1k: **the backbone saw ImageNet, whose classes overlap "
              "CIFAR-10's** (airliners, sports cars, many breeds of dogs and cats, trucks, ships); those rows belong "
              "beside other ImageNet-pretrained methods, the pixel rows "
              f"(`{'`, `'.join(dets['pixel'])}`) beside methods trained from scratch. `{dets['recommended']}` is "
              "the recommended detector.", "",
              f"Intervals: {out['interval']['method']} ({out['interval']['n_boot']} replicates).", ""]
    return lines


def _published(out: dict) -> list[str]:
    results = out["datasets"]
    names = list(results)
    lines = ["## Mean AUROC over the classes, beside published results", "",
             "Published numbers are mean AUROCs over the 10 classes on the official test sets, with every training "
             "image of the class; ours are on the test images above, with the budget above.", ""]
    if len(out["settings"]["classes"]) < 10:
        lines += [f"**This run has {len(out['settings']['classes'])} of the 10 classes: its means are not comparable "
                  "to the published ones.**", ""]
    for group in out["published"].values():
        rows = [[method, source, *[f"{v[n]:.3f}" if n in v else "–" for n in names]]
                for method, source, v in group["rows"]]
        rows += [[f"**ours: `{d}`**" + (" (recommended)" if d == out["detectors"]["recommended"] else ""),
                  "this report", *[mean_text(results[n]["summary"][d]) for n in names]] for d in group["ours"]]
        lines += [f"### {group['title']}", "",
                  markdown_table(["method", "source", *[results[n]["title"] for n in names]], rows), ""]
    return lines


#: the two views the recommended detector combines: the pixel VAE's, and the feature-space detectors
PIXEL_VIEW = "fused"
FEATURE_VIEW = ("feature_knn", "feature_gaussian")


def view_gaps(summary: dict, recommended: str) -> dict | None:
    """The recommended detector's mean AUROC against the better of its two views: the pixel view
    and the best feature-space detector (``{"pixel", "feature", "feature_name", "gap"}``), or None
    where a view did not run."""
    features = [d for d in FEATURE_VIEW if d in summary]
    if recommended not in summary or PIXEL_VIEW not in summary or not features:
        return None
    best = max(features, key=lambda d: summary[d]["mean"])
    pixel, feature = summary[PIXEL_VIEW]["mean"], summary[best]["mean"]
    return {"pixel": pixel, "feature": feature, "feature_name": best,
            "gap": summary[recommended]["mean"] - max(pixel, feature)}


def _views(out: dict) -> list[str]:
    rec = out["detectors"]["recommended"]
    rows = []
    for r in out["datasets"].values():
        g = view_gaps(r["summary"], rec)
        if g:
            rows.append([r["title"], mean_text(r["summary"][rec]), f"{g['pixel']:.3f}",
                         f"{g['feature']:.3f} (`{g['feature_name']}`)", f"{g['gap']:+.3f}",
                         "yes" if g["gap"] >= -0.02 else "**no**"])
    if not rows:
        return []
    return [f"## `{rec}` against its two views", "",
            f"The mean AUROC of `{rec}` minus that of the better of its views: the pixel view (`{PIXEL_VIEW}`) "
            f"and the best feature-space detector ({', '.join(f'`{d}`' for d in FEATURE_VIEW)}). The goal: no "
            "worse than 0.02 below it.", "",
            markdown_table(["dataset", f"`{rec}`", f"pixel `{PIXEL_VIEW}`", "best feature-space",
                            "difference", "within 0.02"], rows), ""]


def _per_class(out: dict) -> list[str]:
    lines = []
    for r in out["datasets"].values():
        dets = list(r["summary"])
        rows = [[str(c) if cls["name"] == str(c) else f"{c} ({cls['name']})",
                 *[f"{r['summary'][d]['auroc'][k]:.3f} [{interval_text(r['summary'][d]['intervals'][k])}]"
                   for d in dets]] for k, (c, cls) in enumerate(r["classes"].items())]
        rows.append(["**mean**", *[f"**{mean_text(r['summary'][d])}**" for d in dets]])
        lines += [f"## {r['title']}: AUROC per class [95% interval]", "", markdown_table(["class", *dets], rows), ""]
    return lines


def _training_and_data(out: dict) -> list[str]:
    results = out["datasets"]
    return [
        "## Training and time per class", "",
        markdown_table(["dataset", "class", "images trained / held out", "epochs", "final train loss [nats]",
                        "train [s]", "train or reuse [s]", "evaluate [s]", "run"],
                       [[r["title"], c, f"{cls['data']['trained']:,} / {cls['data']['n_fit']:,}",
                         cls["training"]["epochs"], f"{cls['training']['final_train_loss_nats']:.1f}",
                         f"{cls['training']['train_seconds']:.1f}", f"{cls['seconds']['train_or_reuse']:.1f}",
                         f"{cls['seconds']['evaluate']:.1f}", f"`{cls['run']}`"]
                        for r in results.values() for c, cls in r["classes"].items()]), "",
        "The backbone's features of a test set are computed by the first class's evaluation and read from "
        "`features/` by the others (they do not depend on the VAE).", "",
        "## Data", "",
        markdown_table(["dataset", "read from", "images", "file and SHA-256"],
                       [[r["title"], f"{s['dataset']}/{s['split']}", f"{s['n']:,}",
                         "; ".join(f"{f['name']} {f['sha256']}" for f in s["files"])]
                        for r in results.values() for s in r["sources"]]), "",
        "Written into `data/` (each set's images digested by `vaeood.features.images_digest`): "
        + "; ".join(f"`{r['test']['name']}_test.npz` {r['test']['images_sha256'][:16]}…" for r in results.values())
        + "; the class sets `DATASET_classC_train.npz` (digests in `metrics.json`).", "",
        "Runs are in `runs/DATASET_classC/`, reused by a later call with the same `--out` only when their preset, "
        "resolved config (seed included) and class images equal that call's (else it is refused); each class's "
        "evaluation "
        "(`metrics.json`, per-image scores) is in `DATASET/classC/`.", ""]
