"""The ``vaeood`` command: fit, train, log-px, evaluate, calibrate, detect, reproduce
(their options: :mod:`vaeood.cli_parsers`).

Config changes are dotted overrides after the options, e.g.
``vaeood train runs/a --model.latent_dim=32 --train.epochs 5``.
"""

from __future__ import annotations

import gc
import json
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import torch

from .infra.allocator import keep_freed_memory
from .infra import distributed
from .training.checkpoint import CheckpointError
from .cli_parsers import DEPRECATED_COMMANDS, build_parser
from .training.config import RENAMED, Config, ConfigError, flatten, read_config_file
from .infra.console import console
from .infra.deprecated import renamed_keys
from .decisions.conformal import CalibrationError
from .data import DataError, load_dataset
from .data.decode import conversion_text
from .data.listing import printable
from .data.locate import is_folder_name
from .decisions import NoCalibrationError, calibrate, decide, summary_path_for
from .decisions.detect_report import html_path_for
from .detectors import per_detector_options
from .evaluation.evaluate import evaluate
from .experiments import EXPERIMENTS, reproduce
from .pipeline import fit
from .infra.registry import UnknownNameError, split_names
from .evaluation.report import format_table
from .infra.runlock import RunLockedError
from .evaluation.log_px import ShapeMismatchError, log_px, log_px_meta
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
    args, extra = build_parser().parse_known_args(argv)
    # under torchrun only rank 0 reports progress; the other ranks say only what goes wrong
    quiet = args.quiet or int(os.environ.get("RANK", "0")) > 0
    with console("quiet" if quiet else "verbose" if args.verbose else "default"):
        return _run(args, extra, argv)


def _run(args, extra: list[str], argv: list[str]) -> int:
    keep_freed_memory()  # the command owns its process: no page faults per training step
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        overrides = _renamed(_dotted(extra), "command line")
        if overrides and args.command not in ("fit", "train", "reproduce"):
            raise ConfigError(f"{args.command} takes no config overrides, got {', '.join(overrides)}")
        args.command_line = "vaeood " + shlex.join(argv)
        if args.command in OLD_NAMES:
            print(f"vaeood: `vaeood {args.command}` is deprecated, use `vaeood {OLD_NAMES[args.command]}` "
                  "(the old name goes in vaeood 0.3)", file=sys.stderr)
        return COMMANDS[OLD_NAMES.get(args.command, args.command)](args, overrides)
    except EXPECTED_ERRORS as exc:
        return _fail(exc.args[0] if isinstance(exc, UnknownNameError) and exc.args else exc)
    except KeyboardInterrupt as exc:
        stopped = "terminated" if isinstance(exc, Terminated) else "interrupted"
        again = {"reproduce": "the same command", "fit": "the same command and --resume"}.get(
            args.command, "`vaeood train RUN --resume`")
        print(f"vaeood: {stopped}; files already written are complete (a run continues with {again})",
              file=sys.stderr)
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


def _renamed(raw: dict, where: str) -> dict:
    """A config or overrides with old keys (``data.fit``) under their new names, each
    rename told in a notice on stderr (the old keys go in vaeood 0.3)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        out = renamed_keys(raw, RENAMED, where)
    for warning in caught:
        print(f"vaeood: {warning.message}", file=sys.stderr)
    return out


def _estimator_options(args) -> dict:
    return {key: value for key, value in (("k", args.k), ("refine_steps", args.refine_steps)) if value is not None}


def _fetch(args, names: list[tuple[str, str]]) -> None:
    if args.download:
        for name, split in names:
            if not is_folder_name(name):  # a folder of images has nothing to download
                load_dataset(name, split, data_dir=args.data_dir, download=True)


def _fit(args, overrides) -> int:
    if args.image_size is not None:
        overrides = {**overrides, "data.image_size": json.dumps(args.image_size)}
    done = fit(args.source, args.out, split=args.split, overrides=overrides, detector=args.detector,
               data_dir=args.data_dir, device=args.device, resume=args.resume, backbone=args.backbone)
    record, run = done["record"], done["run"]
    a, b = record["calibration_slice"]
    fitted = f"fitted on [{record['fit_slice'][0]}:{record['fit_slice'][1]}], " if record["fit_slice"] else ""
    backbone = f" (backbone {done['backbone']})" if done["backbone"] else ""
    backbone += _content_view(record.get("fit_info") or {})
    say(f"trained {run} on {done['trained']} of the {done['n_images']} images of {printable(done['source'])} "
        f"(epochs: {done['epochs']}); {done['holdout']} held out for the detector",
        *_folder_lines(done),
        f"calibrated detector {done['detector']}{backbone} on the held-out images ({fitted}calibrated on [{a}:{b}])",
        f"next: vaeood detect {shlex.quote(str(run))} IMAGES --out flagged.csv   "
        "(IMAGES: a folder, .npz or dataset; flags at a false-alarm rate of 5%, --alpha to choose)")
    return 0


def _content_view(fit_info: dict) -> str:
    """What ``fused_content``'s content view reads, from its fit (empty for other detectors)."""
    if "feature_energy" in fit_info:
        return f" (content: feature_knn and feature_energy of {fit_info['feature_energy'].get('classes')} classes)"
    without = (fit_info.get("content_without") or {}).get("feature_energy")
    return f" (content: feature_knn alone; no feature_energy: {without})" if without else ""


def _folder_lines(done: dict) -> list[str]:
    """What fit did to a folder's images: the working resolution, the conversions, the resized and skipped."""
    record = done["folder"]
    if record is None:
        return []
    h, w, c = done["image_shape"]
    parts = [f"images at {h}×{w} {'RGB' if c == 3 else 'grey'}"]
    if record["converted"]:
        parts.append(conversion_text(record["converted"]))
    if record["conform"]["changed"]:
        parts.append(f"{record['conform']['changed']} resized by {record['conform']['method']}")
    if record["skipped"]:
        parts.append(f"{len(record['skipped'])} bad files skipped")
    return ["; ".join(parts)]


def _train(args, overrides) -> int:
    raw = _renamed(read_config_file(args.config), args.config) if args.config else {}
    settings = {**overrides, **({"train.device": args.device} if args.device != "cpu" else {})}
    config = Config.from_dict(raw, where=args.config or "config").override(settings)
    _fetch(args, [(config.data.name, config.data.split)])
    run = train(config, args.run_dir, resume=args.resume, data_dir=args.data_dir,
                given=[*flatten(raw), *settings])  # a resumed run compares only what was given
    say(f"trained: {run} (checkpoint {Path(run) / 'checkpoint.pt'})")
    return 0


def _log_px(args, overrides) -> int:
    _fetch(args, [(args.dataset, args.split)])
    result = log_px(args.run_dir, args.dataset, args.split, estimator=args.estimator or "elbo",
                    estimator_options=_estimator_options(args), data_dir=args.data_dir, limit=args.limit,
                    batch_size=args.batch_size, device=args.device, conform=args.conform, skip_bad=args.skip_bad)
    meta = log_px_meta(result)
    line = f"{meta['dataset']}/{meta['split']}: {len(result['log_px_nats'])} images, " \
           f"mean log p(x) = {result['log_px_nats'].mean():.2f} nats"
    if "bpd" in result:
        line += f" = {result['bpd'].mean():.4f} bits/dim"
    if meta.get("conform"):
        line += f" (images conformed: {meta['conform']['description']})"
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
                   limit=args.limit, device=args.device, conform=args.conform, skip_bad=args.skip_bad,
                   detectors="all" if args.detectors is None else args.detectors,
                   detector_options=per_detector_options(detector_options), n_fit=args.n_fit)
    for name, description in out["fitted"].items():
        say(f"{name}: images fitted to the model: {description}")
    for name, reason in out["skipped"].items():
        say(f"{name}: not run ({reason})")
    say(format_table([(detector, ood, m) for detector, r in out["results"].items() for ood, m in r.items()]))
    say(f"metrics: {Path(args.out or args.run_dir) / 'metrics.json'}")
    return 0


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
                    detector_options=args.detector_options, conform=args.conform, skip_bad=args.skip_bad,
                    split=args.split,
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
    out = reproduce(args.experiment, args.out, preset=args.preset, overwrite=args.overwrite, overrides=overrides,
                    data_dir=args.data_dir,
                    device=args.device, estimator=args.estimator,
                    estimator_options=_estimator_options(args) or None,
                    command=args.command_line)
    say(exp.summary(out))
    say(f"report: {Path(args.out) / 'report.md'}")
    return 0


#: each subcommand's function, called with the parsed arguments and the dotted config overrides
COMMANDS = {"fit": _fit, "train": _train, "log-px": _log_px, "evaluate": _evaluate, "calibrate": _calibrate,
            "detect": _detect, "reproduce": _reproduce}
#: an old subcommand name → its new one
OLD_NAMES = {old: new for new, olds in DEPRECATED_COMMANDS.items() for old in olds}


def command() -> None:
    """The ``vaeood`` console script (and ``python -m vaeood.cli``): :func:`main` in a process of
    its own. Every object alive is moved to the garbage collector's permanent generation
    (``gc.freeze``) before the command, so that its collections stop walking the million objects
    that importing torch made, and again after it, so that the interpreter's exit skips
    collecting what the command leaves: together 0.6 s of a 9 s ``vaeood detect`` (BENCHMARKS.md).
    Files are closed by the command itself, never left to the collector. Not done by :func:`main`,
    which a program (or a test) may call many times in one process. A process of a torchrun
    group ends without Python's finalization (:func:`vaeood.infra.distributed.exit_process`)."""
    gc.freeze()
    code = main()
    gc.freeze()
    distributed.exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    command()
