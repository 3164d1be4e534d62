"""One-class OOD detection (``vaeood reproduce one-class``): the standard protocol of the
anomaly-detection literature, on MNIST, Fashion-MNIST and CIFAR-10.

For each dataset and each class c of 10: train the pixel VAE that ``vaeood fit`` trains
(conv, discretised-logistic decoder) on images of class c only, the last ``n_fit`` of them
held out and never trained on; fit every detector on those held-out images (every choice a
detector makes is made on them: in-distribution images only); score one labelled test set,
class c in-distribution and the nine other classes OOD (the positive class).

- MNIST, Fashion-MNIST: class images from the training split, tested on the test split
  (the quick preset: its first 2,000 images).
- CIFAR-10: only the first 1,000 of its 10,000 test images exist on the machines this was
  built on, so class images come from train[0:45000] and the test set is train[45000:47000]
  (the paper preset: train[45000:50000]); the published rows are on the official test set.

Data: each class's images are written as a dataset ``OUT/data/{dataset}_class{c}_train.npz``
and the test images as ``OUT/data/{dataset}_oneclass_test.npz`` (their provenance: source
file names and SHA-256 digests, the index ranges), then read like any ``NAME_SPLIT.npz``.
Every class's model scores the same test set, so the features that do not depend on the
VAE (the pretrained backbone's) are computed once per dataset and size, in the shared
cache ``OUT/features`` (:func:`vaeood.features.core.compute_feature`), not once per class.

Detectors: ``nll``, ``dose_plus`` and ``fused`` see pixels only (no pretraining);
``feature_knn``, ``feature_gaussian``, ``joint_knn`` (one kNN density over the backbone's
features and the pixel VAE's statistics) and ``fused_content`` (the recommended default: the
pixel ``fused`` and ``feature_knn`` combined by a truncated product; its Fisher and min-p rules
beside it) read an ImageNet-pretrained backbone, which
saw ImageNet's 1,000 classes: they overlap CIFAR-10's (airliners, sports cars, many dog and
cat breeds, trucks, ships). The report sets our rows beside the published ones in those two
groups.

Intervals: each class's AUROC and the mean over classes get a 95% percentile interval
from one bootstrap over the test images, shared by every class
(:func:`vaeood.evaluation.intervals.class_mean_summary`).

Each class's model is ``OUT/runs/{dataset}_class{c}``, reused by a rerun into the same
``OUT`` under the rule of every reproduction (:mod:`.reuse`): its config, class images and
preset must equal what is asked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import load_dataset
from ..data.errors import DataError
from ..evaluation.evaluate import evaluate
from ..evaluation.intervals import N_BOOT, class_mean_summary
from ..evaluation.metrics import ood_metrics
from ..evaluation.report import text_table
from ..features import images_digest
from ..features.backbone import DEFAULT_BACKBONE, DEFAULT_SIZE
from ..infra.atomic import atomic_write_json, atomic_write_text
from ..training.config import Config
from .common import EXPERIMENTS, runs_bar, stamp, strict_json, write_image_set
from .reuse import train_or_reuse
from .one_class_report import mean_text, render_report
from .ood_suite.paths import scrub_paths

log = logging.getLogger(__name__)

#: the model ``vaeood fit`` trains (:data:`vaeood.pipeline.MODEL`, less its epochs, which the
#: presets set; a test keeps the two equal)
MODEL = {"model.arch": "conv", "model.likelihood": "dlogistic"}
#: pixel view first (no pretraining), then the detectors that read the pretrained backbone
PIXEL_DETECTORS = ("nll", "dose_plus", "fused")
BACKBONE_DETECTORS = ("feature_knn", "feature_gaussian", "joint_knn", "fused_content", "fused_content_fisher",
                      "fused_content_min_p")
DETECTORS = (*PIXEL_DETECTORS, *BACKBONE_DETECTORS)
RECOMMENDED = "fused_content"

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}

#: published mean AUROCs over the 10 classes (official test sets), in two groups
PUBLISHED = {
    "none": {"title": "No pretraining", "ours": PIXEL_DETECTORS, "rows": [
        ("Deep SVDD", "Ruff et al. 2018", {"mnist": 0.948, "cifar10": 0.648}),
        ("GEOM", "Golan & El-Yaniv 2018", {"mnist": 0.980, "fashion_mnist": 0.935, "cifar10": 0.860}),
        ("RotNet-style", "Hendrycks et al. 2019", {"cifar10": 0.901}),
        ("CSI", "Tack et al. 2020", {"cifar10": 0.943}),
    ]},
    "imagenet": {"title": "ImageNet-pretrained", "ours": BACKBONE_DETECTORS, "rows": [
        ("PANDA", "Reiss et al. 2021", {"cifar10": 0.962}),
        ("Mean-Shifted Contrastive", "Reiss & Hoshen 2023", {"cifar10": 0.975}),
    ]},
}


@dataclass(frozen=True)
class Source:
    """Where one dataset's class images and test images come from: ``(split, start, stop)``
    (``stop`` None: the end of the split)."""

    name: str
    title: str
    classes_from: tuple[str, int, int | None]
    test_from: tuple[str, int, int | None]
    note: str = ""


SOURCES = {
    "mnist": Source("mnist", "MNIST", ("train", 0, None), ("test", 0, None)),
    "fashion_mnist": Source("fashion_mnist", "Fashion-MNIST", ("train", 0, None), ("test", 0, None)),
    "cifar10": Source("cifar10", "CIFAR-10", ("train", 0, 45000), ("train", 45000, None),
                      note="only the first 1,000 of CIFAR-10's 10,000 test images exist on the machines this was "
                           "built on, so the class images come from train[0:45000] and the test images from "
                           "train[45000:] (never trained or fitted on); the published rows are on the official "
                           "test set"),
}


@dataclass(frozen=True)
class OneClassPreset:
    """The budget of one preset."""

    datasets: tuple[str, ...]
    train: dict[str, dict[str, str]]  # dataset → config overrides of its VAEs (over MODEL)
    n_fit: int  # the last images of each class held out of training: the detectors fit on them
    test_images: dict[str, int | None]  # dataset → test images (from the start of its test range; None: all)
    class_images: int | None = None  # at most the first this many images of a class (None: all)
    classes: tuple[int, ...] = tuple(range(10))
    seed: int = 0
    n_boot: int = N_BOOT
    allow_sample: bool = False
    note: str = ""


# 20 epochs, chosen on in-distribution data and the 40-minute budget alone: the held-out ELBO of
# class 0 (its 1,000 held-out images) rose from 5 to 20 epochs by 130 / 217 / 1,980 nats (MNIST /
# Fashion-MNIST / CIFAR-10) and from 20 to 40 by only 32 / 85 / 245; 40 epochs would not fit the budget
QUICK_TRAIN = {"train.epochs": "20"}
PRESETS = {
    # seconds, for tests and a first look at the report (numbers meaningless)
    "smoke": OneClassPreset(datasets=("mnist",), classes=(0, 1), class_images=300, n_fit=60,
                            train={"mnist": {"train.epochs": "1", "model.base_channels": "8"}},
                            test_images={"mnist": 200}, n_boot=200, allow_sample=True,
                            note="tiny: 2 MNIST classes (the bundled sample where no data is found), at most 300 "
                                 "images of a class of which 60 held out, 1 epoch at base width 8, 200 test "
                                 "images; numbers meaningless"),
    "quick": OneClassPreset(datasets=("mnist", "fashion_mnist", "cifar10"), n_fit=1000,
                            train={"mnist": QUICK_TRAIN, "fashion_mnist": QUICK_TRAIN, "cifar10": QUICK_TRAIN},
                            test_images={"mnist": 2000, "fashion_mnist": 2000, "cifar10": 2000},
                            note="every class of the three datasets: all the images of a class (about 6,000 for "
                                 "MNIST and Fashion-MNIST, 4,500 for CIFAR-10), the last 1,000 held out to fit "
                                 "the detectors, 20 epochs on the rest; 2,000 test images per dataset (CIFAR-10: "
                                 "train[45000:47000]). Sized for about 30 minutes on 2 quiet CPU cores (2,000 held "
                                 "out doubled the fitting time of fused_content for the same AUROCs on MNIST 3); "
                                 "the VAEs are not converged"),
    "paper": OneClassPreset(datasets=("mnist", "fashion_mnist", "cifar10"), n_fit=2000,
                            train={"mnist": {"train.epochs": "100"}, "fashion_mnist": {"train.epochs": "100"},
                                   "cifar10": {"train.epochs": "100", "model.base_channels": "64",
                                               "model.latent_dim": "64"}},
                            test_images={"mnist": None, "fashion_mnist": None, "cifar10": None},
                            note="every class: all its images, the last 2,000 held out to fit the detectors, 100 "
                                 "epochs (CIFAR-10 at base width 64, latent 64); every test image (CIFAR-10: "
                                 "train[45000:50000]). Hours on 2 CPU cores; meant for a GPU (--device cuda)"),
}


def class_set_name(dataset: str, c: int) -> str:
    return f"{dataset}_class{c}"


def test_set_name(dataset: str) -> str:
    return f"{dataset}_oneclass"


def write_sets(src: Source, pre: OneClassPreset, data_dir: str | None, folder: Path) -> dict:
    """Write the class sets and the test set of ``src`` into ``folder``; what was written:
    ``{"test": {name, labels, ...}, "classes": {c: {name, n, images_sha256, ...}}, "sources": [...]}``."""
    split, start, stop = src.classes_from
    train = load_dataset(src.name, split, data_dir=data_dir, allow_sample=pre.allow_sample)
    t_split, t_start, t_stop = src.test_from
    test = train if t_split == split else load_dataset(src.name, t_split, data_dir=data_dir,
                                                       allow_sample=pre.allow_sample)
    sources = [_describe(d) for d in dict.fromkeys([train, test])]
    stop = len(train.images) if stop is None else min(stop, len(train.images))
    t_stop = len(test.images) if t_stop is None else min(t_stop, len(test.images))
    limit = pre.test_images.get(src.name)
    if limit is not None:
        t_stop = min(t_stop, t_start + limit)
    if t_stop <= t_start:
        raise DataError(f"{src.name}: no test images in {t_split}[{t_start}:] of {test.source} "
                        f"({len(test.images)} images)")
    if t_split == split and t_start < stop:
        raise DataError(f"{src.name}: the test images {t_split}[{t_start}:{t_stop}] overlap the class images "
                         f"{split}[{start}:{stop}]")
    digests = "; ".join(f"{f['name']} sha256 {f['sha256']}" for s in sources for f in s["files"])
    x, y = test.images[t_start:t_stop], test.labels[t_start:t_stop]
    name = test_set_name(src.name)
    write_image_set(folder / f"{name}_test.npz", _stored(x), f"{src.title} {t_split}[{t_start}:{t_stop}] "
                    f"({len(x)} images, all classes; from {digests})", labels=y)
    written = {"test": {"name": name, "split": "test", "range": [t_split, t_start, t_stop], "n": len(x),
                        "images_sha256": images_digest(x), "labels": y,
                        "per_class": {int(c): int((y == c).sum()) for c in pre.classes}},
               "classes": {}, "sources": sources}
    xs, ys = train.images[start:stop], train.labels[start:stop]
    for c in pre.classes:
        images = xs[ys == c][:pre.class_images]
        if len(images) <= pre.n_fit:
            raise DataError(f"{src.name} class {c}: {len(images)} images in {split}[{start}:{stop}], not more than "
                             f"the {pre.n_fit} to hold out for fitting the detectors")
        cname = class_set_name(src.name, c)
        write_image_set(folder / f"{cname}_train.npz", _stored(images),
                        f"the first {len(images)} images of class {c} in {src.title} {split}[{start}:{stop}] "
                        f"(from {digests})", labels=np.full(len(images), c))
        written["classes"][c] = {"name": cname, "split": "train", "n": len(images), "n_fit": pre.n_fit,
                                 "trained": len(images) - pre.n_fit, "images_sha256": images_digest(images)}
    return written


def _stored(x: np.ndarray) -> np.ndarray:
    """Grey images as ``[N, H, W]``, as the datasets' own files hold them."""
    return x[..., 0] if x.shape[-1] == 1 else x


def _describe(d) -> dict:
    return {"dataset": d.name, "split": d.split, "n": int(len(d.images)), "source": d.source,
            "is_sample": bool(d.is_sample), "files": d.provenance()["files"]}


@dataclass(frozen=True)
class OneClass:
    name: str
    title: str
    presets: dict[str, OneClassPreset]
    detectors: tuple[str, ...] = DETECTORS
    published: dict = field(default_factory=lambda: PUBLISHED)
    own_keys: tuple[str, ...] = ("data.name", "data.holdout")  # set for each class: not overridable

    def datasets_needed(self) -> list[tuple[str, str]]:
        return list(dict.fromkeys((s.name, split) for s in SOURCES.values()
                                  for split in (s.classes_from[0], s.test_from[0])))

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None) -> dict:
        """Per dataset and class: write the data, train (or reuse) the class's VAE, evaluate
        every detector on the test set; then the per-class and mean AUROCs with intervals,
        beside the published rows, in ``report.md`` and ``metrics.json``."""
        pre = self.presets[preset]
        out_dir.mkdir(parents=True, exist_ok=True)
        scoring = {"estimator": estimator or "elbo", "estimator_options": estimator_options, "device": device,
                   "seed": pre.seed, "progress": progress, "n_fit": pre.n_fit, "data_dir": str(out_dir / "data"),
                   "shared_cache": str(out_dir / "features")}
        results = {}
        progress_bar = runs_bar(len(pre.datasets) * len(pre.classes), self.name, progress)
        for ds in pre.datasets:
            src = SOURCES[ds]
            written = write_sets(src, pre, data_dir, out_dir / "data")
            test = written["test"]
            per_class, scores = {}, {d: [] for d in self.detectors}
            for c in pre.classes:
                progress_bar.set_postfix_str(f"{src.title} class {c}")
                config = Config().override({**MODEL, "data.name": written["classes"][c]["name"],
                                            "data.holdout": str(pre.n_fit), **pre.train[ds],
                                            "train.seed": str(pre.seed), "train.device": device, **(overrides or {})})
                per_class[c] = self._one_class(out_dir, ds, c, config, written, scoring, scores)
                progress_bar.update()
            summary = {d: class_mean_summary(scores[d], test["labels"], list(pre.classes), n_boot=pre.n_boot,
                                             seed=pre.seed) for d in self.detectors}
            results[ds] = {"title": src.title, "note": src.note, "sources": written["sources"],
                           "test": {k: v for k, v in test.items() if k != "labels"}, "classes": per_class,
                           "summary": summary}
        progress_bar.close()
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command, **stamp(device),
               "estimator": scoring["estimator"], "estimator_options": estimator_options or {}, "seed": pre.seed,
               "note": pre.note, "settings": _settings(pre, overrides),
               "detectors": {"pixel": list(PIXEL_DETECTORS), "backbone": list(BACKBONE_DETECTORS),
                             "recommended": RECOMMENDED},
               "backbone": {"name": DEFAULT_BACKBONE, "size": DEFAULT_SIZE, "pretrained_on": "ImageNet-1k"},
               "interval": {"level": 0.95, "n_boot": pre.n_boot, "method": INTERVAL_METHOD},
               "published": self.published, "datasets": results}
        out = scrub_paths(out, out_dir)
        atomic_write_json(out_dir / "metrics.json", strict_json(out))
        atomic_write_text(out_dir / "report.md", render_report(out))
        return out

    def _one_class(self, out_dir: Path, ds: str, c: int, config: Config, written: dict, scoring: dict,
                   scores: dict) -> dict:
        """Train (or reuse) class ``c``'s VAE, evaluate every detector on the test set into
        ``out_dir/ds/classC``, append each detector's scores to ``scores``; the class's record."""
        cls, test = written["classes"][c], written["test"]
        run_dir = out_dir / "runs" / cls["name"]
        eval_dir = out_dir / ds / f"class{c}"
        t0 = time.perf_counter()
        training = train_or_reuse(config, run_dir, data_dir=scoring["data_dir"], progress=scoring["progress"])
        t1 = time.perf_counter()
        # the whole test set is the in-distribution set of evaluate: its scores are split by label below
        ev = evaluate(run_dir, test["name"], [], detectors=self.detectors, out_dir=eval_dir, **scoring)
        t2 = time.perf_counter()
        in_class, metrics = test["labels"] == c, {}
        for d in self.detectors:
            with np.load(eval_dir / ev["detector_scores"][d], allow_pickle=False) as f:
                s = f[test["name"]]
            scores[d].append(s)
            metrics[d] = ood_metrics(s[in_class], s[~in_class])
        return {"name": CLASS_NAMES[ds][c], "run": str(run_dir.relative_to(out_dir)), "data": cls,
                "training": training, "fit_data": ev["fit_data"], "metrics": metrics,
                "detectors": {d: {k: ev["detectors"][d][k] for k in ("options", "paper", "fit")}
                              for d in self.detectors},
                "seconds": {"train_or_reuse": t1 - t0, "evaluate": t2 - t1,
                            "features": {d: ev["detectors"][d]["seconds"]["features_total"] for d in self.detectors}}}

    def summary(self, out: dict) -> str:
        """The mean AUROC per detector and dataset, with intervals, for the terminal."""
        names = list(out["datasets"])
        body = [[d + (" (recommended)" if d == RECOMMENDED else ""),
                 *[mean_text(out["datasets"][n]["summary"][d]) for n in names]] for d in self.detectors]
        lines = [text_table(["detector", *[f"{out['datasets'][n]['title']} mean AUROC [95%]" for n in names]], body)]
        if any(s["is_sample"] for r in out["datasets"].values() for s in r["sources"]):
            lines.append("NOTE: no dataset was found, so this ran on the small sample bundled with vaeood "
                         "(set VAEOOD_DATA or --data-dir for the real data)")
        return "\n".join(lines)


INTERVAL_METHOD = ("95% percentile intervals from one bootstrap over the test images, shared by every class: each "
                   "replicate resamples the images of each label with replacement to its own count, and every "
                   "class's AUROC and their mean are computed on it; the classes are fixed (they are the benchmark), "
                   "so the interval of the mean is over test images, not over classes")


def _settings(pre: OneClassPreset, overrides: dict | None) -> dict:
    return {"datasets": list(pre.datasets), "classes": list(pre.classes), "model": MODEL, "train": pre.train,
            "overrides": dict(overrides or {}), "n_fit": pre.n_fit, "class_images": pre.class_images,
            "test_images": pre.test_images, "seed": pre.seed}


EXPERIMENTS.register("one-class")(OneClass(
    name="one-class",
    title="One-class OOD detection on MNIST, Fashion-MNIST and CIFAR-10: one VAE per class",
    presets=PRESETS,
))
