"""Realised false-alarm and detection rates of a run's conformal thresholds, for the
ood-suite report (:func:`decision_rates`, :func:`format_decision_table`)."""

from __future__ import annotations

from pathlib import Path

from . import conformal
from .conformal_rates import operating_points
from .calibration import calibrate
from .calibration_file import NoCalibrationError
from .fitted_detector import restore_fit
from .records import load_calibration
from .scorer import fit_seed, make_scorer
from .training_split import training_split
from ..detectors import detector_names, per_detector_options
from ..evaluation.kept_fit import KeptFit, score_args
from ..features.image_slice import ImageSlice
from ..infra.deprecated import renamed_keywords
from ..training.run_dir import Run

DEFAULT_ALPHAS = (0.01, 0.05, 0.1)


def operating_points_for_run(run_dir: str | Path, detector: str, in_scores, ood_scores: dict | None = None, *,
                             alphas=DEFAULT_ALPHAS, delta: float | None = None) -> dict:
    """:func:`vaeood.decisions.conformal_rates.operating_points` with the run's saved calibration scores
    of ``detector``: per α, the realised FPR on ``in_scores`` (test in-distribution
    scores of the same detector, computed by the same code and options as the
    calibration: check with :func:`load_calibration`'s ``detector_options``) and the
    TPR on each OOD set of ``ood_scores``. :func:`decision_rates` computes both itself."""
    record = load_calibration(run_dir, detector)
    out = operating_points(record["scores"], in_scores, ood_scores, alphas=alphas, delta=delta)
    out["calibration"] = {"dataset": record["dataset"], "split": record["split"],
                          "slice": record["calibration_slice"]}
    return out


def _calibration_for_rates(run_dir: Path, detector: str, options: dict, *, n_calibration, n_fit, data_dir,
                           device, batch_size, test_seed: int, fitted: KeptFit | None) -> tuple[dict, bool]:
    """The run's calibration record of ``detector`` with these options and sizes and a
    seed other than ``test_seed``, made now (with ``test_seed + 1``, and the detector
    ``fitted`` where that fit is of its fitting slice) if missing, stale, or of other options,
    sizes or that seed; and whether it was made now."""
    try:
        record = load_calibration(run_dir, detector, options)
        if n_calibration is not None and record["n_calibration"] != n_calibration:
            raise NoCalibrationError("another calibration size")
        if n_fit is not None and record["fit_slice"] and record["fit_slice"][1] - record["fit_slice"][0] != n_fit:
            raise NoCalibrationError("another fitting slice")
        if record["seed"] == test_seed:
            raise NoCalibrationError("the test images' seed")
        return record, False
    except NoCalibrationError:
        return calibrate(run_dir, detector, detector_options=options, n_calibration=n_calibration, n_fit=n_fit,
                         data_dir=data_dir, device=device, seed=test_seed + 1, batch_size=batch_size,
                         fitted=fitted), True


@renamed_keywords(fit="conform")  # its name until 0.2
def decision_rates(run_dir: str | Path, in_dataset: str, ood_datasets: list[str], detectors=("nll",), *,
                   detector_options: dict | None = None, alphas=DEFAULT_ALPHAS, delta: float | None = None,
                   split: str = "test", limit: int | None = None, n_calibration: int | None = None,
                   n_fit: int | None = None, data_dir: str | None = None, data_dirs: dict | None = None,
                   device: str = "cpu", seed: int = 0, conform: str | None = None, allow_sample: bool = False,
                   batch_size: int | None = None, fits: dict | None = None) -> dict:
    """For the ood-suite report: per detector, the realised false-alarm rate on the
    in-distribution test set and the detection rate (TPR) on each OOD set of conformal
    thresholds at each α (default 0.01, 0.05, 0.1), calibrated on the run's held-out
    training images (:func:`calibrate`, run here when the run has no matching calibration).

    The calibration record gives the slices; the calibration and test scores both come from
    features cached in ``RUN/features/`` (so from the same code). The test sets' features use
    ``seed``, as :func:`vaeood.evaluation.evaluate` with the same arguments does (so its cache is
    reused); the calibration's use another seed (``seed + 1``). Arguments as
    :func:`vaeood.evaluation.evaluate`'s: ``limit`` the first N test images of each set, ``n_fit`` the
    fitting images, ``data_dirs`` a folder per dataset name (overriding ``data_dir``), ``conform``
    pad/resize for sets of another shape. ``detector_options``: ``{detector: options}``. ``delta``:
    the calibration-conditional threshold instead of the marginal one. ``fits``: ``{detector:``
    :class:`KeptFit` ``}`` from evaluate's ``keep_fits``: a calibration made here takes its fit
    (:func:`calibrate`'s ``fitted``) and then its scores of the test sets, where evaluate scored
    them with these arguments. Returns ``{detector: operating points}`` (see
    :func:`vaeood.decisions.conformal_rates.operating_points`; plus ``"calibration"``: the slices), or
    ``{detector: {"error": message}}`` for a detector that cannot be calibrated on the run.
    """
    run_dir = Path(run_dir)
    out = {}
    detector_options = per_detector_options(detector_options, "detector_options")
    sets = [in_dataset, *ood_datasets]
    args = score_args(split=split, limit=limit, conform=conform, allow_sample=allow_sample, skip_bad=False,
                      seed=seed, folders={s: (data_dirs or {}).get(s, data_dir) for s in sets})
    for name in detector_names(detectors, "detectors"):
        kept = (fits or {}).get(name)
        try:
            record, made_now = _calibration_for_rates(run_dir, name, detector_options.get(name) or {},
                                                      n_calibration=n_calibration, n_fit=n_fit, data_dir=data_dir,
                                                      device=device, batch_size=batch_size, test_seed=seed,
                                                      fitted=kept)
        except (NoCalibrationError, conformal.CalibrationError) as err:
            out[name] = {"error": str(err)}
            continue
        # calibrate took evaluate's fit (the test asked of the record it made is the one it asked):
        # the calibration scores are the record's, and the test sets' evaluate's where made alike
        took = made_now and kept is not None and kept.is_fit_of(
            name, record["detector_options"], (record["dataset"], record["split"]), record["fit_slice"])
        cal, scores = (record["scores"], kept.scores_of(sets, args)) if took else (None, None)
        if scores is None:
            cal, scores = _scores_for_rates(run_dir, record, sets, args, device=device, data_dir=data_dir,
                                            batch_size=batch_size, detector=kept.detector if took else None)
        rates = operating_points(cal, scores[in_dataset],
                                 {ood: scores[ood] for ood in ood_datasets}, alphas=alphas, delta=delta)
        rates["calibration"] = {"dataset": record["dataset"], "split": record["split"],
                                "slice": record["calibration_slice"], "fit_slice": record["fit_slice"],
                                "seed": record["seed"], "test_seed": seed}
        out[name] = rates
    return out


def _scores_for_rates(run_dir: Path, record: dict, sets: list[str], args: dict, *, device, data_dir, batch_size,
                      detector=None) -> tuple:
    """The calibration scores and each set's test scores of the record's detector: ``detector``
    where given (the fit calibrate took), else the fit calibrate saved, else fitted again as it was.
    Both from the same feature cache, so from the same code."""
    run = Run(run_dir)
    data, where = training_split(run, data_dir)
    scorer = make_scorer(run_dir, record["detector"], record["detector_options"], device=device,
                         seed=record["seed"], data_dir=where, batch_size=batch_size)
    if detector is not None:
        scorer.detector = detector
    elif not restore_fit(scorer, record):
        scorer.fit(*(record["fit_slice"] or (0, 0)), seed=fit_seed(record))
    a, b = record["calibration_slice"]
    cal = scorer.score_slice(ImageSlice(run.config.data.name, data.split, start=a, stop=b, data_dir=where,
                                        allow_sample=run.config.data.allow_sample), record["seed"])
    scores = {s: scorer.score_slice(ImageSlice(s, args["split"], limit=args["limit"], conform=args["conform"],
                                               allow_sample=args["allow_sample"], data_dir=args["folders"][s]),
                                    args["seed"]) for s in sets}
    return cal, scores


def format_decision_table(rates: dict) -> str:
    """A Markdown table of :func:`decision_rates`: detector, α, realised FPR with its exact
    95% interval, the binomial 95% bound of the FPR at a true rate α, the 95% quantile of
    the realised FPR over calibration and test draws (Beta-Binomial), and TPR per OOD set."""
    oods = sorted({o for r in rates.values() for a in r.get("alphas", {}).values() for o in a.get("tpr", {})})
    head = ["detector", "α", "n cal.", "realised FPR [95% CI]", "α + binomial 95%", "95% over cal. + test"] + \
        [f"TPR {o}" for o in oods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rates.items():
        if "error" in r:
            lines.append(f"| {name} | — | — | {r['error'].splitlines()[0][:120]} |" + " |" * (len(head) - 4))
            continue
        for key, a in r["alphas"].items():
            if "error" in a:
                lines.append(f"| {name} | {key} | {r['n_calibration']} | too few calibration images |"
                             + " |" * (len(head) - 4))
                continue
            lo, hi = a["fpr_ci95"]
            row = [name, key, str(r["n_calibration"]), f"{a['fpr']:.3f} [{lo:.3f}, {hi:.3f}]",
                   f"{a['fpr_binomial_upper95']:.3f}", f"{a['fpr_upper95']:.3f}"] + \
                [f"{a['tpr'][o]['tpr']:.3f}" if o in a["tpr"] else "—" for o in oods]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
