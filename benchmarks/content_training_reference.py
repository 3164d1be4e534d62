"""Would fitting the content view on the images the VAE trained on close CIFAR-10 → Tiny
ImageNet? ``fused_content``'s content view (``feature_knn`` and ``feature_energy``, Fisher's sum
of their out-of-fold p-values, as ``fused`` with these two components scores it) fitted on the
ood-suite quick's fit slice of CIFAR-10 (train[10000:12000], 200 images a class) or on that
slice and the 10,000 images the suite's VAEs train on (train[0:12000]), scored on the suite's
pair: the first 1,000 CIFAR-10 test images against the first 1,000 Tiny ImageNet test images (the
suite takes as many images of every set of a family as of its test set).

This reads an OOD set: it measures how far a larger reference could go, and chooses nothing.
The difference comes with a paired bootstrap over the test images (the fit images held fixed).

    VAEOOD_DATA=/path/to/data python benchmarks/content_training_reference.py --cache CACHE
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from backbone_compare import bootstrap, features
from common import finish, load_images, machine_info, parser, real_data_and_cache

BACKBONE = "efficientnet_lite0"
FITS = {"fit slice (2,000)": (10000, 12000), "fit slice and training images (12,000)": (0, 12000)}


def content_scores(fit: np.ndarray, labels: np.ndarray, probe: np.ndarray) -> dict[str, np.ndarray]:
    from vaeood.detectors import make_detector

    fit, probe = {"backbone_features": fit, "labels": labels}, {"backbone_features": probe}
    rules = {"feature_knn": ("feature_knn", {}), "feature_energy": ("feature_energy", {}),
             "content view (Fisher)": ("fused", {"components": ["feature_knn", "feature_energy"]})}
    return {rule: make_detector(name, options).fit(fit).score(probe) for rule, (name, options) in rules.items()}


def main() -> None:
    args = parser(__doc__, size=160, threads=2, bootstrap=(200, "paired bootstrap resamples of the test images"),
                  cache=(None, "folder to keep features in between runs")).parse_args()
    _, cache = real_data_and_cache(args, "cifar10_train.npz, cifar10_test*.npz and tinyimagenet_test.npz")
    seconds, rng = {}, np.random.default_rng(0)
    train = load_images("cifar10", "train")[1]  # the datasets' N×H×W×C images, as the backbone reads them
    test, ood = load_images("cifar10", "test")[1].images[:1000], load_images("tinyimagenet", "test")[1].images[:1000]
    labels = np.asarray(train.labels[:12000])
    f_train = features(BACKBONE, args.size, train.images[:12000], cache, "cifar10/train0-12000", seconds)
    probe = np.vstack([features(BACKBONE, args.size, x, cache, key, seconds)
                       for x, key in ((test, "cifar10/test0-1000"), (ood, "tinyimagenet/test0-1000"))])
    truth = np.r_[np.zeros(len(test)), np.ones(len(ood))]
    scores = {name: content_scores(f_train[a:b], labels[a:b], probe) for name, (a, b) in FITS.items()}
    small, large = scores.values()
    auroc = {name: {rule: float(roc_auc_score(truth, s)) for rule, s in rows.items()} for name, rows in scores.items()}
    gain = {rule: bootstrap(lambda r, rule=rule: roc_auc_score(truth[r], large[rule][r])
                            - roc_auc_score(truth[r], small[rule][r]), len(truth), args.bootstrap, rng)
            for rule in small}
    lines = ["", f"CIFAR-10 → Tiny ImageNet (1,000 against 1,000 test images), {BACKBONE} at {args.size} px:"]
    for rule in small:
        d = gain[rule]
        lines.append(f"  {rule}: " + ", ".join(f"{name} {auroc[name][rule]:.3f}" for name in FITS)
                     + f"  (gain {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])")
    finish("content_training_reference", {"machine": machine_info("cpu"), "backbone": BACKBONE, "size": args.size,
                                          "fits": {k: list(v) for k, v in FITS.items()}, "auroc": auroc,
                                          "gain": gain, "seconds": seconds},
           args.out, *lines, hide={args.cache: "CACHE"} if args.cache else None)


if __name__ == "__main__":
    main()
