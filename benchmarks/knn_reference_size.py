"""How ``feature_knn``'s AUROC grows with its reference, measured on in-distribution images only:
the held-out-classes proxy of ``backbone_compare.py`` with m reference images per class.

For each of the five held-out pairs of classes (``backbone_compare.HELD_OUT_PAIRS``), the kNN
reference is the first m images of each of the other eight classes and the pair's test images
are the OOD ones; the AUROC is the mean over the five pairs. The one-class sets take their
reference from the one-class fit images (at most 2,000 a class) and test on the one-class test
images; Tiny ImageNet 64 (with ``--suite-data``) takes it from train[0:4000] (at most 400 a class)
and tests on the 500 val photos of its ten training classes. The default backbone at 160 px,
k = 2; features shared with ``backbone_compare.py`` through ``--cache``.

    VAEOOD_DATA=/path/to/data python benchmarks/knn_reference_size.py --cache CACHE \
        --suite-data OUT/runs/data
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from backbone_compare import HELD_OUT_PAIRS, features, knn, one_class_images, tinyimagenet_held_out
from backbone_size import FIT, SETS
from common import finish, machine_info, parser, real_data_and_cache

BACKBONE = "efficientnet_lite0"


def proxy_auroc(per_class: list[np.ndarray], test: np.ndarray, labels: np.ndarray, m: int, k: int) -> float:
    """The mean over the held-out pairs of the AUROC with the first ``m`` images of each other class."""
    return float(np.mean([roc_auc_score(np.isin(labels, pair),
                                        knn(test, np.vstack([per_class[c][:m] for c in range(10) if c not in pair]), k))
                          for pair in HELD_OUT_PAIRS]))


def main() -> None:
    args = parser(__doc__, size=160, k=2, threads=2, cache=(None, "folder to keep features in between runs"),
                  sets=(list(SETS), "one-class sets"), per_class=([125, 250, 500, 1000, 2000], "reference images a "
                                                                  "class (Tiny ImageNet: a fifth of each)"),
                  suite_data=("", "an ood-suite run's OUT/runs/data, for Tiny ImageNet 64")).parse_args()
    data, cache = real_data_and_cache(args, "cifar10_train.npz, fashion_mnist_*.npz and mnist_*.npz")
    seconds: dict = {}
    result, lines = {}, ["", f"feature_knn (k = {args.k}) at {args.size} px, held-out classes: AUROC by reference "
                             "images a class"]
    for name in args.sets:
        x, y, tx, ty = one_class_images(data, name)
        per_class = [features(BACKBONE, args.size, x[np.flatnonzero(y == c)[:FIT]], cache, f"{name}/fit{c}", seconds)
                     for c in range(10)]
        test = features(BACKBONE, args.size, tx, cache, f"{name}/test", seconds)
        result[name] = {m: proxy_auroc(per_class, test, ty, m, args.k) for m in args.per_class if m <= FIT}
    if args.suite_data:
        ref, y, test, ty = tinyimagenet_held_out(args, BACKBONE, cache, seconds)
        per_class = [ref[y == c] for c in range(10)]
        result["tinyimagenet64"] = {m // 5: proxy_auroc(per_class, test, ty, m // 5, args.k) for m in args.per_class
                                    if m // 5 <= min(len(p) for p in per_class)}
    for name, row in result.items():
        lines.append(f"  {name}: " + ", ".join(f"{m}: {a:.3f}" for m, a in row.items()))
    finish("knn_reference_size", {"machine": machine_info("cpu"), "backbone": BACKBONE, "size": args.size, "k": args.k,
                                  "held_out_pairs": HELD_OUT_PAIRS.tolist(), "auroc_by_images_per_class": result},
           args.out, *lines, hide={k: v for k, v in ((args.cache, "CACHE"), (args.suite_data, "SUITE_DATA")) if k})


if __name__ == "__main__":
    main()
