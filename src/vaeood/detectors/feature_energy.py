"""``feature_energy``: how weakly a linear classifier of the in-distribution classes claims an image.

With f̄(x) the unit-normalised pooled features of a frozen ImageNet-pretrained backbone
(:mod:`vaeood.features.backbone`) and a multinomial logistic regression z_c(x) = w_c · f̄(x) + b_c
fitted on the held-out training images and their class labels (L2 penalty, C = 10),

    S(x) = −log Σ_c exp z_c(x)                  (the free energy, Liu, Wang, Owens & Li 2020)

An image of a class the classifier was trained on lands where some z_c is large; an image of
another class lands between the classes, where every z_c is small. A linear probe on frozen
features is Kolesnikov et al.'s (2019) reading of a pretrained network; its energy is
Liu et al.'s (NeurIPS 2020) score. It needs labels: two or more classes of at least ten fit
images each (a smaller class's images are left out of the classifier).

Why: the distance to the nearest images (``feature_knn``) does not know which directions of
the features tell the classes apart, and a new class of photos differs from the training
classes in those directions. On in-distribution images alone (two of ten classes left out of
the fit as the unknown ones, five disjoint pairs; docs/findings.md) the energy gave
+0.04 AUROC over ``feature_knn`` on CIFAR-10 and Tiny ImageNet 64, and both together more.
Alone it is not enough: an image far from every training image (uniform noise) need not have
a small z_c for every class, so the default detector reads it beside ``feature_knn``
(:mod:`vaeood.detectors.fused_content`). C = 10 was chosen on those in-distribution splits
(C = 100 and 1,000 gave less on CIFAR-10 and Tiny ImageNet 64); nothing was tuned on an OOD set.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression

from ..training.config import ConfigError
from .base import DETECTORS
from .feature_base import FeatureDetector
from .feature_knn import unit_rows
from .fused import fold_splits

#: the one-sided binomial p-value below which the classifier's out-of-fold accuracy counts as above
#: chance (:meth:`FeatureEnergy.chance_level`)
ABOVE_CHANCE_P = 1e-3

#: images a class needs among the fit images to be one of the classifier's classes (fewer: its images
#: are left out of the classifier's fit; a class of so few could vanish from a fold of ``fused``)
MIN_PER_CLASS = 10


def classifier_classes(labels) -> tuple[np.ndarray | None, str | None]:
    """The classes of ``labels`` (of the fit images) the classifier is fitted on and None, or None
    and why it cannot be fitted (:func:`too_few_classes`)."""
    if labels is None:
        return None, "the fit images carry no class labels"
    classes, counts = np.unique(np.asarray(labels), return_counts=True)
    why = too_few_classes(dict(zip(classes.tolist(), counts.tolist(), strict=True)))
    return (None, why) if why else (classes[counts >= MIN_PER_CLASS], None)


def too_few_classes(counts: dict) -> str | None:
    """Why fit images of ``{label: images}`` cannot train the classifier — unlabelled (a label
    below 0), or fewer than two classes of at least :data:`MIN_PER_CLASS` images — or None."""
    if any(c < 0 for c in counts):
        return "the fit images are unlabelled (a flat folder, or an array fitted without y)"
    kept = sum(n >= MIN_PER_CLASS for n in counts.values())
    if kept < 2:
        return (f"the fit images hold {kept} class{'es' * (kept != 1)} of at least {MIN_PER_CLASS} images "
                f"({len(counts)} in all); a classifier needs two or more")
    return None


def usable_classes(labels) -> str | None:
    """Why the classifier cannot be fitted on images with ``labels``, or None when it can."""
    return classifier_classes(labels)[1]


@DETECTORS.register("feature_energy")
class FeatureEnergy(FeatureDetector):
    name = "feature_energy"
    paper = "Liu et al. 2020 (energy-based OOD detection), a linear classifier of frozen backbone features"

    def __init__(self, *, C: float = 10.0, backbone: str | None = None, size: int | None = None):  # noqa: N803
        if isinstance(C, bool) or not isinstance(C, (int, float)) or not np.isfinite(C) or C <= 0:
            raise ConfigError(f"feature_energy: C (the inverse L2 penalty) must be a number > 0, got {C!r}")
        super().__init__(C=float(C), backbone=backbone, size=size)

    def _training_set(self, features) -> tuple[np.ndarray, np.ndarray]:
        """The unit features and labels the classifier fits on (the classes it can learn)."""
        classes, why = classifier_classes(features.get("labels"))
        if why:
            raise ConfigError(f"feature_energy: {why}")
        labels = np.asarray(features["labels"])
        rows = np.isin(labels, classes)  # the images of classes too small to learn are left out
        return unit_rows(self.rows(features)[rows]), labels[rows]

    def _model(self) -> LogisticRegression:
        # newton-cg: the same optimum as lbfgs within its tolerance, 10x faster on 1,280 features
        return LogisticRegression(C=self.options["C"], solver="newton-cg", max_iter=1000)

    def chance_level(self, features, folds: int = 5) -> str | None:
        """Why the classifier of these fit images' classes is no better than guessing, or None.

        Its out-of-fold accuracy (``folds`` folds, a fixed split) against the share of the largest
        class, the accuracy of always guessing it: a one-sided binomial test at p <
        :data:`ABOVE_CHANCE_P`. Labels that do not follow the content (folders by date, by camera)
        would add only noise to the content view: on CIFAR-10's held-out classes, shuffled labels
        took Fisher's sum with ``feature_knn`` from 0.802 to 0.699, below ``feature_knn`` alone (0.765)."""
        x, y = self._training_set(features)
        correct = 0
        for rest, held in fold_splits(len(y), folds):  # fused's split
            if len(np.unique(y[rest])) >= 2:  # a fold left with one class predicts nothing: counted wrong
                correct += int((self._model().fit(x[rest], y[rest]).predict(x[held]) == y[held]).sum())
        share = np.unique(y, return_counts=True)[1].max() / len(y)
        p = binomtest(correct, len(y), share, alternative="greater").pvalue
        if p < ABOVE_CHANCE_P:
            return None
        return (f"a classifier of the fit images' classes predicts them no better than chance (out-of-fold accuracy "
                f"{correct / len(y):.3f} against the largest class's share {share:.3f}, binomial p = {p:.2g})")

    def _fit(self, features):
        x, y = self._training_set(features)
        model = self._model().fit(x, y)
        self.weights, self.bias = model.coef_.T.copy(), model.intercept_.copy()
        if len(model.classes_) == 2:  # sklearn keeps one logit for two classes, z_1 − z_0 = w · f̄ + b: split evenly
            self.weights, self.bias = np.hstack([-self.weights, self.weights]) / 2, np.r_[-self.bias, self.bias] / 2
        left_out = len(features["labels"]) - len(y)  # the images of classes too small to learn
        return {"classes": int(len(model.classes_)), **({"images_left_out": left_out} if left_out else {})}

    def why_not(self, info):
        # where the caller knows the fit images' classes (vaeood evaluate, the ood-suite), before any feature
        counts = info.get("fit_class_counts")
        why = too_few_classes({int(c): n for c, n in counts.items()}) if counts is not None else None
        return f"needs two or more labelled classes among the fit images: {why}" if why else super().why_not(info)

    def _score(self, features):
        return -logsumexp(unit_rows(self.rows(features)) @ self.weights + self.bias, axis=1)
