"""Pieces every experiment shares: the registry, the progress bar over runs, the
environment stamp written into each report, evaluation with the detectors asked for, and
the AUROC summaries over seeds with their intervals and verdict words."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import numpy as np
import torch

from .._reproducible import cpu_description, mkl_mode
from .._version import __version__
from ..training.config import ConfigError
from ..evaluation.evaluate import evaluate
from ..evaluation.intervals import N_BOOT, seed_summary
from ..detectors import make_detector
from ..infra.jsonable import strict_json  # noqa: F401 (the experiments take it from here)
from ..infra.atomic import atomic_write
from ..infra.progress import bar
from ..infra.registry import Registry
from ..evaluation.log_px import log_px

EXPERIMENTS = Registry("experiment")


def runs_bar(total: int, desc: str, progress: bool | None):
    """The progress bar over an experiment's runs (each trained or reused, then scored);
    ``update()`` it after each run, ``set_postfix_str`` it with the run's name."""
    return bar(total=total, desc=desc, enabled=progress, unit="run")


def machine_words(environment: dict) -> str:
    """``", 2 threads on <CPU> (<family, model, SIMD>)"`` for a report's first line (without the
    CPU for stamps made before it was recorded)."""
    details = f" ({environment['cpu_details']})" if environment.get("cpu_details") else ""
    cpu = f" on {environment['cpu']}{details}" if environment.get("cpu") else ""
    return f", {environment['threads']} threads{cpu}"


def stamp(device: str) -> dict:
    """When and with what a result was made."""
    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": {"vaeood": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "device": device, "threads": torch.get_num_threads(),
                            **{k: v for k, v in cpu_description().items() if k != "physical_cores"},
                            "mkl_cbwr": mkl_mode()}}


#: what the likelihood experiments (fig2, capacity, forward-kl) score with unless asked: −log p(x)
LIKELIHOOD_DETECTORS = ("nll",)


def run_evaluate(run_dir: Path, in_dataset: str, ood_datasets: list[str], *,
                 detectors: tuple[str, ...] = LIKELIHOOD_DETECTORS, **kwargs) -> dict:
    """:func:`vaeood.evaluation.evaluate.evaluate` with the detectors asked for."""
    return evaluate(run_dir, in_dataset, list(ood_datasets), detectors=tuple(detectors), **kwargs)


def per_image_scores(run_dir: Path, dataset: str, detector: str, **score_kwargs) -> np.ndarray:
    """One detector's per-image OOD scores (higher = more OOD) of ``dataset``, from the
    per-image estimates that :func:`vaeood.evaluation.log_px.log_px` saved in the run (the same
    call evaluate made, so nothing is recomputed); the bootstrap intervals resample them."""
    return estimate_scores(detector, log_px(run_dir, dataset, **score_kwargs), score_kwargs.get("estimator", "elbo"),
                           score_kwargs.get("estimator_options"))


def estimate_scores(detector: str, estimates: dict, estimator: str = "elbo",
                    estimator_options: dict | None = None) -> np.ndarray:
    """Scores of a detector that reads only the log p(x) estimates and fits nothing
    (``nll``, ``bpd``), from estimates already computed."""
    det = make_detector(detector, {"estimator": estimator, "estimator_options": dict(estimator_options or {})})
    if det.fits or set(det.needs) != {"log_px"}:
        raise ConfigError(f"detector {detector!r} needs fitting or features beyond log p(x); the likelihood "
                          "experiments take nll or bpd (the ood-suite runs every detector)")
    return det.score(estimates)


def auroc_summary(pairs: list[tuple[np.ndarray, np.ndarray]], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Mean ± sd over seeds, each seed's image-bootstrap interval and the two-level
    interval with its verdict word (:func:`vaeood.evaluation.intervals.seed_summary`)."""
    s = seed_summary(pairs, n_boot=n_boot, seed=seed)
    return {**s.as_dict(), "text": s.text()}


INTERVAL_METHOD = ("95% percentile interval of the seed-mean AUROC by a two-level bootstrap: each replicate "
                   "draws the training seeds with replacement and one stratified resample of the test images "
                   "(in-distribution and OOD resampled separately, shared by the seeds, which score the same "
                   "images); each seed's own interval resamples the test images only")
VERDICT_RULE = ("separates: the interval lies above AUROC 0.5 (the OOD set gets lower likelihood); inverted: "
                "below 0.5 (the OOD set gets *higher* likelihood); indistinguishable: it covers 0.5")


def report_header(title: str, out: dict, samples: list[str]) -> list[str]:
    """Title, the command that made the report and, when the bundled sample stood in for
    missing data, a warning that says which sets it replaced."""
    lines = [f"# {title}", "",
             f"Made by `{out['command'] or 'vaeood reproduce ' + out['experiment']}` "
             f"(preset `{out['preset']}`) on {out['created']}; vaeood {out['environment']['vaeood']}, "
             f"torch {out['environment']['torch']}, device {out['environment']['device']}"
             f"{machine_words(out['environment'])}.", ""]
    if samples:
        lines += ["> **No dataset was found, so this ran on the small sample bundled with vaeood:** "
                  + "; ".join(sorted(set(samples))) + ". Point `--data-dir` or `VAEOOD_DATA` at the real data "
                  "for real numbers.", ""]
    return lines


def sample_sources(evaluations: list[dict], trainings: list[dict]) -> list[str]:
    """Descriptions of every data set in these results that was the bundled sample."""
    return [f"{name} ({d['source']})" for r in evaluations for name, d in r["datasets"].items() if d["is_sample"]] + \
        [f"{t['train_data']['name']} training set ({t['train_data']['source']})"
         for t in trainings if t["train_data"]["is_sample"]]


def write_image_set(path: Path, x: np.ndarray, provenance: str, labels: np.ndarray | None = None) -> None:
    """Write images an experiment makes (generated OOD sets, one class of a dataset) as a
    dataset file ``NAME_SPLIT.npz`` (:mod:`vaeood.data.npz`), unless it holds these images and
    labels already (so a rerun leaves the file, and what was computed from it, as it was).
    ``provenance`` says what the images are: names and digests, never a path of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.zeros(len(x), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            if f["x"].shape == x.shape and np.array_equal(f["x"], x) and np.array_equal(f["y"], y):
                return
    atomic_write(path, lambda f: np.savez(f, x=x, y=y, provenance=provenance))

