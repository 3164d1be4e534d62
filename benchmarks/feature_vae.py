"""AUROC of the likelihood detectors read from a VAE of the backbone's features
(``feature_vae_nll`` / ``_typicality`` / ``_dose`` / ``_latent``) beside ``feature_knn`` and
``feature_gaussian`` on the same features, with 95% bootstrap intervals over 3 seeds.

* one-class CIFAR-10, classes 0 / 3 / 9 (airplane, cat, truck): fit on the first 2,000 images
  of the class within train[0:45000]; test on train[45000:47000] (normal = the class, OOD =
  the other nine);
* Tiny ImageNet 64 (``tinyimagenet64/``, grey photos repeated to RGB by the folder loader's
  ``conform="resize"``): fit on the 5,000 ``train`` photos of its 10 classes; test on the 500
  ``val`` photos of those classes against the first 5 ``val`` photos of each of the 192 other
  classes (960), 500 images of uniform noise (each pixel uniform in 0..255) and 500 constant
  images (one uniform random RGB colour each), 64×64.

Features: the package's ``backbone`` feature (EfficientNet-Lite0, ImageNet weights: the backbone
saw ImageNet's classes, which overlap both sets) at its default input size
(``vaeood.features.backbone.DEFAULT_SIZE``), computed once per image set and kept in
``--cache``. A seed changes the feature VAE's initialisation, mini-batches, ELBO draws and its
split of the fit images into VAE training rows and reader rows; the fit and test images stay
fixed. ``feature_knn`` and ``feature_gaussian`` have no seed (one fit). The fits run in ``--jobs``
worker processes of one torch thread each (two threads in one process mostly wait on each other
over these small matrices on a loaded machine).

Intervals: :func:`vaeood.evaluation.intervals.seed_summary`, the two-level bootstrap over seeds
and test images (one level, the images, for the detectors without a seed).

    VAEOOD_DATA=/path/to/data python benchmarks/feature_vae.py --cache CACHE
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from backbone_size import features
from common import finish, machine_info, parser, real_data_and_cache

FIT = 2000
CLASSES = (0, 3, 9)
VAE_DETECTORS = ("feature_vae_nll", "feature_vae_typicality", "feature_vae_dose", "feature_vae_latent")
FIXED_DETECTORS = ("feature_knn", "feature_gaussian")
#: val photos taken from each Tiny ImageNet class outside the 10 training classes
PER_OTHER_CLASS = 5
SYNTHETIC = 500


def image_sets(data: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """({set: uint8 NHWC images}, {test set: int labels}, provenance): each one-class fit set, the
    CIFAR-10 test slice, and Tiny ImageNet's fit, val-in, val-other, noise and constant images."""
    from vaeood.data import load_dataset

    images, labels = {}, {}
    cifar = load_dataset("cifar10", "train", data_dir=str(data))
    x, y = cifar.images[:45000], cifar.labels[:45000]
    for c in CLASSES:
        images[f"cifar10_fit{c}"] = x[np.flatnonzero(y == c)[:FIT]]
    images["cifar10_test"], labels["cifar10_test"] = cifar.images[45000:47000], cifar.labels[45000:47000]
    train = load_dataset(str(data / "tinyimagenet64" / "train"), "train", conform="resize")
    val = load_dataset(str(data / "tinyimagenet64" / "val"), "val", conform="resize")
    images["tin_fit"] = train.images
    inside = np.isin(np.asarray(val.folder["classes"])[val.labels], train.folder["classes"])
    images["tin_val_in"] = val.images[inside]
    other = [np.flatnonzero((val.labels == k) & ~inside)[:PER_OTHER_CLASS] for k in np.unique(val.labels[~inside])]
    images["tin_val_other"] = val.images[np.sort(np.concatenate(other))]
    rng = np.random.default_rng(0)
    images["tin_noise"] = rng.integers(0, 256, (SYNTHETIC, 64, 64, 3), dtype=np.uint8)
    images["tin_constant"] = np.broadcast_to(rng.integers(0, 256, (SYNTHETIC, 1, 1, 3), dtype=np.uint8),
                                             (SYNTHETIC, 64, 64, 3)).copy()
    provenance = {"cifar10": cifar.provenance(), "tinyimagenet64_train": train.provenance(),
                  "tinyimagenet64_val": val.provenance()}
    return images, labels, provenance


def fit_and_score(unit: tuple) -> tuple:
    """One unit of work, in a worker process of one thread: the detectors ``names`` (with ``seed``
    when not None) fitted on ``fit`` and scoring each test set. Returns the unit's row and seed,
    {detector: {test set: scores}} and {detector: seconds to fit}."""
    from vaeood.detectors import make_detector

    row, fit, tests, names, seed, epochs = unit
    torch.set_num_threads(1)
    scores, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        options = {"seed": seed, "epochs": epochs} if seed is not None else {}
        detector = make_detector(name, options).fit({"backbone_features": fit})
        seconds[name] = time.perf_counter() - start
        scores[name] = {k: detector.score({"backbone_features": f}) for k, f in tests.items()}
    return row, seed, scores, seconds


def main() -> None:
    from vaeood.evaluation.intervals import seed_summary
    from vaeood.features.backbone import DEFAULT_SIZE

    args = parser(__doc__, seeds=([0, 1, 2], "seeds of the feature VAE"), epochs=60, threads=2,
                  jobs=(2, "worker processes of one thread fitting the detectors"),
                  cache=(None, "folder to keep features in between runs")).parse_args()
    data, cache = real_data_and_cache(args, "cifar10_train.npz and tinyimagenet64/")
    begin = time.perf_counter()
    images, labels, provenance = image_sets(data)
    feats, feature_seconds = {}, 0.0
    for key, x in images.items():
        feats[key], s = features(x, DEFAULT_SIZE, cache, key)
        feature_seconds += s
    print(f"features of {sum(len(x) for x in images.values())} images at S = {DEFAULT_SIZE} in "
          f"{feature_seconds:.0f} s", flush=True)
    # (row, fit set, {test set: features}, {OOD column: (in-distribution test set, mask or None, OOD test set)})
    tasks = [(f"CIFAR-10 class {c}", f"cifar10_fit{c}", {"test": feats["cifar10_test"]}) for c in CLASSES]
    tasks.append(("TIN-64", "tin_fit", {k: feats[f"tin_{k}"] for k in ("val_in", "val_other", "noise", "constant")}))
    # Tiny ImageNet's 5,000 fit images first: the longest units start first
    units = [(row, feats[fit_key], tests, names, seed, args.epochs) for row, fit_key, tests in reversed(tasks)
             for names, seeds in ((VAE_DETECTORS, args.seeds), (FIXED_DETECTORS, [None])) for seed in seeds]
    scores: dict = {row: {} for row, _, _ in tasks}
    fit_seconds: dict = {row: {} for row, _, _ in tasks}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for row, seed, unit_scores, seconds in pool.map(fit_and_score, units):  # in order: seeds ascending
            for name, by_set in unit_scores.items():
                scores[row].setdefault(name, []).append(by_set)
                fit_seconds[row].setdefault(name, []).append(seconds[name])
            print(row, "seed", seed, "fitted", flush=True)
    table: dict = {}
    for row, _, _ in tasks:
        table[row] = {}
        for name, runs in scores[row].items():
            if row.startswith("CIFAR"):
                normal = labels["cifar10_test"] == int(row.split()[-1])
                pairs = {"other classes": [(r["test"][normal], r["test"][~normal]) for r in runs]}
            else:
                pairs = {k: [(r["val_in"], r[k]) for r in runs] for k in ("val_other", "noise", "constant")}
            table[row][name] = {k: seed_summary(p).as_dict() for k, p in pairs.items()}
        print(row, {n: {k: round(v["mean"], 3) for k, v in d.items()} for n, d in table[row].items()}, flush=True)
    columns = [(row, k) for row in table for k in next(iter(table[row].values()))]
    lines = [f"AUROC (OOD positive), mean over seeds {args.seeds} [95% interval], backbone at S = {DEFAULT_SIZE}; "
             f"{machine_info('cpu')['cpu']}", "",
             "| detector | " + " | ".join(f"{r}: {k}" for r, k in columns) + " |", "|---|" + "---|" * len(columns)]
    for name in (*VAE_DETECTORS, *FIXED_DETECTORS):
        cells = [table[r][name][k] for r, k in columns]
        lines.append(f"| {name} | " + " | ".join(f"{c['mean']:.3f} [{c['interval'][0]:.3f}, {c['interval'][1]:.3f}]"
                                                 for c in cells) + " |")
    sizes = {k: len(v) for k, v in images.items()}
    finish("feature_vae", {"machine": machine_info("cpu"), "backbone_size": DEFAULT_SIZE, "seeds": args.seeds,
                           "epochs": args.epochs, "images": sizes, "data": provenance, "auroc": table,
                           "feature_seconds": feature_seconds, "fit_seconds": fit_seconds,
                           "total_seconds": time.perf_counter() - begin},
           args.out, *lines, hide={args.cache: "CACHE"} if args.cache else None)


if __name__ == "__main__":
    main()
