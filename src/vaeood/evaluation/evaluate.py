"""Evaluation: detectors on an in-distribution test set and OOD sets.

For every detector asked for (default ``("nll",)`` in Python; the command line's default
is every detector that applies): compute the features it needs (cached in
``RUN/features/``), fit it on a held-out slice of the *training* split where it fits, score
every set, and compute the OOD metrics of every (detector, OOD set) pair. Writes
``metrics.json``, the per-image detector scores (``detector_scores/NAME.npz``, one array
per dataset, for ROC curves) and the Figure-2-style histogram of log p(x).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..infra.atomic import atomic_write, atomic_write_json
from ..training.config import ConfigError
from ..data.load import load_for_run
from .companions import check_companions
from ..detectors import (DETECTORS, Detector, FitDataError, batch_test_power, detector_names, make_detector,
                        per_detector_options)
from ..features import compute_features, needs_features
from ..inference.estimators import is_hierarchical
from ..training.run import load_model
from .fitdata import check_fit_slice, class_counts, heldout_slice, run_config
from .kept_fit import KeptFit, score_args
from .metrics import ood_metrics, same_data_warnings, small_set_interval
from ..infra.jsonable import strict_json
from ..infra.deprecated import deprecated_alias, renamed_keywords
from ..infra.progress import bar
from .report import histogram_figure
from .log_px import log_px, log_px_meta

log = logging.getLogger(__name__)

SCORES_DIR = "detector_scores"


def build_detectors(names: str | Iterable[str] | None, detector_options: Mapping | None = None, *,
                    estimator: str = "elbo", estimator_options: dict | None = None) -> dict[str, Detector]:
    """Detectors by name (``"all"`` or None: every registered one, to be filtered by what
    applies), with ``detector_options[name]`` and evaluate's estimator as the default of
    detectors that take one."""
    if names is None or names == "all":
        chosen = DETECTORS.names()
    else:
        chosen = detector_names(names)
    detector_options = per_detector_options(detector_options)
    unknown = [k for k in detector_options if k not in chosen]
    if unknown:
        raise ConfigError(f"options given for detector {unknown[0]!r}, which is not among the detectors asked for "
                          f"({', '.join(chosen)})")
    out = {}
    for name in chosen:
        cls = DETECTORS.get(name)
        accepted = inspect.signature(cls.__init__).parameters
        defaults = {}
        if "estimator" in accepted:
            defaults = {"estimator": estimator, "estimator_options": dict(estimator_options or {})}
        out[name] = make_detector(name, {**defaults, **(detector_options.get(name) or {})})
    return out


@renamed_keywords(fit="conform", fit_limit="n_fit")  # their names until 0.2
def evaluate(run_dir: str | Path, in_dataset: str, ood_datasets: list[str], *, split: str = "test",
             detectors: str | Iterable[str] | None = ("nll",), detector_options: Mapping | None = None,
             estimator: str = "elbo", estimator_options: dict | None = None, out_dir: str | Path | None = None,
             data_dir: str | None = None, limit: int | None = None, n_fit: int | None = None,
             device: str = "cpu", seed: int = 0, allow_sample: bool = False, progress: bool | None = None,
             conform: str | None = None, data_dirs: Mapping[str, str] | None = None, shared_cache=None,
             skip_bad: bool = False, keep_fits: dict | None = None, skip_inapplicable: bool = False) -> dict:
    """The metrics dict, also written to ``out_dir`` (default: the run directory):
    ``results[detector][ood] = {auroc, auprc_in, auprc_out, fpr_at_80_tpr, fpr_at_95_tpr}``,
    ``detectors`` (options, features, paper, fit, seconds), ``detector_scores`` (files),
    ``fit_data`` (the held-out training slice fitted on), ``skipped`` (with reasons),
    ``typicality_batch_test`` and per-dataset summaries. ``detectors``: names, or ``"all"``/None for
    every one that applies without extra runs; ``conform`` (``"pad"``/``"resize"``) makes other image
    shapes fit; ``skip_bad`` skips a folder's unusable files; ``limit``: the first N test images;
    ``n_fit``: held-out training images to fit on (default ≤ 5,000); ``data_dirs``: ``{dataset: folder}``;
    ``shared_cache``: a folder shared by runs; ``keep_fits``: a dict given ``name →`` :class:`KeptFit`;
    ``skip_inapplicable``: a named detector that does not apply is skipped (with its reason), as for "all"."""
    run_dir = Path(run_dir)
    data_dirs, out_dir = dict(data_dirs or {}), Path(out_dir) if out_dir else run_dir
    explicit = not (detectors is None or detectors == "all" or skip_inapplicable)
    dets = build_detectors(detectors, detector_options, estimator=estimator, estimator_options=estimator_options)
    companion_notes = check_companions(run_dir, dets)  # before any score: a mismatched companion is refused
    per_set = {}
    for name in [in_dataset, *ood_datasets]:
        per_set[name] = log_px(run_dir, name, split, estimator=estimator, estimator_options=estimator_options,
                               data_dir=data_dirs.get(name, data_dir), limit=limit, device=device, seed=seed,
                               allow_sample=allow_sample, progress=progress, conform=conform, skip_bad=skip_bad)
    meta_in = log_px_meta(per_set[in_dataset])

    fit_slice, fit_error = _fit_slice(run_dir, dets, n_fit, data_dir)
    info = {"normalised": meta_in["normalised"], "has_fit_data": fit_slice is not None, "hierarchical": is_hierarchical(
        load_model(run_dir)[0]), "fit_class_counts": class_counts(run_dir, fit_slice) if fit_slice else None}
    skipped = _drop_inapplicable(dets, info, explicit, fit_slice, fit_error, run_dir)
    common = dict(limit=limit, device=device, seed=seed, conform=conform, allow_sample=allow_sample, skip_bad=skip_bad,
                  progress=progress, shared_cache=shared_cache)
    runner = _DetectorRunner(run_dir, in_dataset, ood_datasets, split, data_dir, data_dirs, fit_slice, out_dir,
                             common, keep_fits)
    runner.run_all(dets, progress)

    summary = {name: _summary(s) for name, s in per_set.items()}
    figure = _histogram(out_dir, estimator, in_dataset, per_set, summary, meta_in)
    out = {
        "run_dir": str(run_dir), "estimator": estimator, "estimator_options": meta_in["options"], "split": split,
        "conform": conform,
        "fitted": {name: s["conform"]["description"] for name, s in summary.items() if s.get("conform")},
        "likelihood": meta_in["likelihood"], "normalised": meta_in["normalised"], "in_distribution": in_dataset,
        "ood": list(ood_datasets), "positive_class": "ood", "score_direction": "higher = more out-of-distribution",
        "results": runner.results,
        "warnings": same_data_warnings(in_dataset, ood_datasets,
                                       {n: log_px_meta(s) for n, s in per_set.items()}) + runner.small_sets
        + companion_notes,
        "detectors": runner.det_info, "detector_scores": runner.score_files, "skipped": skipped,
        "fit_data": ({k: v for k, v in fit_slice.items() if k not in ("data_dir",)} if fit_slice and any(
            d.fits for d in dets.values()) else None),
        "datasets": summary, "histogram": figure.name,
    }
    if runner.batch_tests:
        out["typicality_batch_test"] = runner.batch_tests
    atomic_write_json(out_dir / "metrics.json", out)
    return out


def _fit_slice(run_dir: Path, dets: dict, n_fit: int | None, data_dir: str | None):
    """The held-out training slice detectors that fit are fitted on (None when none fits),
    and the error that kept it from being found (None if none)."""
    fit_slice, fit_error = None, None
    if any(d.fits for d in dets.values()):
        try:
            fit_slice = heldout_slice(run_dir, n=n_fit, data_dir=data_dir)
        except FitDataError as exc:
            fit_error = exc
    return fit_slice, fit_error


def _drop_inapplicable(dets: dict, info: dict, explicit: bool, fit_slice, fit_error, run_dir: Path) -> dict:
    """Remove from ``dets`` the detectors that do not apply to the run (``info``); return
    ``{name: reason}``. A detector asked for by name that does not apply is an error."""
    skipped = {}
    for name, det in list(dets.items()):
        reason = det.why_not(info)
        if reason is None:
            continue
        if explicit:
            if det.fits and fit_error is not None and fit_slice is None:
                raise fit_error
            raise ConfigError(f"detector {name!r} does not apply to {run_dir}: {reason}")
        skipped[name] = reason
        del dets[name]
    if skipped:
        log.debug("detectors that do not apply: %s", "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return skipped


class _DetectorRunner:
    """Fits and scores one detector after another for :func:`evaluate`, writing each one's
    score file and collecting its metrics, warnings, batch tests and timings."""

    def __init__(self, run_dir: Path, in_dataset: str, ood_datasets: list[str], split: str, data_dir, data_dirs,
                 fit_slice, out_dir: Path, common: dict, fits: dict | None = None):
        self.run_dir, self.in_dataset, self.ood_datasets, self.split = run_dir, in_dataset, ood_datasets, split
        self.data_dir, self.data_dirs, self.fit_slice, self.out_dir = data_dir, data_dirs, fit_slice, out_dir
        self.common = common
        self.results, self.det_info, self.score_files, self.batch_tests, self.small_sets = {}, {}, {}, {}, []
        self.fits = fits  # name → KeptFit (the fit and the sets' scores) when the caller keeps them, else None

    def run_all(self, dets: dict, progress: bool | None) -> None:
        """Run every detector of ``dets`` (name → detector), with a bar over them."""
        with bar(total=len(dets), desc="detectors", enabled=progress, unit="detector") as shown:
            for name, det in dets.items():
                shown.set_postfix_str(name)
                self.run(name, det)
                shown.update()

    def run(self, name: str, det: Detector) -> None:
        started = time.perf_counter()
        feature_seconds = {}
        fit_features, fit_seconds, fit_scores = self.fit(det, feature_seconds) if det.fits else (None, 0.0, None)
        set_scores, score_seconds, nll_by_set = self.score_sets(name, det, feature_seconds)
        if det.fits and self.fits is not None:
            self.fits[name] = self.kept(name, det, set_scores)
        ins, oods = self.in_dataset, self.ood_datasets
        self.results[name] = {ood: ood_metrics(set_scores[ins], set_scores[ood]) for ood in oods}
        self.small_sets += [w for ood in oods if (w := small_set_interval(
            self.results[name][ood], set_scores[ins], set_scores[ood], f"{name} on {ood}"))]
        if name == "typicality":
            self.batch_tests = {ood: batch_test_power(-fit_features["log_px_nats"], nll_by_set[ins],
                                                      nll_by_set[ood], seed=self.common["seed"]) for ood in oods}
        arrays = {k: v for k, v in set_scores.items()}
        if fit_scores is not None:
            arrays["_fit"] = fit_scores
        path = self.out_dir / SCORES_DIR / f"{name}.npz"
        atomic_write(path, lambda f: np.savez(f, **arrays))
        self.score_files[name] = f"{SCORES_DIR}/{name}.npz"
        self.det_info[name] = {
            "options": strict_json(det.options), "needs": strict_json(det.needs), "paper": det.paper,
            "fits": det.fits, "fit": det.fit_info if det.fits else None,
            "seconds": {"features": feature_seconds, "features_total": sum(feature_seconds.values()),
                        "fit": fit_seconds, "score": score_seconds,
                        "wall_this_call": time.perf_counter() - started}}

    def fit(self, det: Detector, feature_seconds: dict):
        """Fit ``det`` on the held-out slice; its features, fitting seconds and scores of the fit images."""
        fs = self.fit_slice
        for other in [self.run_dir, *(o["run"] for o in det.needs.values() if isinstance(o.get("run"), (str, Path)))]:
            # held out for every model whose features the detector fits on
            check_fit_slice(other, fs["dataset"], fs["split"], fs["start"], fs["stop"], split_size=fs["split_size"])
        fit_features = compute_features(self.run_dir, fs["dataset"], fs["split"], det.needs,
                                        data_dir=fs["data_dir"], start=fs["start"], stop=fs["stop"],
                                        device=self.common["device"], seed=self.common["seed"],
                                        allow_sample=fs["allow_sample"], progress=self.common["progress"],
                                        shared_cache=self.common["shared_cache"])
        _add_seconds(feature_seconds, fit_features["meta"])
        t0 = time.perf_counter()
        det.fit(fit_features)
        fit_seconds = time.perf_counter() - t0
        return fit_features, fit_seconds, det.score(fit_features)

    def kept(self, name: str, det: Detector, set_scores: dict) -> KeptFit:
        """``det``, fitted on the held-out slice, and its scores of the sets, for the decisions."""
        fs, c = self.fit_slice, self.common
        folders = {s: self.data_dirs.get(s, self.data_dir) for s in set_scores}
        return KeptFit(name, det, fs["dataset"], fs["split"], fs["start"], fs["stop"], c["seed"], dict(set_scores),
                       score_args(split=self.split, limit=c["limit"], conform=c["conform"],
                                  allow_sample=c["allow_sample"], skip_bad=c["skip_bad"], seed=c["seed"],
                                  folders=folders))

    def score_sets(self, name: str, det: Detector, feature_seconds: dict):
        """``det``'s scores of each test set, the seconds scoring took, and (typicality) the sets' NLLs."""
        set_scores, score_seconds, nll_by_set = {}, 0.0, {}
        for set_name in [self.in_dataset, *self.ood_datasets]:
            where = self.data_dirs.get(set_name, self.data_dir)
            feats = compute_features(self.run_dir, set_name, self.split, det.needs, data_dir=where, **self.common)
            _add_seconds(feature_seconds, feats["meta"])
            t0 = time.perf_counter()
            set_scores[set_name] = det.score(feats)
            score_seconds += time.perf_counter() - t0
            if name == "typicality":
                nll_by_set[set_name] = -feats["log_px_nats"]
        return set_scores, score_seconds, nll_by_set


def _histogram(out_dir: Path, estimator: str, in_dataset: str, per_set: dict, summary: dict, meta_in: dict) -> Path:
    """The histogram of log p(x) (bits/dim when normalised) of every set, written; its path."""
    key, xlabel = (("bpd", "bits/dim (lower = more likely)") if meta_in["normalised"]
                   else ("log_px_nats", f"{estimator} log p(x) [nats] (not normalised: {meta_in['likelihood']})"))
    return histogram_figure(out_dir / f"histogram_{estimator}.png",
                            {_label(name, summary[name]): per_set[name][key] for name in per_set}, xlabel,
                            f"{meta_in['likelihood']} VAE trained on {in_dataset}")


def _add_seconds(acc: dict, metas: Mapping) -> None:
    for key, meta in metas.items():
        label = f"{key}:{meta.get('dataset')}/{meta.get('split')}[{meta.get('start')}:{meta.get('stop')}]"
        acc[label] = float(meta.get("seconds") or 0.0)


def _label(name: str, summary: dict) -> str:
    """A dataset's legend entry, naming the conform when its images were padded or resized."""
    return f"{name}, {summary['conform']['description']}" if summary.get("conform") else name


def _summary(s: dict[str, np.ndarray]) -> dict:
    meta = log_px_meta(s)
    out = {"n": int(len(s["log_px_nats"])), "source": meta["source"], "is_sample": meta["is_sample"],
           "mean_log_px_nats": float(np.mean(s["log_px_nats"])),
           "pixel_mean": meta["pixel_mean"], "pixel_var": meta["pixel_var"], "conform": meta.get("conform")}
    if "bpd" in s:
        out["mean_bpd"] = float(np.mean(s["bpd"]))
    for diag in ("gap_nats", "ess_fraction"):
        if diag in s:
            out[f"mean_{diag}"] = float(np.mean(s[diag]))
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


# -- one detector at a time ----------------------------------------------------------------
def _is_run(source) -> bool:
    return isinstance(source, (str, Path))


@renamed_keywords(n="n_fit")  # its name until 0.2
def fit_detector(source, detector: str | Detector, options: Mapping | None = None, *, images=None,
                 dataset: str | None = None, split: str | None = None, start: int | None = None,
                 stop: int | None = None, n_fit: int | None = None, data_dir: str | None = None, device: str = "cpu",
                 seed: int = 0, progress: bool | None = None) -> Detector:
    """A detector fitted on held-out training images, ready for :func:`detector_scores`.

    ``source``: a run directory, or a model object (your own VAE, :mod:`vaeood.byo`).
    With a run directory the default fitting data is its held-out training slice
    (:func:`vaeood.evaluation.fitdata.heldout_slice`, ``n_fit`` images); ``dataset``/``split``/``start``/
    ``stop`` choose another slice, which must be held-out images of the training split:
    test images, another dataset or images the model trained on are refused
    (:class:`~vaeood.detectors.FitDataError`). With a model object pass ``images``
    (uint8 ``[N, H, W, C]``): held-out images of its training distribution.
    """
    det = detector if isinstance(detector, Detector) else make_detector(detector, options)
    if not det.fits:
        return det.fit({})
    if _is_run(source):
        if images is not None:
            raise FitDataError("with a run directory, fitting data is named by dataset/split/start/stop (so that "
                               "it can be checked to be held-out training data), not passed as images")
        if dataset is None and split is None and start is None and stop is None:
            sl = heldout_slice(source, n=n_fit, data_dir=data_dir)
        else:
            config = run_config(source)
            dataset, split = dataset or config.data.name, split or config.data.split
            check_fit_slice(source, dataset, split, start or 0, stop or 0)  # dataset and split first
            data = load_for_run(config.data, dataset, split, data_dir=config.data.data_dir or data_dir,
                                run_dir=source)
            default = heldout_slice(source, n=n_fit, data_dir=data_dir, data=data)
            start = default["start"] if start is None else start
            stop = min(len(data.images), start + (n_fit or len(data.images))) if stop is None else stop
            check_fit_slice(source, dataset, split, start, stop, split_size=len(data.images))
            sl = {**default, "start": start, "stop": stop, "n": stop - start}
        feats = compute_features(source, sl["dataset"], sl["split"], det.needs, data_dir=sl["data_dir"],
                                 start=sl["start"], stop=sl["stop"], device=device, seed=seed,
                                 allow_sample=sl["allow_sample"], progress=progress)
        det.fit(feats)
        det.fit_info.update({k: sl[k] for k in ("dataset", "split", "start", "stop")})
        return det
    if images is None:
        raise FitDataError(f"detector {det.name!r} fits: pass images= (held-out images of the model's training "
                           "distribution, never test images)")
    return det.fit(needs_features(source, images, det.needs, seed=seed, progress=progress))


@renamed_keywords(fit="conform")  # its name until 0.2
def detector_scores(source, detector: Detector, images=None, *, dataset: str | None = None, split: str = "test",
                    limit: int | None = None, data_dir: str | None = None, device: str = "cpu", seed: int = 0,
                    conform: str | None = None, allow_sample: bool = False, progress: bool | None = None) -> np.ndarray:
    """Detector scores ``[N]`` (higher = more OOD) of ``images`` (uint8 ``[N, H, W, C]``,
    with a model object) or of ``dataset/split`` (with a run directory; features cached).

    Scores only; flagging images at a false-alarm rate is :func:`vaeood.decide` (``vaeood detect``)."""
    if _is_run(source) and dataset is not None:
        feats = compute_features(source, dataset, split, detector.needs, data_dir=data_dir, limit=limit,
                                 device=device, seed=seed, conform=conform, allow_sample=allow_sample,
                                 progress=progress)
    else:
        if images is None:
            raise ValueError("detector_scores: pass images= (or dataset= with a run directory)")
        model = source
        if _is_run(source):
            model = load_model(source, device)[0]
        feats = needs_features(model, images, detector.needs, seed=seed, progress=progress)
    return detector.score(feats)


def evaluate_model(model, in_images, ood_images: Mapping[str, np.ndarray], *, fit_images=None,
                   detectors: Iterable[str] | str = ("nll",), detector_options: Mapping | None = None,
                   estimator: str = "elbo", estimator_options: dict | None = None, seed: int = 0) -> dict:
    """:func:`evaluate` for a model object (your own VAE, see :mod:`vaeood.byo`) and
    arrays of images, uncached, nothing written: ``{"results": {detector: {ood: metrics}},
    "scores": {detector: {set: [N]}}}``. ``fit_images``: held-out images of the model's
    training distribution (needed by detectors that fit; never test images)."""
    dets = build_detectors(detectors, detector_options, estimator=estimator, estimator_options=estimator_options)
    results, scores = {}, {}
    for name, det in dets.items():
        if det.fits:
            fit_detector(model, det, images=fit_images, seed=seed)
        else:
            det.fit({})
        s_in = detector_scores(model, det, in_images, seed=seed)
        s_ood = {ood: detector_scores(model, det, imgs, seed=seed) for ood, imgs in ood_images.items()}
        results[name] = {ood: ood_metrics(s_in, s) for ood, s in s_ood.items()}
        scores[name] = {"in": s_in, **s_ood}
    return {"results": results, "scores": scores}


#: the old name of :func:`detector_scores` (``vaeood detect`` flags images: :func:`vaeood.decide`)
detect = deprecated_alias(detector_scores, "detect")
