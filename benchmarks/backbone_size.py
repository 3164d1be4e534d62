"""AUROC of ``feature_knn`` (mean cosine distance to the k = 2 nearest fit features) against
the backbone's input size S, one-class protocol; every choice is made on in-distribution
images (k is fixed, S is the variable measured).

* CIFAR-10 classes 0 / 3 / 9 (airplane, cat, truck): fit on the first 2,000 images of the
  class within train[0:45000]; test on train[45000:47000] (normal = the class, OOD = the
  other nine);
* Fashion-MNIST classes 0 / 3 / 9 (T-shirt/top, dress, ankle boot): fit on the first 2,000
  images of the class in the train split; test on test[0:2000];
* MNIST (``--sets mnist``) as Fashion-MNIST; ``--classes 0 1 2 ... 9`` for every class.

AUROC with OOD as the positive class (``sklearn.metrics.roc_auc_score``). Features come from
the package's ``backbone`` feature (EfficientNet-Lite0, ImageNet weights: the backbone saw
ImageNet's 1,000 classes, which overlap CIFAR-10's) as the package runs it (OpenVINO where it
reproduces PyTorch, else PyTorch: the JSON's ``runtime``), computed once per (image set, size)
and kept in ``--cache`` when given.

Differences between sizes come with a paired bootstrap over the test images (the fit images
held fixed, so the intervals leave out the choice of fit images).

    VAEOOD_DATA=/path/to/data python benchmarks/backbone_size.py --sizes 64 80 96 112 128
    VAEOOD_DATA=/path/to/data python benchmarks/backbone_size.py --sizes 128 160 192 --sets cifar10 \
        --classes 0 1 2 3 4 5 6 7 8 9
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from common import finish, machine_info, parser, real_data_and_cache

FIT = 2000
CLASSES = (0, 3, 9)
#: set → (file of the fit images, slice of it they are taken from, test file, test slice)
SETS = {"cifar10": ("cifar10_train.npz", slice(0, 45000), "cifar10_train.npz", slice(45000, 47000)),
        "fashion_mnist": ("fashion_mnist_train.npz", slice(None), "fashion_mnist_test.npz", slice(0, 2000)),
        "mnist": ("mnist_train.npz", slice(None), "mnist_test.npz", slice(0, 2000))}


def nchw(x: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W] or [N, H, W, C] → [N, C, H, W]."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t[:, None] if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


def image_sets(data: Path, names: list[str], classes: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """{name: (uint8 images, labels or None)}: each set's test images and each class's fit images."""
    out = {}
    for name in names:
        fit_file, fit_slice, test_file, test_slice = SETS[name]
        with np.load(data / fit_file) as f:
            x, y = f["x"][fit_slice], f["y"][fit_slice]
        for c in classes:
            out[f"{name}/fit{c}"] = (x[np.flatnonzero(y == c)[:FIT]], None)
        with np.load(data / test_file) as f:
            out[f"{name}/test"] = (f["x"][test_slice], f["y"][test_slice])
    return out


def features(images: np.ndarray, size: int, cache: Path | None, key: str,
             name: str | None = None) -> tuple[np.ndarray, float]:
    """The features [N, 1280] of ``images`` at ``size`` by the registered backbone ``name`` (None:
    the default; from ``cache`` when there, under ``key``) and the seconds they took (0 from the cache)."""
    from vaeood.features.backbone import DEFAULT_BACKBONE, backbone

    path = cache / f"{key.replace('/', '_')}_{size}.npy" if cache else None
    if path is not None and path.exists():
        return np.load(path), 0.0
    start = time.perf_counter()
    f = backbone(None, nchw(images), name=name or DEFAULT_BACKBONE, size=size)["backbone_features"].numpy()
    seconds = time.perf_counter() - start
    if path is not None:
        np.save(path, f)
    return f, seconds


def paired_bootstrap(scores: dict, labels: dict, sizes: list[int], resamples: int, classes: list[int]) -> dict:
    """{set: {(a, b): mean and 95% interval of the class-mean AUROC at b less that at a}} for each
    size against the one before it and against the largest, over ``resamples`` resamples of the
    test images (the same resample for both sizes; the fit images stay fixed)."""
    pairs = sorted({*zip(sizes[:-1], sizes[1:], strict=True), *((a, sizes[-1]) for a in sizes[:-1])})
    rng = np.random.default_rng(0)
    out = {}
    for name, y in labels.items():
        draws = [rng.integers(0, len(y), len(y)) for _ in range(resamples)]

        def mean_auroc(size, i, y=y, name=name):
            return np.mean([roc_auc_score(y[i] != c, scores[name, c, size][i]) for c in classes])
        out[name] = {}
        for a, b in pairs:
            d = np.array([mean_auroc(b, i) - mean_auroc(a, i) for i in draws])
            out[name][a, b] = {"mean": float(d.mean()), "low": float(np.percentile(d, 2.5)),
                               "high": float(np.percentile(d, 97.5))}
    return out


def main() -> None:
    from vaeood.detectors.feature_knn import mean_knn_distance, unit_rows

    args = parser(__doc__, sizes=([64, 80, 96, 112, 128], "backbone input sizes S"), k=2, threads=2,
                  bootstrap=(500, "paired bootstrap resamples of the test images"),
                  cache=(None, "folder to keep features in between runs"),
                  sets=(["cifar10", "fashion_mnist"], f"one-class sets, of {', '.join(SETS)}"),
                  classes=(list(CLASSES), "the classes to fit on, one at a time")).parse_args()
    data, cache = real_data_and_cache(args, "cifar10_train.npz and fashion_mnist_*.npz")
    sets = image_sets(data, args.sets, args.classes)
    info = machine_info("cpu")
    auroc: dict[str, dict[int, float]] = {}
    scores: dict[tuple[str, int, int], np.ndarray] = {}
    seconds: dict[int, float] = {}
    for size in args.sizes:
        feats = {}
        seconds[size] = 0.0
        for key, (images, _) in sets.items():
            feats[key], s = features(images, size, cache, key)
            seconds[size] += s
        for name in args.sets:
            test_x, test_y = feats[f"{name}/test"], sets[f"{name}/test"][1]
            for c in args.classes:
                score = mean_knn_distance(unit_rows(test_x), unit_rows(feats[f"{name}/fit{c}"]), args.k)
                scores[name, c, size] = score
                auroc.setdefault(f"{name} {c}", {})[size] = float(roc_auc_score(test_y != c, score))
        print(f"S={size}: features of {sum(len(v[0]) for v in sets.values())} images in {seconds[size]:.0f} s; "
              + ", ".join(f"{row} {v[size]:.3f}" for row, v in auroc.items()), flush=True)
    lines = [f"feature_knn (k = {args.k}) AUROC, one-class, fit {FIT} images of the class; "
             f"{info['cpu']} [{info['cpu_details']}], torch threads {args.threads}", "",
             "| set, class | " + " | ".join(f"S = {s}" for s in args.sizes) + " |",
             "|---|" + "---|" * len(args.sizes)]
    for row, values in auroc.items():
        lines.append(f"| {row} | " + " | ".join(f"{values[s]:.3f}" for s in args.sizes) + " |")
    for name in args.sets:
        rows = [v for r, v in auroc.items() if r.startswith(name + " ")]
        lines.append(f"| {name} mean | " + " | ".join(f"{np.mean([v[s] for v in rows]):.3f}" for s in args.sizes)
                     + " |")
    differences = paired_bootstrap(scores, {n: sets[f"{n}/test"][1] for n in args.sets}, sorted(args.sizes),
                                   args.bootstrap, args.classes)
    lines += ["", f"class-mean AUROC difference, paired bootstrap over the test images ({args.bootstrap} "
                  "resamples; fit images fixed): mean [95% interval]"]
    lines += [f"  {name} S={b} − S={a}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
              for name, pairs in differences.items() for (a, b), d in pairs.items()]
    from vaeood.models.backbones import _openvino  # which runner gave the features (cached per size)

    runtime = {s: "openvino" if _openvino("efficientnet_lite0", s) is not None else "torch" for s in args.sizes}
    protocol = {n: {"fit": f"first {FIT} of the class in {f}[{fs.start or 0}:{fs.stop or ''}]",
                    "test": f"{t}[{ts.start}:{ts.stop}]"} for n, (f, fs, t, ts) in SETS.items() if n in args.sets}
    finish("backbone_size", {"machine": info, "k": args.k, "fit_images": FIT, "classes": args.classes,
                             "protocol": protocol, "runtime": runtime, "auroc": auroc, "feature_seconds": seconds,
                             "bootstrap_differences": {n: {f"{b}-{a}": d for (a, b), d in pairs.items()}
                                                       for n, pairs in differences.items()}},
           args.out, *lines, hide={args.cache: "CACHE"} if args.cache else None)


if __name__ == "__main__":
    main()
