"""The argument parser of the ``vaeood`` command (:mod:`vaeood.cli` runs the subcommands).

Each subcommand's options are declared here. An option that is also a config setting
(``--limit`` and ``data.limit``, ``--device`` and ``train.device``, ...) is checked by the
config's own rule (:func:`vaeood.training.config.field_rule`), so the command line and a
config file accept the same values.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Callable

from .decisions import RECOMMENDED
from .detectors import DETECTORS
from .experiments import EXPERIMENTS
from .training.config import OPTION_RULES, Config, ConfigError, field_rule, flatten, parse_value

#: a subcommand → its old names, still accepted for one release (0.2) with a notice on stderr
DEPRECATED_COMMANDS = {"log-px": ["score"]}


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


class _Deprecated(argparse.Action):
    """An old option name (``--fit-limit``): stores like its new one, with a notice on stderr."""

    def __init__(self, *args, new: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"vaeood: {option_string} is deprecated, use {self.new} (the old name goes in vaeood 0.3)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``vaeood``: ``args.command`` names the subcommand as typed (an alias included)."""
    parser = _Parser(prog="vaeood", description="VAEs, honest log-likelihoods and OOD scores.")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="only warnings and errors on stderr, no progress bars")
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="every detail on stderr (each file loaded, each feature computed or reused, each epoch)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_fit_parser(sub)
    _add_train_parser(sub)
    _add_log_px_parser(sub)
    _add_evaluate_parser(sub)
    _add_calibrate_parser(sub)
    _add_detect_parser(sub)
    _add_reproduce_parser(sub)
    return parser


def _add_common(p, estimates=True):
    """The options every subcommand takes (``estimates``: and those of estimating log p(x))."""
    p.add_argument("--data-dir", help="where datasets are (default: $VAEOOD_DATA, then standard places)")
    p.add_argument("--download", action="store_true", help="fetch missing official datasets first")
    p.add_argument("--device", default="cpu", type=_checked("--device", field_rule("train.device")),
                   help="cpu (default), cuda, cuda:1, ...")
    if estimates:
        p.add_argument("--estimator", default=None, help="elbo (default) or iwae")
        p.add_argument("--k", type=_checked("--k", (OPTION_RULES["k"], int)), default=None,
                       help="importance samples for iwae (e.g. 1000)")
        p.add_argument("--limit", type=_checked("--limit", field_rule("data.limit")), default=None,
                       help="only the first N images (N >= 1)")
        p.add_argument("--refine-steps", type=_checked("--refine-steps", (OPTION_RULES["refine_steps"], int)),
                       default=None,
                       help="iwae: refine each image's q(z|x) by N forward-KL steps first (Jerfel et al. 2021)")


def _add_skip_bad(p):
    p.add_argument("--skip-bad", action="store_true", help="skip unusable files of a folder (named, and listed in "
                   "the summary)")


def _add_conform_options(p):
    """--pad / --resize: conform images of another shape to the model."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pad", dest="conform", action="store_const", const="pad",
                       help="zero-pad (centred) images smaller than the model's, e.g. 28×28 → 32×32")
    group.add_argument("--resize", dest="conform", action="store_const", const="resize",
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
    p.add_argument("--backbone", default=None,
                   help="the pretrained network the detector's content view reads (default efficientnet_lite0; "
                        "efficientnet_lite2: 0.7x the speed, better on photos of ImageNet's classes, "
                        "docs/findings.md)")
    p.add_argument("--image-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="a folder's working resolution (default: its median size, long side at most 64 px); "
                        "every image is resized to it (data.image_size, data.conform)")
    _add_common(p, estimates=False)


def _add_train_parser(sub) -> None:
    """The ``vaeood train RUN_DIR`` subcommand."""
    p = sub.add_parser("train", help="train a VAE into a run directory")
    p.add_argument("run_dir")
    p.add_argument("--config", help="JSON or TOML config file (unknown keys are refused)")
    p.add_argument("--resume", action="store_true", help="continue the run directory's last checkpoint")
    _add_common(p, estimates=False)


def _add_log_px_parser(sub) -> None:
    """The ``vaeood log-px RUN_DIR`` subcommand (``score``: its old name, deprecated)."""
    p = sub.add_parser("log-px", aliases=DEPRECATED_COMMANDS["log-px"],
                       help="per-image log p(x) estimates of a dataset split, saved in the run (was: score)")
    p.add_argument("run_dir")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=_checked("--batch-size", field_rule("train.batch_size")), default=None)
    _add_common(p)
    _add_conform_options(p)
    _add_skip_bad(p)


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
    p.add_argument("--n-fit", type=_checked("--n-fit", field_rule("data.limit")), default=None,
                   help="held-out training images that fitted detectors fit on (default: up to 5000)")
    p.add_argument("--fit-limit", dest="n_fit", type=_checked("--fit-limit", field_rule("data.limit")),
                   action=_Deprecated, new="--n-fit", help=argparse.SUPPRESS)
    _add_common(p)
    _add_conform_options(p)
    _add_skip_bad(p)


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
    _add_common(p, estimates=False)


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
    _add_skip_bad(p)
    p.add_argument("--out", required=True, help="CSV to write (file, score, p_value, flagged); the summary goes "
                                                "beside it as FILE.summary.json, a page to look at as FILE.html")
    p.add_argument("--split", default="test", help="split, when INPUT is a dataset name")
    p.add_argument("--limit", type=_checked("--limit", field_rule("data.limit")), default=None,
                   help="first N images of an .npz or dataset")
    p.add_argument("--batch-size", type=_checked("--batch-size", field_rule("train.batch_size")), default=None)
    _add_common(p, estimates=False)
    _add_conform_options(p)


def _add_reproduce_parser(sub) -> None:
    """The ``vaeood reproduce EXPERIMENT`` subcommand."""
    p = sub.add_parser("reproduce", help="reproduce an experiment of the study", epilog=_overrides_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=EXPERIMENTS.names())
    p.add_argument("--out", required=True, help="output directory for runs, report.md and metrics.json")
    p.add_argument("--preset", default="quick", help="quick (minutes on a CPU) or paper (full training)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain the models in OUT that another call made (a changed setting, preset or data file); "
                        "without it such a rerun is refused")
    _add_common(p)


def _overrides_help() -> str:
    """The override syntax, the config keys, and the keys each experiment sets itself (refused)."""
    keys = flatten(Config().to_dict())
    sections = {}
    for key in keys:
        sections.setdefault(key.split(".")[0], []).append(key.split(".", 1)[1])
    return "\n".join([
        "config overrides, after the options: --SECTION.KEY=VALUE or --SECTION.KEY VALUE, e.g.",
        "  --model.latent_dim=4 --train.epochs 2",
        "They change the resolved config of every model the experiment trains (a companion model's",
        "declared settings win over them). Keys:",
        *[textwrap.fill(", ".join(names), 90, initial_indent=f"  {section}: ", subsequent_indent="    ")
          for section, names in sections.items()],
        "Keys each experiment honours (it sets those after \"but\" itself for each run: overriding one is refused):",
        *[f"  {name}: every key but {', '.join(EXPERIMENTS.get(name).own_keys)}" for name in EXPERIMENTS.names()],
        "A rerun into an OUT whose models another call made is refused, naming the first difference:",
        "give another --out, or --overwrite to retrain them (docs/usage.md)."])


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"estimator\": \"iwae\"}'")
    return value

