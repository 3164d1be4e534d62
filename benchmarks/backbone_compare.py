"""AUROC of ``feature_knn`` with each registered backbone at one input size, on the one-class
protocol of ``backbone_size.py`` (the benchmark backbone choices are made on), every class of
CIFAR-10, Fashion-MNIST and MNIST; and, with ``--suite-data``, on the ood-suite's two near-OOD
pairs of photos, which are OOD sets: reported, never used to choose.

* one-class: fit on the first 2,000 images of the class (CIFAR-10 within train[0:45000]),
  test on CIFAR-10 train[45000:47000] or the first 2,000 test images (normal = the class);
  k = 2, mean cosine distance (``feature_knn``'s rule);
* ``--suite-data OUT/runs/data`` (the sets an ``ood-suite --preset quick`` run wrote): Tiny
  ImageNet 64, reference train[4000:4500] (the suite's fit slice), its 500 val photos of the
  training classes against 500 of other classes; CIFAR-10, reference train[10000:12000] (the
  suite's fit slice), its first 1,000 test images against 1,000 Tiny ImageNet images at 32 px;
* held-out classes, a proxy for near-OOD made of in-distribution images only: the ten classes
  in five disjoint pairs (a fixed permutation, seed 0); for each pair, the reference is the
  other eight classes' images and the test images of the pair are the OOD ones. On the
  one-class sets the reference is the eight classes' one-class fit images and the test images
  are the one-class test images; on Tiny ImageNet 64 (with ``--suite-data``) the reference is
  train[0:4000] of the eight classes (the suite's training slice) and the test images are the
  500 val photos of the ten training classes. AUROC: mean over the five pairs.

Differences from the first backbone come with a paired bootstrap over the test images (the fit
images held fixed). Features are the package's ``backbone`` feature as it runs (OpenVINO where
it reproduces PyTorch), kept in ``--cache`` when given.

    VAEOOD_DATA=/path/to/data python benchmarks/backbone_compare.py --cache CACHE \
        --suite-data OUT/runs/data
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from backbone_size import FIT, SETS
from backbone_size import features as backbone_size_features
from common import finish, machine_info, parser, real_data_and_cache

#: the ood-suite quick preset's near-OOD pairs: (reference, in-distribution, OOD), each (file, slice);
#: a file name with a slash is under --suite-data, else under $VAEOOD_DATA
PAIRS = {"tinyimagenet64 -> other classes": (("tinyimagenet64/tinyimagenet64_train.npz", slice(4000, 4500)),
                                             ("tinyimagenet64/tinyimagenet64_test.npz", slice(None)),
                                             ("tinyimagenet64/tinyimagenet64_other_test.npz", slice(None))),
         "cifar10 -> tinyimagenet": (("cifar10_train.npz", slice(10000, 12000)),
                                     ("cifar10_test_first1000.npz", slice(0, 1000)),
                                     ("tinyimagenet_test.npz", slice(0, 1000)))}


def features(backbone: str, size: int, images: np.ndarray, cache: Path | None, key: str, seconds: dict) -> np.ndarray:
    """``backbone``'s features of ``images`` at ``size`` (``backbone_size.features``, cached under
    the backbone's name); the time spent computing is added to ``seconds[backbone]`` with the image count."""
    f, spent = backbone_size_features(images, size, cache, f"{backbone}/{key}", name=backbone)
    if spent:
        total, count = seconds.get(backbone, (0.0, 0))
        seconds[backbone] = (total + spent, count + len(images))
    return f


def knn(test: np.ndarray, reference: np.ndarray, k: int) -> np.ndarray:
    from vaeood.detectors.feature_knn import mean_knn_distance, unit_rows

    return mean_knn_distance(unit_rows(test), unit_rows(reference), k)


def bootstrap(aurocs, n: int, resamples: int, rng) -> dict:
    """Mean and 95% interval of ``aurocs(rows)`` (a difference) over resampled test rows."""
    d = np.array([aurocs(rng.integers(0, n, n)) for _ in range(resamples)])
    return {"mean": float(d.mean()), "low": float(np.percentile(d, 2.5)), "high": float(np.percentile(d, 97.5))}


def one_class_images(data: Path, name: str) -> tuple[np.ndarray, ...]:
    """The one-class set ``name``'s images and labels to fit on, then its test images and labels."""
    fit_file, fit_slice, test_file, test_slice = SETS[name]
    with np.load(data / fit_file) as f:
        x, y = f["x"][fit_slice], f["y"][fit_slice]
    with np.load(data / test_file) as f:
        return x, y, f["x"][test_slice], f["y"][test_slice]


def one_class(args, data: Path, cache, seconds: dict, rng) -> tuple[dict, dict]:
    """{set: {backbone: [AUROC per class]}} and {set: {backbone: bootstrap of its class mean less the first's}}."""
    auroc, diffs = {}, {}
    for name in args.sets:
        x, y, tx, ty = one_class_images(data, name)
        scores = {}
        for bb in args.backbones:
            test = features(bb, args.size, tx, cache, f"{name}/test", seconds)
            for c in args.classes:
                fit = features(bb, args.size, x[np.flatnonzero(y == c)[:FIT]], cache, f"{name}/fit{c}", seconds)
                scores[bb, c] = knn(test, fit, args.k)
            auroc.setdefault(name, {})[bb] = [float(roc_auc_score(ty != c, scores[bb, c])) for c in args.classes]
            print(f"{name} {bb}: " + " ".join(f"{a:.3f}" for a in auroc[name][bb])
                  + f" (mean {np.mean(auroc[name][bb]):.3f})", flush=True)

        def mean(bb, rows, ty=ty, scores=scores):
            return np.mean([roc_auc_score(ty[rows] != c, scores[bb, c][rows]) for c in args.classes])
        first = args.backbones[0]
        diffs[name] = {bb: bootstrap(lambda r, bb=bb: mean(bb, r) - mean(first, r), len(ty), args.bootstrap, rng)
                       for bb in args.backbones[1:]}
    return auroc, diffs


def suite_pairs(args, data: Path, cache, seconds: dict, rng) -> tuple[dict, dict]:
    """The ood-suite's near-OOD pairs (module docstring): AUROC per backbone and bootstrap differences."""
    def read(file, rows):
        with np.load((Path(args.suite_data) if "/" in file else data) / file) as f:
            return f["x"][rows]
    auroc, diffs = {}, {}
    for pair, parts in PAIRS.items():
        ref, ins, outs = (read(*p) for p in parts)
        scores = {}
        for bb in args.backbones:
            r, i, o = (features(bb, args.size, x, cache, f"{pair}/{part}", seconds)
                       for x, part in ((ref, "reference"), (ins, "in"), (outs, "ood")))
            scores[bb] = (knn(i, r, args.k), knn(o, r, args.k))
            auroc.setdefault(pair, {})[bb] = float(roc_auc_score(np.r_[np.zeros(len(i)), np.ones(len(o))],
                                                                 np.r_[scores[bb][0], scores[bb][1]]))
            print(f"{pair} {bb}: {auroc[pair][bb]:.3f}", flush=True)
        n_in, n_out = len(ins), len(outs)

        def pair_auroc(bb, rows, scores=scores, n_in=n_in):
            a, b = rows[rows < n_in], rows[rows >= n_in] - n_in
            s_in, s_out = scores[bb]
            return roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[s_in[a], s_out[b]])
        first = args.backbones[0]
        # resampling in- and OOD images together (counts vary a little from draw to draw)
        diffs[pair] = {bb: bootstrap(lambda r, bb=bb: pair_auroc(bb, r) - pair_auroc(first, r), n_in + n_out,
                                     args.bootstrap, rng) for bb in args.backbones[1:]}
    return auroc, diffs


#: the ten classes in five disjoint held-out pairs
HELD_OUT_PAIRS = np.random.default_rng(0).permutation(10).reshape(5, 2)


def tinyimagenet_held_out(args, backbone: str, cache, seconds: dict) -> tuple[np.ndarray, ...]:
    """The held-out-classes proxy's Tiny ImageNet 64 (module docstring), from ``--suite-data``: the
    features of train[0:4000] and their labels, then of the 500 val photos and theirs."""
    tin = Path(args.suite_data) / "tinyimagenet64"
    with np.load(tin / "tinyimagenet64_train.npz") as f:
        x, y = f["x"][:4000], f["y"][:4000]
    with np.load(tin / "tinyimagenet64_test.npz") as f:
        tx, ty = f["x"], f["y"]
    return (features(backbone, args.size, x, cache, "tinyimagenet64 held-out/train0-4000", seconds), y,
            features(backbone, args.size, tx, cache, "tinyimagenet64 held-out/val", seconds), ty)


def held_out_classes(args, data: Path, cache, seconds: dict, rng) -> tuple[dict, dict]:
    """The held-out-classes proxy (module docstring): {set: {backbone: [AUROC per held-out pair]}}
    and {set: {backbone: bootstrap of its mean less the first's}}."""
    sets = {}
    for name in args.sets:
        x, y, tx, ty = one_class_images(data, name)
        # the one-class protocol's fit and test images, under its cache keys
        fits = {bb: {c: features(bb, args.size, x[np.flatnonzero(y == c)[:FIT]], cache, f"{name}/fit{c}", seconds)
                     for c in range(10)} for bb in args.backbones}
        tests = {bb: features(bb, args.size, tx, cache, f"{name}/test", seconds) for bb in args.backbones}
        sets[name] = (ty, {bb: [(np.vstack([fits[bb][c] for c in range(10) if c not in pair]), tests[bb])
                                for pair in HELD_OUT_PAIRS] for bb in args.backbones})
    if args.suite_data:
        per = {}
        for bb in args.backbones:
            ref, y, test, ty = tinyimagenet_held_out(args, bb, cache, seconds)
            per[bb] = [(ref[~np.isin(y, pair)], test) for pair in HELD_OUT_PAIRS]
        sets["tinyimagenet64"] = (ty, per)
    auroc, diffs = {}, {}
    for name, (ty, per) in sets.items():
        scores = {bb: [knn(test, ref, args.k) for ref, test in per[bb]] for bb in args.backbones}

        def mean(bb, rows, ty=ty, scores=scores):
            return np.mean([roc_auc_score(np.isin(ty[rows], pair), s[rows])
                            for pair, s in zip(HELD_OUT_PAIRS, scores[bb], strict=True)])
        for bb in args.backbones:
            auroc.setdefault(name, {})[bb] = [float(roc_auc_score(np.isin(ty, pair), s))
                                              for pair, s in zip(HELD_OUT_PAIRS, scores[bb], strict=True)]
            print(f"{name} held-out classes {bb}: " + " ".join(f"{a:.3f}" for a in auroc[name][bb])
                  + f" (mean {np.mean(auroc[name][bb]):.3f})", flush=True)
        first = args.backbones[0]
        diffs[name] = {bb: bootstrap(lambda r, bb=bb: mean(bb, r) - mean(first, r), len(ty), args.bootstrap, rng)
                       for bb in args.backbones[1:]}
    return auroc, diffs


def main() -> None:
    args = parser(__doc__, backbones=(["efficientnet_lite0", "efficientnet_lite2"], "registered backbones, the "
                                      "first the baseline"), size=160, k=2, threads=2,
                  bootstrap=(500, "paired bootstrap resamples of the test images"),
                  cache=(None, "folder to keep features in between runs"),
                  sets=(list(SETS), "one-class sets"), classes=(list(range(10)), "the classes to fit on"),
                  suite_data=("", "an ood-suite run's OUT/runs/data, for its near-OOD pairs")).parse_args()
    data, cache = real_data_and_cache(args, "cifar10_train.npz, fashion_mnist_*.npz and mnist_*.npz")
    rng = np.random.default_rng(0)
    seconds: dict = {}
    auroc, diffs = one_class(args, data, cache, seconds, rng)
    held, held_diffs = held_out_classes(args, data, cache, seconds, rng)
    pairs, pair_diffs = suite_pairs(args, data, cache, seconds, rng) if args.suite_data else ({}, {})
    first = args.backbones[0]
    lines = ["", f"feature_knn (k = {args.k}) at {args.size} px; differences from {first}, paired bootstrap "
                 f"({args.bootstrap} resamples): mean [95% interval]"]
    for name, rows in {**diffs, **{f"{k} held-out classes": v for k, v in held_diffs.items()}, **pair_diffs}.items():
        for bb, d in rows.items():
            lines.append(f"  {name}: {bb} − {first}: {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
    speed = {bb: count / spent for bb, (spent, count) in seconds.items() if spent > 0}
    lines += [f"  {bb}: {v:.0f} images/s (its feature passes here)" for bb, v in speed.items()]
    finish("backbone_compare", {"machine": machine_info("cpu"), "size": args.size, "k": args.k, "fit_images": FIT,
                                "classes": args.classes, "one_class_auroc": auroc, "one_class_differences": diffs,
                                "held_out_pairs": HELD_OUT_PAIRS.tolist(), "held_out_classes_auroc": held,
                                "held_out_classes_differences": held_diffs, "suite_pairs_auroc": pairs,
                                "suite_pairs_differences": pair_diffs,
                                "images_per_s": speed},
           args.out, *lines, hide={k: v for k, v in ((args.cache, "CACHE"), (args.suite_data, "SUITE_DATA")) if k})


if __name__ == "__main__":
    main()
