"""Evaluation: score an in-distribution test set and OOD sets with a trained run,
compute the OOD metrics for every (score, OOD set) pair, and write ``metrics.json`` and
the Figure-2-style histogram."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json
from .metrics import ood_metrics, same_data_warnings
from .report import histogram_figure
from .scores import SCORES
from .scoring import score, score_meta


def evaluate(run_dir: str | Path, in_dataset: str, ood_datasets: list[str], *, split: str = "test",
             estimator: str = "elbo", estimator_options: dict | None = None, scores: tuple[str, ...] = ("nll",),
             out_dir: str | Path | None = None, data_dir: str | None = None, limit: int | None = None,
             device: str = "cpu", allow_sample: bool = False, progress: bool | None = None,
             fit: str | None = None) -> dict:
    """Return (and write to ``out_dir``, default the run directory) the metrics dict:

    ``results[score][ood_dataset] = {auroc, auprc_in, auprc_out, fpr_at_80_tpr, fpr_at_95_tpr}``
    plus per-dataset summaries (mean log p(x), bits/dim where defined, pixel statistics,
    and the fit applied, if any). ``fit`` (``"pad"``/``"resize"``) makes datasets of
    another image shape fit the model (see :func:`vaeood.scoring.score`).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir else run_dir
    per_set = {}
    for name in [in_dataset, *ood_datasets]:
        per_set[name] = score(run_dir, name, split, estimator=estimator, estimator_options=estimator_options,
                              data_dir=data_dir, limit=limit, device=device, allow_sample=allow_sample,
                              progress=progress, fit=fit)
    results = {}
    for score_name in scores:
        fn = SCORES.get(score_name)
        s_in = fn(per_set[in_dataset])
        results[score_name] = {ood: ood_metrics(s_in, fn(per_set[ood])) for ood in ood_datasets}

    meta_in = score_meta(per_set[in_dataset])
    normalised = meta_in["normalised"]
    summary = {name: _summary(s) for name, s in per_set.items()}
    key, xlabel = (("bpd", "bits/dim (lower = more likely)") if normalised
                   else ("log_px_nats", f"{estimator} log p(x) [nats] (not normalised: {meta_in['likelihood']})"))
    figure = histogram_figure(out_dir / f"histogram_{estimator}.png",
                              {_label(name, summary[name]): per_set[name][key] for name in per_set}, xlabel,
                              f"{meta_in['likelihood']} VAE trained on {in_dataset}")
    out = {
        "run_dir": str(run_dir),
        "estimator": estimator,
        "estimator_options": meta_in["options"],
        "split": split,
        "fit": fit,
        "fitted": {name: s["fit"]["description"] for name, s in summary.items() if s.get("fit")},
        "likelihood": meta_in["likelihood"],
        "normalised": normalised,
        "in_distribution": in_dataset,
        "ood": list(ood_datasets),
        "positive_class": "ood",
        "score_direction": "higher = more out-of-distribution",
        "results": results,
        "warnings": same_data_warnings(in_dataset, ood_datasets, {n: score_meta(s) for n, s in per_set.items()}),
        "datasets": summary,
        "histogram": figure.name,
    }
    atomic_write_json(out_dir / "metrics.json", out)
    return out


def _label(name: str, summary: dict) -> str:
    """A dataset's legend entry, naming the fit when its images were padded or resized."""
    return f"{name}, {summary['fit']['description']}" if summary.get("fit") else name


def _summary(s: dict[str, np.ndarray]) -> dict:
    meta = score_meta(s)
    out = {"n": int(len(s["log_px_nats"])), "source": meta["source"], "is_sample": meta["is_sample"],
           "mean_log_px_nats": float(np.mean(s["log_px_nats"])),
           "pixel_mean": meta["pixel_mean"], "pixel_var": meta["pixel_var"], "fit": meta.get("fit")}
    if "bpd" in s:
        out["mean_bpd"] = float(np.mean(s["bpd"]))
    for diag in ("gap_nats", "ess_fraction"):
        if diag in s:
            out[f"mean_{diag}"] = float(np.mean(s[diag]))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
