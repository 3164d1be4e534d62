"""The content view's detectors on the held-out-classes proxy (in-distribution images only):
``feature_knn``, ``feature_energy`` (at several C), and the two together as ``fused_content``'s
content view combines them (Fisher's sum of their out-of-fold p-values; ``fused`` with these two
components scores exactly that) or by the smaller p-value.

For each of the five held-out pairs of classes (``backbone_compare.HELD_OUT_PAIRS``), the
detectors fit on the first m images of each of the other eight classes, with their labels, and
the pair's test images are the OOD ones; the AUROC is the mean over the five pairs. m is the
ood-suite quick preset's fit slice a class: 200 for the one-class sets (its 2,000 fit images of
ten classes), 50 for Tiny ImageNet 64 (``--suite-data``, its 500). Test images as in
``backbone_compare.py``. The difference from ``feature_knn`` comes with a paired bootstrap over
the test images (the fit images held fixed). No OOD set is read.

    VAEOOD_DATA=/path/to/data python benchmarks/content_view_proxy.py --cache CACHE \
        --suite-data OUT/runs/data
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from backbone_compare import HELD_OUT_PAIRS, bootstrap, features, one_class_images, tinyimagenet_held_out
from backbone_size import FIT, SETS
from common import finish, machine_info, parser, real_data_and_cache

BACKBONE = "efficientnet_lite0"
CONTENT = ["feature_knn", "feature_energy"]


def pair_scores(ref: np.ndarray, labels: np.ndarray, test: np.ndarray, cs: list[float]) -> dict[str, np.ndarray]:
    """Every rule's scores of ``test`` after fitting on ``ref`` with ``labels``."""
    from vaeood.detectors import make_detector

    fit, probe = {"backbone_features": ref, "labels": labels}, {"backbone_features": test}
    both = make_detector("fused", {"components": CONTENT}).fit(fit)
    log_p = both.component_log_p(probe)
    out = {"feature_knn": -log_p["feature_knn"], "fisher": both.score(probe),
           "min_p": np.maximum(-log_p["feature_knn"], -log_p["feature_energy"])}
    for c in cs:
        out[f"feature_energy C={c:g}"] = make_detector("feature_energy", {"C": c}).fit(fit).score(probe)
    return out


def held_out(ref_per_class: list[np.ndarray], test: np.ndarray, test_labels: np.ndarray, m: int, cs, resamples: int,
             rng) -> tuple[dict, dict]:
    """{rule: [AUROC per pair]} and {rule: bootstrap of its mean AUROC less feature_knn's}."""
    scores = []
    for pair in HELD_OUT_PAIRS:
        keep = [c for c in range(10) if c not in pair]
        ref = np.vstack([ref_per_class[c][:m] for c in keep])
        labels = np.concatenate([np.full(len(ref_per_class[c][:m]), c) for c in keep])
        scores.append(pair_scores(ref, labels, test, cs))
    ood = [np.isin(test_labels, pair) for pair in HELD_OUT_PAIRS]

    def mean(rule, rows):
        return np.mean([roc_auc_score(o[rows], s[rule][rows]) for o, s in zip(ood, scores, strict=True)])
    auroc = {rule: [float(roc_auc_score(o, s[rule])) for o, s in zip(ood, scores, strict=True)] for rule in scores[0]}
    diffs = {rule: bootstrap(lambda r, rule=rule: mean(rule, r) - mean("feature_knn", r), len(test), resamples, rng)
             for rule in scores[0] if rule != "feature_knn"}
    return auroc, diffs


def main() -> None:
    args = parser(__doc__, size=160, threads=2, bootstrap=(200, "paired bootstrap resamples of the test images"),
                  cache=(None, "folder to keep features in between runs"), sets=(list(SETS), "one-class sets"),
                  per_class=(200, "fit images a class (Tiny ImageNet: a quarter of it)"),
                  c=([10.0, 100.0, 1000.0], "feature_energy's C values to measure alone"),
                  suite_data=("", "an ood-suite run's OUT/runs/data, for Tiny ImageNet 64")).parse_args()
    data, cache = real_data_and_cache(args, "cifar10_train.npz, fashion_mnist_*.npz and mnist_*.npz")
    rng, seconds, result, diffs = np.random.default_rng(0), {}, {}, {}
    sizes = {}
    for name in args.sets:
        x, y, tx, ty = one_class_images(data, name)
        m = min(args.per_class, FIT)  # the first m of backbone_compare's fit images of each class
        per_class = [features(BACKBONE, args.size, x[np.flatnonzero(y == c)[:m]], cache, f"{name}/fit{c}_first{m}",
                              seconds) for c in range(10)]
        test = features(BACKBONE, args.size, tx, cache, f"{name}/test", seconds)
        sizes[name] = m
        result[name], diffs[name] = held_out(per_class, test, ty, m, args.c, args.bootstrap, rng)
    if args.suite_data:
        ref, y, test, ty = tinyimagenet_held_out(args, BACKBONE, cache, seconds)
        sizes["tinyimagenet64"] = args.per_class // 4
        result["tinyimagenet64"], diffs["tinyimagenet64"] = held_out(
            [ref[y == c] for c in range(10)], test, ty, args.per_class // 4, args.c, args.bootstrap, rng)
    lines = ["", f"held-out classes, {BACKBONE} at {args.size} px: mean AUROC over the five pairs; minus "
                 f"feature_knn, paired bootstrap ({args.bootstrap} resamples)"]
    for name, rows in result.items():
        lines.append(f"  {name} ({sizes[name]} fit images a class):")
        for rule, a in rows.items():
            d = diffs[name].get(rule)
            lines.append(f"    {rule}: {np.mean(a):.3f}"
                         + (f"  ({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])" if d else ""))
    finish("content_view_proxy", {"machine": machine_info("cpu"), "backbone": BACKBONE, "size": args.size,
                                  "held_out_pairs": HELD_OUT_PAIRS.tolist(), "fit_images_per_class": sizes,
                                  "auroc": result, "minus_feature_knn": diffs},
           args.out, *lines, hide={k: v for k, v in ((args.cache, "CACHE"), (args.suite_data, "SUITE_DATA")) if k})


if __name__ == "__main__":
    main()
