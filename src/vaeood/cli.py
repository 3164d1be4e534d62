"""The ``vaeood`` command: train, score, evaluate, reproduce.

Config changes are dotted overrides after the options, e.g.
``vaeood train runs/a --model.latent_dim=32 --train.epochs 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

import torch

from .infra.allocator import keep_freed_memory
from .infra import distributed
from .training.checkpoint import CheckpointError
from .training.config import OPTION_RULES, Config, ConfigError, field_rule, flatten, parse_value, read_config_file
from .infra.console import console
from .decisions.conformal import CalibrationError
from .data import DataError, load_dataset
from .data.folder import printable
from .data.image_folder import is_folder_name
from .decisions import RECOMMENDED, NoCalibrationError, calibrate, decide, summary_path_for
from .decisions.detect_report import html_path_for
from .detectors import DETECTORS, per_detector_options
from .evaluation.evaluate import evaluate
from .experiments import EXPERIMENTS, reproduce
from .pipeline import fit
from .infra.registry import UnknownNameError, split_names
from .evaluation.report import format_table
from .infra.runlock import RunLockedError
from .evaluation.scoring import ShapeMismatchError, score, score_meta
from .training.train import TrainingError, train

# errors of the user's input or machine, reported in one line; anything else is a bug
EXPECTED_ERRORS = (DataError, ConfigError, CheckpointError, ShapeMismatchError, TrainingError, RunLockedError,
                   UnknownNameError, NoCalibrationError, CalibrationError, OSError)
REPORT_BUGS = "the vaeood issue tracker (with the command line and this traceback)"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s stop), handled like Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, extra = _parser().parse_known_args(argv)
    # under torchrun only rank 0 reports progress; the other ranks say only what goes wrong
    quiet = args.quiet or int(os.environ.get("RANK", "0")) > 0
    with console("quiet" if quiet else "verbose" if args.verbose else "default"):
        return _run(args, extra, argv)


def _run(args, extra: list[str], argv: list[str]) -> int:
    keep_freed_memory()  # the command owns its process: no page faults per training step
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        overrides = _dotted(extra)
        if overrides and args.command not in ("fit", "train", "reproduce"):
            raise ConfigError(f"{args.command} takes no config overrides, got {', '.join(overrides)}")
        args.command_line = "vaeood " + shlex.join(argv)
        return args.func(args, overrides)
    except EXPECTED_ERRORS as exc:
        return _fail(exc.args[0] if isinstance(exc, UnknownNameError) and exc.args else exc)
    except KeyboardInterrupt as exc:
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"vaeood: {stopped}; files already written are complete (a run continues with "
              "`vaeood train RUN --resume`)", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:
        if _out_of_memory(exc):
            return _fail(f"out of memory ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                         "lower train.batch_size / --batch-size or the model's sizes, or use a larger machine")
        traceback.print_exc()
        print(f"vaeood: internal error: this is a bug in vaeood, not a problem with your input; "
              f"please report it to {REPORT_BUGS}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()  # leave a torchrun process group cleanly
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _out_of_memory(exc: Exception) -> bool:
    """A machine without the memory asked for (not a bug): Python's MemoryError, torch's
    CUDA OutOfMemoryError, or its CPU allocator's RuntimeError."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or \
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def _fail(message) -> int:
    # a file name in the message may hold control characters or undecodable bytes: shown escaped
    text = "\n".join(printable(line) for line in str(message).split("\n"))
    print(f"vaeood: error: {text}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the same one-line form as the others."""

    def error(self, message):
        print(f"vaeood: error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _checked(key: str, rule_and_type) -> Callable[[str], object]:
    """An argparse ``type`` parsing a command-line value by the rule it shares with the config."""
    rule, ftype = rule_and_type

    def parse(text: str):
        try:
            return parse_value(text, ftype, rule, key)
        except ConfigError as exc:  # "--k = 0: must be ..." → "got '0'; must be ..."
            raise argparse.ArgumentTypeError(f"got {text!r}; {str(exc).split(': ', 1)[-1]}") from None
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaeood", description="VAEs, honest log-likelihoods and OOD scores.")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="only warnings and errors on stderr, no progress bars")
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="every detail on stderr (each file loaded, each feature computed or reused, each epoch)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit_parser(sub)
    _add_train_parser(sub)
    _add_score_parser(sub)
    _add_evaluate_parser(sub)
    _add_calibrate_parser(sub)
    _add_detect_parser(sub)
    _add_reproduce_parser(sub)
    return parser


def _add_common(p, scoring=True):
    """The options every subcommand takes (``scoring``: and those of scoring images)."""
    p.add_argument("--data-dir", help="where datasets are (default: $VAEOOD_DATA, then standard places)")
    p.add_argument("--download", action="store_true", help="fetch missing official datasets first")
    p.add_argument("--device", default="cpu", type=_checked("--device", field_rule("train.device")),
                   help="cpu (default), cuda, cuda:1, ...")
    if scoring:
        p.add_argument("--estimator", default=None, help="elbo (default) or iwae")
        p.add_argument("--k", type=_checked("--k", (OPTION_RULES["k"], int)), default=None,
                       help="importance samples for iwae (e.g. 1000)")
        p.add_argument("--limit", type=_checked("--limit", field_rule("data.limit")), default=None,
                       help="score only the first N images (N >= 1)")
        p.add_argument("--refine-steps", type=_checked("--refine-steps", (OPTION_RULES["refine_steps"], int)),
                       default=None,
                       help="iwae: refine each image's q(z|x) by N forward-KL steps first (Jerfel et al. 2021)")


def _add_fit_options(p):
    """--pad / --resize: make images of another shape fit the model."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pad", dest="fit", action="store_const", const="pad",
                       help="zero-pad (centred) images smaller than the model's, e.g. 28×28 → 32×32")
    group.add_argument("--resize", dest="fit", action="store_const", const="resize",
                       help="bilinear-resize images to the model's size (grey ↔ RGB converted too)")


def _add_fit_parser(sub) -> None:
    """The ``vaeood fit SOURCE --out MODEL`` subcommand: train, then calibrate the recommended detector."""
    p = sub.add_parser("fit", help="train a VAE on your images and calibrate the recommended detector, in one step")
    p.add_argument("source", help="a folder of PNG/JPEG images (optionally one subfolder per class) or a dataset name")
    p.add_argument("--out", required=True, help="the model directory to create (then: vaeood detect MODEL IMAGES)")
    p.add_argument("--split", default="train", help="split, when SOURCE is a dataset name (default train)")
    p.add_argument("--detector", default=None,
                   help="detector to calibrate (default: the recommended one, " + ", ".join(RECOMMENDED) +
                        ", the first that applies)")
    p.add_argument("--resume", action="store_true", help="continue a fit that was stopped")
    _add_common(p, scoring=False)
    p.set_defaults(func=_fit)


def _add_train_parser(sub) -> None:
    """The ``vaeood train RUN_DIR`` subcommand."""
    p = sub.add_parser("train", help="train a VAE into a run directory")
    p.add_argument("run_dir")
    p.add_argument("--config", help="JSON or TOML config file (unknown keys are refused)")
    p.add_argument("--resume", action="store_true", help="continue the run directory's last checkpoint")
    _add_common(p, scoring=False)
    p.set_defaults(func=_train)


def _add_score_parser(sub) -> None:
    """The ``vaeood score RUN_DIR`` subcommand."""
    p = sub.add_parser("score", help="per-image log-likelihood of a dataset split, saved in the run")
    p.add_argument("run_dir")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=_checked("--batch-size", field_rule("train.batch_size")), default=None)
    _add_common(p)
    _add_fit_options(p)
    p.set_defaults(func=_score)


def _add_evaluate_parser(sub) -> None:
    """The ``vaeood evaluate RUN_DIR`` subcommand."""
    p = sub.add_parser("evaluate", help="OOD metrics and histogram for in-distribution vs OOD sets")
    p.add_argument("run_dir")
    p.add_argument("--in", dest="in_dataset", required=True, help="in-distribution dataset")
    p.add_argument("--ood", action="append", required=True, help="OOD datasets: a,b or repeated")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="output directory (default: the run directory)")
    p.add_argument("--detectors", default=None,
                   help="comma-separated detectors (default: every one that applies to the run); known: "
                        + ", ".join(DETECTORS.names()))
    p.add_argument("--detector-options", default=None,
                   help='JSON: options per detector, e.g. \'{"likelihood_ratio": {"background_run": "runs/bg"}}\'')
    p.add_argument("--fit-limit", type=_checked("--fit-limit", field_rule("data.limit")), default=None,
                   help="held-out training images that fitted detectors fit on (default: up to 5000)")
    _add_common(p)
    _add_fit_options(p)
    p.set_defaults(func=_evaluate)


def _add_calibrate_parser(sub) -> None:
    """The ``vaeood calibrate RUN_DIR`` subcommand."""
    p = sub.add_parser("calibrate", help="score held-out training images for conformal decisions (vaeood detect)")
    p.add_argument("run_dir")
    p.add_argument("--detector", default=None,
                   help="detector to calibrate (default: the recommended one, " + ", ".join(RECOMMENDED) +
                        ", the first that applies to the run)")
    p.add_argument("--detector-options", type=_json_object, default=None,
                   help='JSON options of the detector, e.g. \'{"estimator": "iwae", "estimator_options": {"k": 100}}\'')
    p.add_argument("--n", dest="n_calibration", type=_checked("--n", field_rule("data.limit")), default=None,
                   help="calibration images: N held-out training images after the fitting slice (default 2000)")
    p.add_argument("--n-fit", type=_checked("--n-fit", field_rule("data.limit")), default=None,
                   help="held-out images a detector that fits is fitted on first (default 5000, at most half)")
    p.add_argument("--seed", type=_checked("--seed", field_rule("train.seed")), default=0)
    p.add_argument("--batch-size", type=_checked("--batch-size", field_rule("train.batch_size")), default=None)
    _add_common(p, scoring=False)
    p.set_defaults(func=_calibrate)


def _add_detect_parser(sub) -> None:
    """The ``vaeood detect RUN_DIR INPUT`` subcommand."""
    p = sub.add_parser("detect", help="flag OOD images of a folder/.npz/dataset at a chosen false-alarm rate")
    p.add_argument("run_dir")
    p.add_argument("input", help="a folder of PNG/JPEG images, an .npz file (x, y) or a dataset name")
    p.add_argument("--detector", default=None,
                   help="a detector calibrated in the run (default: the recommended one calibrated, or the only one)")
    p.add_argument("--detector-options", type=_json_object, default=None,
                   help="JSON options of the detector (default: the calibrated ones)")
    p.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate (with --fdr: false-discovery rate)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--delta", type=float, default=None,
                       help="calibration-conditional: FPR <= alpha with probability >= 1 - delta")
    group.add_argument("--fdr", action="store_true", help="Benjamini-Hochberg over the images at level alpha")
    p.add_argument("--skip-bad", action="store_true", help="skip unusable files of a folder (listed in the summary)")
    p.add_argument("--out", required=True, help="CSV to write (file, score, p_value, flagged); the summary goes "
                                                "beside it as FILE.summary.json, a page to look at as FILE.html")
    p.add_argument("--split", default="test", help="split, when INPUT is a dataset name")
    p.add_argument("--limit", type=_checked("--limit", field_rule("data.limit")), default=None, help="first N images of an .npz or dataset")
    p.add_argument("--batch-size", type=_checked("--batch-size", field_rule("train.batch_size")), default=None)
    _add_common(p, scoring=False)
    _add_fit_options(p)
    p.set_defaults(func=_detect)


def _add_reproduce_parser(sub) -> None:
    """The ``vaeood reproduce EXPERIMENT`` subcommand."""
    p = sub.add_parser("reproduce", help="reproduce an experiment of the study")
    p.add_argument("experiment", choices=EXPERIMENTS.names())
    p.add_argument("--out", required=True, help="output directory for runs, report.md and metrics.json")
    p.add_argument("--preset", default="quick", help="quick (minutes on a CPU) or paper (full training)")
    _add_common(p)
    p.set_defaults(func=_reproduce)

def say(*lines: str) -> None:
    """Print results once (rank 0 under torchrun)."""
    if distributed.is_main():
        print(*lines, sep="\n")


def _dotted(extra: list[str]) -> dict[str, str]:
    """``["--model.latent_dim=32", "--train.epochs", "5"]`` → ``{"model.latent_dim": "32", ...}``."""
    out, i = {}, 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--") or "." not in item.split("=")[0]:
            raise ConfigError(f"unrecognised argument {item!r} (config overrides look like --model.latent_dim=32)")
        if "=" in item:
            key, value = item[2:].split("=", 1)
        elif i + 1 < len(extra):
            key, value = item[2:], extra[i + 1]
            i += 1
        else:
            raise ConfigError(f"config override {item!r} has no value")
        out[key] = value
        i += 1
    return out


def _estimator_options(args) -> dict:
    return {key: value for key, value in (("k", args.k), ("refine_steps", args.refine_steps)) if value is not None}


def _fetch(args, names: list[tuple[str, str]]) -> None:
    if args.download:
        for name, split in names:
            if not is_folder_name(name):  # a folder of images has nothing to download
                load_dataset(name, split, data_dir=args.data_dir, download=True)


def _fit(args, overrides) -> int:
    done = fit(args.source, args.out, split=args.split, overrides=overrides, detector=args.detector,
               data_dir=args.data_dir, device=args.device, resume=args.resume)
    record, run = done["record"], done["run"]
    a, b = record["calibration_slice"]
    fitted = f"fitted on [{record['fit_slice'][0]}:{record['fit_slice'][1]}], " if record["fit_slice"] else ""
    say(f"trained {run} on {done['trained']} of the {done['n_images']} images of {printable(done['source'])} "
        f"(epochs: {done['epochs']}); {done['holdout']} held out for the detector",
        f"calibrated detector {done['detector']} on the held-out images ({fitted}calibrated on [{a}:{b}])",
        f"next: vaeood detect {shlex.quote(str(run))} IMAGES --out flagged.csv   "
        "(IMAGES: a folder, .npz or dataset; flags at a false-alarm rate of 5%, --alpha to choose)")
    return 0


def _train(args, overrides) -> int:
    raw = read_config_file(args.config) if args.config else {}
    settings = {**overrides, **({"train.device": args.device} if args.device != "cpu" else {})}
    config = Config.from_dict(raw, where=args.config or "config").override(settings)
    _fetch(args, [(config.data.name, config.data.split)])
    run = train(config, args.run_dir, resume=args.resume, data_dir=args.data_dir,
                given=[*flatten(raw), *settings])  # a resumed run compares only what was given
    say(f"trained: {run} (checkpoint {Path(run) / 'checkpoint.pt'})")
    return 0


def _score(args, overrides) -> int:
    _fetch(args, [(args.dataset, args.split)])
    result = score(args.run_dir, args.dataset, args.split, estimator=args.estimator or "elbo",
                   estimator_options=_estimator_options(args), data_dir=args.data_dir, limit=args.limit,
                   batch_size=args.batch_size, device=args.device, fit=args.fit)
    meta = score_meta(result)
    line = f"{meta['dataset']}/{meta['split']}: {len(result['log_px_nats'])} images, " \
           f"mean log p(x) = {result['log_px_nats'].mean():.2f} nats"
    if "bpd" in result:
        line += f" = {result['bpd'].mean():.4f} bits/dim"
    if meta.get("fit"):
        line += f" (images fitted: {meta['fit']['description']})"
    say(line)
    return 0


def _dataset_list(values: list[str], option: str) -> list[str]:
    """``--ood a,b --ood c`` → ``[a, b, c]`` (once each); none left is an error naming the option."""
    names = split_names(values)
    if not names:
        raise ConfigError(f"{option} names no dataset (got {values!r}); give one or more, e.g. {option} mnist,svhn")
    return names


def _evaluate(args, overrides) -> int:
    args.ood = _dataset_list(args.ood, "--ood")
    _fetch(args, [(name, args.split) for name in [args.in_dataset, *args.ood]])
    try:
        detector_options = json.loads(args.detector_options) if args.detector_options else None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--detector-options is not valid JSON: {exc}") from None
    out = evaluate(args.run_dir, args.in_dataset, args.ood, split=args.split, estimator=args.estimator or "elbo",
                   estimator_options=_estimator_options(args), out_dir=args.out, data_dir=args.data_dir,
                   limit=args.limit, device=args.device, fit=args.fit,
                   detectors="all" if args.detectors is None else args.detectors,
                   detector_options=per_detector_options(detector_options), fit_limit=args.fit_limit)
    for name, description in out["fitted"].items():
        say(f"{name}: images fitted to the model: {description}")
    for name, reason in out["skipped"].items():
        say(f"{name}: not run ({reason})")
    say(format_table([(detector, ood, m) for detector, r in out["results"].items() for ood, m in r.items()]))
    say(f"metrics: {Path(args.out or args.run_dir) / 'metrics.json'}")
    return 0


def _json_object(text: str) -> dict:
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"estimator\": \"iwae\"}'")
    return value


def _calibrate(args, overrides) -> int:
    record = calibrate(args.run_dir, args.detector, detector_options=args.detector_options,
                       n_calibration=args.n_calibration, n_fit=args.n_fit, data_dir=args.data_dir, device=args.device,
                       seed=args.seed, batch_size=args.batch_size)
    a, b = record["calibration_slice"]
    fitted = f", fitted on [{record['fit_slice'][0]}:{record['fit_slice'][1]}]" if record["fit_slice"] else ""
    say(f"calibrated {record['detector']} on {record['n_calibration']} held-out images "
        f"{record['dataset']}/{record['split']}[{a}:{b}] (the model trained on [0:{record['train_slice'][1]}]"
        f"{fitted}): {Path(args.run_dir) / 'calibration' / (record['detector'] + '.npz')}")
    return 0


def _detect(args, overrides) -> int:
    result = decide(args.run_dir, args.input, args.detector, alpha=args.alpha, delta=args.delta, fdr=args.fdr,
                    detector_options=args.detector_options, fit=args.fit, skip_bad=args.skip_bad, split=args.split,
                    limit=args.limit, data_dir=args.data_dir, device=args.device, batch_size=args.batch_size,
                    out=args.out)
    csv_path = Path(args.out)
    say(result.summary_text())
    say(f"wrote {printable(str(csv_path))}, {printable(str(summary_path_for(csv_path)))} and "
        f"{printable(str(html_path_for(csv_path)))}")
    return 0


def _reproduce(args, overrides) -> int:
    exp = EXPERIMENTS.get(args.experiment)
    _fetch(args, exp.datasets_needed())
    out = reproduce(args.experiment, args.out, preset=args.preset, overrides=overrides, data_dir=args.data_dir,
                    device=args.device, estimator=args.estimator,
                    estimator_options=_estimator_options(args) or None,
                    command=args.command_line)
    say(exp.summary(out))
    say(f"report: {Path(args.out) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
