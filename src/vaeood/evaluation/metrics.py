"""Threshold-free OOD detection metrics, with OOD as the positive class and scores where
higher = more out-of-distribution (computed with scikit-learn).

- AUROC: P(score of a random OOD image > score of a random in-distribution image),
  ties counting one half (Hendrycks & Gimpel 2017).
- AUPRC-out: average precision with OOD positive; AUPRC-in: with in-distribution
  positive and the score negated.
- FPR@t%TPR: the fraction of in-distribution images flagged as OOD at the smallest
  threshold that flags at least t% of the OOD images.
"""

from __future__ import annotations

import logging

import numpy as np

from .intervals import bootstrap_auroc

log = logging.getLogger(__name__)

METRIC_NAMES = ("auroc", "auprc_in", "auprc_out", "fpr_at_80_tpr", "fpr_at_95_tpr")


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float) -> float:
    """FPR at the first ROC point whose TPR reaches ``tpr_level`` (labels: 1 = OOD)."""
    from sklearn.metrics import roc_curve  # imported on use: sklearn takes ~1 s to import

    # keep every threshold: dropping collinear points could skip the first one reaching the level
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, tpr_level, side="left")])


def ood_metrics(scores_in: np.ndarray, scores_ood: np.ndarray) -> dict[str, float]:
    """All metrics for one (in-distribution, OOD) pair of score arrays."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores_in = np.asarray(scores_in, dtype=np.float64)
    scores_ood = np.asarray(scores_ood, dtype=np.float64)
    for name, s in (("in-distribution", scores_in), ("OOD", scores_ood)):
        if s.ndim != 1 or len(s) == 0:
            raise ValueError(f"{name} scores must be a non-empty 1-D array, got shape {s.shape}")
        if not np.isfinite(s).all():
            raise ValueError(f"{name} scores contain {np.count_nonzero(~np.isfinite(s))} NaN/inf values")
    labels = np.concatenate([np.zeros(len(scores_in)), np.ones(len(scores_ood))])
    scores = np.concatenate([scores_in, scores_ood])
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "auprc_in": float(average_precision_score(1 - labels, -scores)),
        "auprc_out": float(average_precision_score(labels, scores)),
        "fpr_at_80_tpr": fpr_at_tpr(labels, scores, 0.80),
        "fpr_at_95_tpr": fpr_at_tpr(labels, scores, 0.95),
    }


def same_data_warnings(in_name: str, ood_names: list[str], metas: dict[str, dict]) -> list[str]:
    """Warn (log, and return the messages) for each OOD set that is the in-distribution
    set itself: the same name, or the same data (``metas``: each set's scores metadata;
    compared by ``data_sha256`` where recorded, else by file and split). Its AUROC is
    about 0.5 by construction and says nothing about detecting OOD images."""
    def identity(meta: dict):
        return meta.get("data_sha256") or (meta.get("source"), meta.get("split"))

    out = [f"the OOD set {ood!r} is the in-distribution set {in_name!r} itself "
           f"({'same name' if ood == in_name else 'same data'}): its metrics compare a set with itself "
           "(AUROC about 0.5 by construction) and say nothing about detecting OOD images"
           for ood in ood_names if ood == in_name or identity(metas[ood]) == identity(metas[in_name])]
    for message in out:
        log.warning(message)
    return out


#: with fewer images than this in either set, an AUROC comes with its bootstrap interval and a warning
SMALL_SET = 30


def small_set_interval(metrics: dict, s_in, s_out, label: str) -> str | None:
    """When either set has fewer than :data:`SMALL_SET` images, add the AUROC's 95%
    stratified-bootstrap interval to ``metrics`` (``auroc_interval_95``) and return (and
    log) a warning saying what the point value rests on; else None."""
    n_in, n_out = len(s_in), len(s_out)
    if min(n_in, n_out) >= SMALL_SET:
        return None
    lo, hi = bootstrap_auroc(np.asarray(s_in, dtype=np.float64), np.asarray(s_out, dtype=np.float64))
    metrics["auroc_interval_95"] = [lo, hi]
    message = (f"{label}: the AUROC {metrics['auroc']:.3f} rests on {n_in} in-distribution and {n_out} OOD images "
               f"(fewer than {SMALL_SET} in a set); its 95% bootstrap interval is [{lo:.3f}, {hi:.3f}]")
    log.warning(message)
    return message
