"""The OOD detector suite (``vaeood reproduce ood-suite``): every detector on every pair.

For each in-distribution dataset (Fashion-MNIST, MNIST, CIFAR-10 where it exists) and
each seed it trains what the detectors need:

- ``main``: the conv VAE with the discretised-logistic decoder (the model of Fig. 2a);
  every single-model detector (``nll``, ``bpd``, ``complexity``, ``typicality``,
  ``dose``, ``lpath``, ...) runs on it;
- ``background``: the same VAE trained on the same images with each pixel replaced by
  uniform noise at rate μ and an L2 penalty on the weights (Ren et al. 2019), for
  ``likelihood_ratio``;
- ``wide`` and ``small``: the same VAE with a very wide and a very small latent, for
  LPath's two-model variant ``lpath_2m`` (Huang et al. 2024);
- ``hvae``: a three-layer hierarchical VAE on the same budget, for ``llr`` (Havtorn et
  al. 2021),

then scores the in-distribution test set against every OOD set: the other grey-scale
dataset (MNIST ↔ Fashion-MNIST); for CIFAR-10, MNIST padded to 32×32 RGB (``fit="pad"``),
Tiny ImageNet and SVHN where they are on disk; and, for every model, uniform-noise and
constant images, generated deterministically (seed :data:`SYNTHETIC_SEED`, the same
images for every model seed), and the family's own test images rotated by 90°, written as
datasets in ``OUT/runs/data/``. The rotated images and Tiny ImageNet are *near*-OOD
(typical pixel statistics, wrong content), the rest *far*-OOD; the verdict names the
best detector for each kind, and the report gives the default detector ``fused`` with
its interval on every pair. Detectors that fit are
fitted on a held-out slice of the training split (the images after ``data.limit``),
recorded in ``metrics.json`` and the report.

For each detector the conformal decisions of :mod:`vaeood.decisions` are calibrated on
held-out training images after its fitting slice, and the report gives the realised
false-alarm rate and the TPR at α = 0.01, 0.05, 0.1 beside the AUROC.

The report gives AUROC, AUPRC and FPR@95%TPR as mean ± sd over the seeds, ROC curves
and score histograms per detector, the time each detector costs (its features, fit and
scoring, plus the training of any extra model it needs), and a closing "which detector
to use" summary computed from the numbers.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..infra.atomic import atomic_write, atomic_write_json, atomic_write_text
from ..training.config import Config
from ..data import DatasetNotFoundError, load_dataset
from ..decisions.run_rates import decision_rates
from ..detectors import DETECTORS
from ..evaluation.evaluate import evaluate
from ..evaluation.intervals import seed_summary
from ..evaluation.metrics import METRIC_NAMES
from ..evaluation.report import markdown_table
from .common import EXPERIMENTS, report_header, runs_bar, stamp, train_or_reuse

log = logging.getLogger(__name__)

SYNTHETIC = ("uniform_noise", "constant")
SYNTHETIC_SEED = 20_260_311  # the OOD noise/constant images: fixed, independent of the model seeds
FAIL_BELOW = 0.5  # AUROC below this: the detector ranks OOD images as *more* in-distribution
WEAK_BELOW = 0.9  # AUROC below this: not usable as a detector on that pair
# the extra runs a detector's required option names, by option
EXTRA_RUNS = {"background_run": "background", "second_run": "small"}
# detectors that run on the wide model (with the small one as their second run)
ON_WIDE = ("lpath_2m",)
# detectors that run on a hierarchical VAE trained beside the main one (Havtorn et al. 2021)
ON_HVAE = ("llr",)
#: the hierarchical VAE of ``llr``: three layers (z1 spatial), KL warm-up and free nats as in
#: ``experiments/hvae_llr.py``; its budget is the main model's
HVAE = {"model.arch": "hvae",
        "model.arch_options": '{"latent_dims": [8, 16, 8], "widths": [256, 256], "bottom": "spatial"}',
        "train.objective": "elbo_warmup",
        "train.objective_options": '{"warmup_epochs": 2, "free_nats": 2.0, "free_nats_epochs": 4}'}
#: false-alarm rates of the conformal decisions reported per detector (vaeood.decisions.run_rates)
ALPHAS = (0.01, 0.05, 0.1)
#: families with more detectors than this show only the default one and those the verdict
#: names in the terminal's summary (every detector is in report.md and metrics.json)
SUMMARY_ROWS = 6


@dataclass(frozen=True)
class Family:
    """One in-distribution dataset and the OOD sets it is scored against."""

    name: str
    title: str
    ood: tuple[str, ...]  # real OOD sets that must exist
    optional_ood: tuple[str, ...] = ()  # real OOD sets used where they exist (a note otherwise)
    fit: str | None = None  # how OOD sets of another image shape are made to fit the model
    shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of the generated OOD images
    optional: bool = False  # skipped with a note when the in-distribution data is not found
    near: tuple[str, ...] = ()  # real OOD sets that are near-OOD (natural images of other classes)

    @property
    def rotated(self) -> str:
        """The name of the family's own test images rotated by 90°, a generated near-OOD set."""
        return f"{self.name}_rot90"

    def kind(self, ood: str) -> str:
        """``"near"`` for sets whose pixel statistics stay typical (its own rotated images,
        natural images of other classes), else ``"far"``."""
        return "near" if ood == self.rotated or ood in self.near else "far"


FAMILIES = {
    "fashion_mnist": Family("fashion_mnist", "Fashion-MNIST", ("mnist",)),
    "mnist": Family("mnist", "MNIST", ("fashion_mnist",)),
    "cifar10": Family("cifar10", "CIFAR-10", ("mnist",), optional_ood=("tinyimagenet", "svhn"), fit="pad",
                      shape=(3, 32, 32), optional=True, near=("tinyimagenet",)),
}

DEFAULT_DETECTOR = "fused"  # the detector a user should pick: the report gives its interval on every pair
DEFAULT_DETECTORS = ("nll", "bpd", "complexity", "complexity_jxl", "likelihood_ratio", "typicality", "dose",
                     "dose_svm", "dose_plus", "lpath", "lpath_copod", "lpath_2m", "likelihood_regret", "llr",
                     "latent_gmm", "latent_knn", "latent_mahalanobis", "fused")


@dataclass(frozen=True)
class SuitePreset:
    """The budget of one preset."""

    seeds: tuple[int, ...]
    train: dict[str, dict[str, str]]  # family → config overrides of its main model (shared by all four)
    test_limit: int | None  # images of each test set (None: all)
    fit_images: int  # held-out training images the fitted detectors fit on
    synthetic_images: int  # uniform-noise and constant images per family
    background: dict[str, str] = field(default_factory=lambda: {"data.noise_rate": "0.2",
                                                                 "train.weight_decay": "0.0001"})
    wide_latent: int = 128
    small_latent: int = 2
    estimator: str = "elbo"
    estimator_options: dict = field(default_factory=dict)
    detectors: tuple[str, ...] = DEFAULT_DETECTORS
    detector_options: dict = field(default_factory=dict)
    allow_sample: bool = False
    families: tuple[str, ...] | None = None  # None: every family
    test_limits: dict[str, int] = field(default_factory=dict)  # family → its own test_limit

    def family_test_limit(self, family: str) -> int | None:
        """Images of each of ``family``'s test sets."""
        return self.test_limits.get(family, self.test_limit)


QUICK = {"data.limit": "10000", "train.epochs": "5"}
SMOKE = {"data.limit": "300", "train.epochs": "1", "model.base_channels": "8"}
PRESETS = {
    # `make demo`: one seed, Fashion-MNIST only, the main model configured as fig2a quick's
    # discretised-logistic VAE (20,000 images, 4 epochs, seed 0); data.holdout keeps images to
    # fit on even on the bundled 3,000-image sample (on the real set it changes nothing: the
    # first 20,000 images are trained on either way, the last 1,000 are fitted on)
    "demo": SuitePreset(seeds=(0,), train={"fashion_mnist": {"data.limit": "20000", "train.epochs": "4",
                                                             "data.holdout": "1000"}},
                        test_limit=2000, fit_images=1000, synthetic_images=2000, allow_sample=True,
                        # the demo stays within minutes: no JPEG-XL, no regret (a per-image optimisation)
                        # and no hierarchical VAE to train (llr); the quick preset runs them
                        detectors=tuple(d for d in DEFAULT_DETECTORS
                                        if d not in ("complexity_jxl", "likelihood_regret", "llr")),
                        families=("fashion_mnist",)),
    # seconds, for tests and a first look at the report (numbers meaningless)
    "smoke": SuitePreset(seeds=(0, 1), train={"fashion_mnist": SMOKE, "mnist": SMOKE, "cifar10": SMOKE},
                         test_limit=150, fit_images=100, synthetic_images=150, wide_latent=32, allow_sample=True),
    # every family on 10,000 training images x 5 epochs, CIFAR-10 too (of its 50,000; the images after
    # them are held out to fit and calibrate on); BENCHMARKS.md has its wall time on 2 CPU cores
    "quick": SuitePreset(
        seeds=(0, 1, 2),
        train={"fashion_mnist": QUICK, "mnist": QUICK, "cifar10": QUICK},
        test_limit=2000, fit_images=2000, synthetic_images=2000, allow_sample=True,
        # CIFAR-10's OOD sets as large as its 1,000 test images (all that are here) — balanced classes
        test_limits={"cifar10": 1000},
        # two per-image costs run in the paper preset only: JPEG-XL at effort 9 (~40 ms per 28×28 image on
        # a loaded 2-core machine, more than the rest of the suite together) and likelihood regret (a
        # per-image optimisation, 8–17 ms an image: 2.6 min of the 24.5-min quick suite in its test sets,
        # as much again in its calibrations, for AUROCs of 0.51–0.8; its numbers stay in the paper preset)
        detectors=tuple(d for d in DEFAULT_DETECTORS if d not in ("complexity_jxl", "likelihood_regret"))),
    "paper": SuitePreset(
        seeds=(0, 1, 2),
        train={"fashion_mnist": {"data.holdout": "5000", "train.epochs": "100"},
               "mnist": {"data.holdout": "5000", "train.epochs": "100"},
               "cifar10": {"data.holdout": "5000", "train.epochs": "100", "model.base_channels": "64",
                           "model.latent_dim": "64"}},
        test_limit=None, fit_images=5000, synthetic_images=10000,
        estimator="iwae", estimator_options={"k": 1000}, wide_latent=512, small_latent=2),
}


@dataclass(frozen=True)
class OODSuite:
    name: str
    title: str
    families: dict[str, Family]
    presets: dict[str, SuitePreset]

    def datasets_needed(self) -> list[tuple[str, str]]:
        names = [(f.name, s) for f in self.families.values() for s in ("train", "test")]
        names += [(o, "test") for f in self.families.values() for o in (*f.ood, *f.optional_ood)]
        return list(dict.fromkeys(names))

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None,
            families: tuple[str, ...] | None = None, seeds: tuple[int, ...] | None = None) -> dict:
        """Train, evaluate every detector on every pair for every seed, and write
        ``report.md``, ``metrics.json`` and ``figures/`` into ``out_dir``."""
        pre = self.presets[preset]
        estimator = estimator or pre.estimator
        options = {**(pre.estimator_options if estimator == pre.estimator else {}), **(estimator_options or {})}
        seeds = tuple(seeds if seeds is not None else pre.seeds)
        out_dir.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        wanted = [self.families[f] for f in (families or pre.families or self.families)]
        results: dict[str, dict] = {}
        progress_bar = runs_bar(len(wanted) * len(seeds), self.name, progress)
        for fam in wanted:
            plan = self._plan(fam, pre, data_dir, notes)
            if plan is None:
                continue
            synthetic_dir = write_synthetic(out_dir / "runs" / "data" / "x".join(map(str, fam.shape)), fam.shape,
                                            pre.synthetic_images)
            plan["ood"].append(write_rotated(synthetic_dir, fam, data_dir, pre.allow_sample))
            per_seed = {}
            for seed in seeds:
                progress_bar.set_postfix_str(f"{fam.title} seed {seed}")
                per_seed[seed] = self._one_seed(fam, plan, pre, seed, out_dir, overrides or {}, data_dir,
                                                synthetic_dir, device, estimator, options, progress)
                progress_bar.update()
            results[fam.name] = {"title": fam.title, "ood": plan["ood"], "fit": fam.fit, "seeds": per_seed,
                                 "kinds": {o: fam.kind(o) for o in plan["ood"]},
                                 "summary": aggregate(per_seed), "data": plan["data"]}
        progress_bar.close()
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command,
               **stamp(device), "estimator": estimator, "estimator_options": options, "seeds": list(seeds),
               "settings": _settings(pre), "notes": notes, "families": results}
        out["figures"] = write_figures(out_dir, out)
        out["verdict"] = verdict(out)
        add_best_intervals(out_dir, out)
        out = scrub_paths(out, out_dir)
        atomic_write_json(out_dir / "metrics.json", out)
        atomic_write_text(out_dir / "report.md", render_report(self, out))
        return out

    # -- one family ---------------------------------------------------------------------
    def _plan(self, fam: Family, pre: SuitePreset, data_dir: str | None, notes: list[str]) -> dict | None:
        """Which OOD sets this family is scored against, or None (with a note) when its
        in-distribution data is missing and the family is optional."""
        allow = pre.allow_sample
        data = {}
        try:
            for split in ("train", "test"):
                d = load_dataset(fam.name, split, data_dir=data_dir, allow_sample=allow)
                data[f"{fam.name}/{split}"] = _describe(d)
        except DatasetNotFoundError:
            if not fam.optional:
                raise
            notes.append(f"{fam.title} was not found, so its pairs were skipped (put `{fam.name}_train.npz` / "
                         f"`{fam.name}_test.npz` or the official files in the data folder)")
            return None
        ood = []
        for name in (*fam.ood, *fam.optional_ood):
            try:
                d = load_dataset(name, "test", data_dir=data_dir, allow_sample=allow)
            except DatasetNotFoundError:
                if name not in fam.optional_ood:
                    raise
                notes.append(f"{fam.title} → {name}: {name} was not found on this machine, so this pair was "
                             f"skipped (the official `{name}` test files in the data folder enable it)")
                continue
            data[f"{name}/test"] = _describe(d)
            ood.append(name)
        return {"ood": [*ood, *SYNTHETIC], "data": data}

    def _one_seed(self, fam: Family, plan: dict, pre: SuitePreset, seed: int, out_dir: Path, overrides: dict,
                  data_dir: str | None, synthetic_dir: Path, device: str, estimator: str, options: dict,
                  progress: bool | None) -> dict:
        runs_dir = out_dir / "runs" / f"{fam.name}-seed{seed}"
        base = {"data.name": fam.name, "model.likelihood": "dlogistic", "model.arch": "conv",
                **pre.train[fam.name], "train.seed": str(seed), "train.device": device,
                "data.allow_sample": str(pre.allow_sample).lower(), **overrides}
        latent = Config().override(base).model.latent_dim
        dets = _known_detectors(pre)
        runs, training = _train_models(base, pre, dets, runs_dir, data_dir, progress)
        common = dict(split="test", estimator=estimator, estimator_options=options, data_dir=data_dir,
                      limit=pre.family_test_limit(fam.name), fit_limit=pre.fit_images, device=device, seed=seed,
                      allow_sample=pre.allow_sample, progress=progress, fit=fam.fit,
                      data_dirs={s: str(synthetic_dir) for s in (*SYNTHETIC, fam.rotated)})
        det_opts = {name: dict(pre.detector_options.get(name) or {}) for name in dets}
        if "likelihood_ratio" in det_opts:
            det_opts["likelihood_ratio"]["background_run"] = str(runs["background"])
        for name in ON_WIDE:
            if name in det_opts:
                det_opts[name]["second_run"] = str(runs["small"])
        evaluations, decisions = {}, {}
        groups = {"main": [d for d in dets if d not in ON_WIDE + ON_HVAE],
                  "wide": [d for d in dets if d in ON_WIDE], "hvae": [d for d in dets if d in ON_HVAE]}
        for model, names in groups.items():
            if not names:
                continue
            opts = {d: det_opts[d] for d in names}
            log.info("%s seed %d: scoring %d detector%s on the %s model against %s", fam.title, seed, len(names),
                     "s" * (len(names) > 1), model, ", ".join(plan["ood"]))
            evaluations[model] = evaluate(runs[model], fam.name, plan["ood"], detectors=names, detector_options=opts,
                                          out_dir=runs_dir / f"eval-{model}", **common)
            decisions.update(decision_rates(
                runs[model], fam.name, plan["ood"], names, detector_options=opts, alphas=ALPHAS, split="test",
                limit=pre.family_test_limit(fam.name), n_calibration=pre.fit_images, n_fit=pre.fit_images,
                data_dir=data_dir,
                data_dirs=common["data_dirs"], device=device, seed=seed, fit=fam.fit, allow_sample=pre.allow_sample))
        detectors = {}
        for model, ev in evaluations.items():
            eval_dir = runs_dir / f"eval-{model}"
            for name, per_ood in ev["results"].items():
                info = ev["detectors"][name]
                extra_runs = [v for k, v in EXTRA_RUNS.items() if info["options"].get(k)]
                if model in ("wide", "hvae"):
                    extra_runs = [model, *extra_runs]
                detectors[name] = {
                    "model": model, "metrics": per_ood, "options": info["options"], "paper": info["paper"],
                    "fit": info["fit"], "scores_file": str((eval_dir / ev["detector_scores"][name]).relative_to(out_dir)),
                    "seconds": {"features": info["seconds"]["features_total"], "fit": info["seconds"]["fit"],
                                "score": info["seconds"]["score"],
                                "extra_training": sum(training[r]["train_seconds"] for r in extra_runs)},
                    "extra_runs": extra_runs, "decisions": decisions.get(name)}
        detectors = {d: detectors[d] for d in dets if d in detectors}  # the preset's order
        main = evaluations.get("main") or next(iter(evaluations.values()))
        return {"detectors": detectors, "training": training, "latent_dim": latent,
                "fit_data": main.get("fit_data"), "datasets": main["datasets"], "fitted": main["fitted"],
                "typicality_batch_test": main.get("typicality_batch_test"),
                "skipped": {k: v for ev in evaluations.values() for k, v in ev["skipped"].items()}}

    def summary(self, out: dict) -> str:
        """The AUROC table (mean ± sd over seeds) and the verdict, for the terminal."""
        lines = []
        for name, fam in out["families"].items():
            oods = fam["ood"]
            header = ["detector", *[f"{fam['title']}→{o}" for o in oods]]
            shown = _named_in_verdict(out, name)
            body = [[d, *[_pm(s[o]["auroc"]) for o in oods]] for d, s in fam["summary"].items()
                    if d in shown or len(fam["summary"]) <= SUMMARY_ROWS]
            widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *body]]
            if len(body) < len(fam["summary"]):
                lines.append(f"(the default detector and those the verdict names; the other "
                             f"{len(fam['summary']) - len(body)} are in the report)")
            lines.append("")
        lines += [f"- {line}" for line in out["verdict"]["lines"]]
        lines += [f"NOTE: {n}" for n in out["notes"]]
        if any(d["is_sample"] for f in out["families"].values() for d in f["data"].values()):
            lines.append("NOTE: no dataset was found, so this ran on the small sample bundled with vaeood "
                         "(set VAEOOD_DATA or --data-dir for the real data)")
        return "\n".join(lines)


def _named_in_verdict(out: dict, family: str) -> set[str]:
    """The detectors the terminal's summary shows for ``family``: the default one and those
    the verdict names (the best worst case, overall and by kind, and the best on each pair)."""
    v = out.get("verdict") or {}
    named = {DEFAULT_DETECTOR, (v.get("robust") or {}).get("detector")}
    named |= {r["detector"] for r in (v.get("robust_by_kind") or {}).values() if r}
    named |= {b["detector"] for pair, b in (v.get("best") or {}).items() if pair.split("→")[0] == family}
    return named


def _known_detectors(pre: SuitePreset) -> list[str]:
    """The preset's detectors, refusing a name no detector is registered under."""
    unknown = [d for d in pre.detectors if d not in DETECTORS]
    if unknown:
        raise KeyError(f"ood-suite: unknown detectors {', '.join(unknown)}; known: {', '.join(DETECTORS.names())}")
    return list(pre.detectors)


def _train_models(base: dict, pre: SuitePreset, dets: list[str], runs_dir: Path, data_dir: str | None,
                  progress: bool | None) -> tuple[dict, dict]:
    """Train (or reuse) the models the detectors need: ``main`` always, ``background``
    for the likelihood ratio, ``wide`` and ``small`` for LPath's two-model variant,
    ``hvae`` for LLR>k. Returns the run folders and training summaries by model."""
    variants = {"main": {}, "background": pre.background, "wide": {"model.latent_dim": str(pre.wide_latent)},
                "small": {"model.latent_dim": str(pre.small_latent)}, "hvae": HVAE}
    needed = {"main"}
    if "likelihood_ratio" in dets:
        needed.add("background")
    if any(d in ON_WIDE for d in dets):
        needed |= {"wide", "small"}
    if any(d in ON_HVAE for d in dets):
        needed.add("hvae")
    runs, training = {}, {}
    for variant, extra in variants.items():
        if variant in needed:
            runs[variant] = runs_dir / variant
            training[variant] = train_or_reuse(Config().override({**base, **extra}), runs[variant],
                                               data_dir=data_dir, progress=progress)
    return runs, training


def _describe(d) -> dict:
    return {"n": int(len(d.images)), "source": d.source, "is_sample": bool(d.is_sample)}


def _settings(pre: SuitePreset) -> dict:
    return {"train": pre.train, "test_images_per_set": pre.test_limit, "test_images_per_family": pre.test_limits,
            "fit_images": pre.fit_images,
            "synthetic_images": pre.synthetic_images, "synthetic_seed": SYNTHETIC_SEED, "background": pre.background,
            "wide_latent": pre.wide_latent, "small_latent": pre.small_latent, "detectors": list(pre.detectors),
            "detector_options": pre.detector_options, "likelihood": "dlogistic", "arch": "conv"}


# -- generated OOD sets --------------------------------------------------------------------
def synthetic_images(kind: str, n: int, shape: tuple[int, int, int], seed: int = SYNTHETIC_SEED) -> np.ndarray:
    """Deterministic OOD images, uint8 ``[n, H, W, C]``:

    - ``uniform_noise``: every sub-pixel drawn independently and uniformly from 0..255;
    - ``constant``: every pixel of an image the same colour, one colour per image drawn
      uniformly from 0..255 per channel (grey images: one grey level per image).

    Drawn from NumPy's PCG64 seeded with (``seed``, the kind's index), so the same
    ``(kind, n, shape, seed)`` always gives the same images.
    """
    c, h, w = shape
    rng = np.random.default_rng([seed, SYNTHETIC.index(kind)])
    if kind == "uniform_noise":
        return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    colours = rng.integers(0, 256, size=(n, 1, 1, c), dtype=np.uint8)
    return np.ascontiguousarray(np.broadcast_to(colours, (n, h, w, c)))


def write_synthetic(folder: Path, shape: tuple[int, int, int], n: int) -> Path:
    """Write ``uniform_noise_test.npz`` and ``constant_test.npz`` (``n`` images of
    ``shape``) into ``folder`` unless they are there with the same images already."""
    for kind in SYNTHETIC:
        x = synthetic_images(kind, n, shape)
        _write_set(folder / f"{kind}_test.npz", x[..., 0] if shape[0] == 1 else x,
                   f"{kind}: {n} images {'×'.join(map(str, shape))} generated by vaeood.experiments.ood_suite."
                   f"synthetic_images (seed {SYNTHETIC_SEED})")
    return folder


def write_rotated(folder: Path, fam: Family, data_dir: str | None, allow_sample: bool) -> str:
    """Write the family's test images rotated by 90° (counter-clockwise, ``np.rot90`` on
    height × width) as ``{family}_rot90_test.npz`` into ``folder``; its dataset name. The
    same garments, digits or objects with typical pixel statistics: near-OOD by content."""
    test = load_dataset(fam.name, "test", data_dir=data_dir, allow_sample=allow_sample)
    x = np.ascontiguousarray(np.rot90(test.images, 1, axes=(1, 2)))
    _write_set(folder / f"{fam.rotated}_test.npz", x[..., 0] if x.shape[-1] == 1 else x,
               f"{fam.rotated}: the {len(x)} images of {test.source} rotated by 90 degrees (np.rot90)",
               labels=test.labels)
    return fam.rotated


def _write_set(path: Path, x: np.ndarray, provenance: str, labels: np.ndarray | None = None) -> None:
    """Write a generated OOD set as a dataset file, unless it holds these images already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            if f["x"].shape == x.shape and np.array_equal(f["x"], x):
                return
    y = np.zeros(len(x), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    atomic_write(path, lambda f: np.savez(f, x=x, y=y, provenance=provenance))


# -- summaries -----------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "min": float(arr.min()), "max": float(arr.max()), "values": [float(v) for v in arr]}


def aggregate(per_seed: dict[int, dict]) -> dict:
    """``{detector: {ood: {metric: {mean, sd, min, max, values}}, "seconds": {...}}}`` over seeds."""
    seeds = list(per_seed)
    names = list(per_seed[seeds[0]]["detectors"])
    out = {}
    for name in names:
        runs = [per_seed[s]["detectors"][name] for s in seeds]
        oods = list(runs[0]["metrics"])
        out[name] = {ood: {m: _stats([r["metrics"][ood][m] for r in runs]) for m in METRIC_NAMES} for ood in oods}
        out[name]["seconds"] = {k: _stats([r["seconds"][k] for r in runs]) for k in runs[0]["seconds"]}
    return out


def decision_summary(seeds: dict) -> dict:
    """``{detector: {α: {"fpr": stats, "bound": mean α + binomial 95%, "tpr": {ood: stats}}}}``
    over seeds, from each seed's conformal operating points (``None`` where a seed could
    not be calibrated: the message is kept under ``"error"``)."""
    out = {}
    for name in next(iter(seeds.values()))["detectors"]:
        per = [r["detectors"][name].get("decisions") for r in seeds.values()]
        if not all(p and "alphas" in p for p in per):
            out[name] = {"error": next((p.get("error") for p in per if p and "error" in p), "not calibrated")}
            continue
        out[name] = {}
        for key in per[0]["alphas"]:
            entries = [p["alphas"][key] for p in per]
            if any("error" in e for e in entries):
                out[name][key] = {"error": "too few calibration images"}
                continue
            out[name][key] = {"fpr": _stats([e["fpr"] for e in entries]),
                              "bound": float(np.mean([e["fpr_binomial_upper95"] for e in entries])),
                              "tpr": {o: _stats([e["tpr"][o]["tpr"] for e in entries]) for o in entries[0]["tpr"]}}
    return out


def decision_section(families: dict) -> list[str]:
    """The report's table of conformal decisions: per detector and α, the realised
    false-alarm rate on the in-distribution test images and the TPR on each OOD set."""
    lines = ["## Decisions at a chosen false-alarm rate (conformal, `vaeood detect`)", "",
             "Each detector's threshold at α is calibrated on held-out training images (after its fitting slice, "
             "never test images): flag an image when its conformal p-value (1 + #{calibration scores ≥ s})/(n + 1) "
             "is ≤ α, which guarantees a false-alarm rate ≤ α in expectation for exchangeable in-distribution "
             "images (marginal guarantee; Bates et al. 2023). Realised FPR on the in-distribution test images and "
             "TPR on each OOD set, mean ± sd over seeds; 'bound' is α plus the binomial 95% margin for this many "
             "test images.", ""]
    for fam in families.values():
        dec = decision_summary(fam["seeds"])
        oods = fam["ood"]
        rows = []
        for name, per_alpha in dec.items():
            if "error" in per_alpha:
                rows.append([f"`{name}`", "—", per_alpha["error"].splitlines()[0][:100], "—", *["—"] * len(oods)])
                continue
            for key, d in per_alpha.items():
                if "error" in d:
                    rows.append([f"`{name}`", key, d["error"], "—", *["—"] * len(oods)])
                    continue
                rows.append([f"`{name}`", key, _pm(d["fpr"]), f"{d['bound']:.3f}",
                             *[_pm(d["tpr"][o]) if o in d["tpr"] else "—" for o in oods]])
        lines += [f"### {fam['title']}", "",
                  markdown_table(["detector", "α", "realised FPR", "bound", *[f"TPR {o}" for o in oods]], rows), ""]
    return lines


def _pm(stats: dict, digits: int = 3) -> str:
    if len(stats.get("values", ())) == 1:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"


def verdict(out: dict) -> dict:
    """Which detector to use: the best per pair, the one whose worst pair is best (over
    every pair, and over the far-OOD and the near-OOD pairs apart), and every (detector,
    pair) whose mean AUROC is below :data:`WEAK_BELOW` (fails: below :data:`FAIL_BELOW`,
    i.e. it ranks OOD images as more in-distribution)."""
    pairs = [(fam, ood) for fam, f in out["families"].items() for ood in f["ood"]]
    if not pairs:
        return {"lines": ["no pair was evaluated"], "best": {}, "failures": []}
    detectors = list(dict.fromkeys(d for f in out["families"].values() for d in f["summary"]))
    auroc = {(d, fam, ood): out["families"][fam]["summary"][d][ood]["auroc"]
             for d in detectors for fam, ood in pairs if d in out["families"][fam]["summary"]}
    best = {}
    for fam, ood in pairs:
        ranked = sorted((auroc[(d, fam, ood)]["mean"], d) for d in detectors if (d, fam, ood) in auroc)
        best[f"{fam}→{ood}"] = {"detector": ranked[-1][1], "auroc": ranked[-1][0]}
    kind_of = {(fam, ood): (out["families"][fam].get("kinds") or {}).get(ood, "far") for fam, ood in pairs}
    by_kind = {kind: _robust(auroc, detectors, [p for p in pairs if kind_of[p] == kind]) for kind in ("far", "near")}
    worst, robust = _robust(auroc, detectors, pairs)
    failures = [{"detector": d, "pair": f"{fam}→{ood}", "auroc": auroc[(d, fam, ood)]["mean"],
                 "auroc_sd": auroc[(d, fam, ood)]["sd"], "ood_kind": kind_of[(fam, ood)],
                 "kind": "fails (inverted)" if auroc[(d, fam, ood)]["mean"] < FAIL_BELOW else "weak"}
                for d in detectors for fam, ood in pairs
                if (d, fam, ood) in auroc and auroc[(d, fam, ood)]["mean"] < WEAK_BELOW]
    lines = [f"Best worst case: `{robust}` (lowest mean AUROC over every pair {worst[robust]:.3f})."]
    for kind, (w, r) in by_kind.items():
        if r is not None:
            lines.append(f"Best worst case on {kind}-OOD pairs: `{r}` (lowest mean AUROC {w[r]:.3f}).")
    for pair, b in best.items():
        lines.append(f"Best on {pair}: `{b['detector']}` (AUROC {b['auroc']:.4f}).")
    return {"lines": lines, "best": best, "robust": {"detector": robust, "worst_auroc": worst[robust]},
            "robust_by_kind": {k: ({"detector": r, "worst_auroc": w[r]} if r else None)
                               for k, (w, r) in by_kind.items()},
            "worst_by_detector": worst, "failures": failures}


def add_best_intervals(out_dir: Path, out: dict) -> None:
    """The best detector of every pair, and the default detector ``fused`` on every pair,
    get the AUROC's 95% interval and verdict word (the two-level bootstrap over seeds and
    test images of :func:`vaeood.evaluation.intervals.seed_summary`): in ``verdict["best"]`` and its
    line, and in ``verdict["default"]``."""
    v = out["verdict"]
    v["default"] = {}
    for pair, best in v.get("best", {}).items():
        fam_name, ood = pair.split("→")
        fam = out["families"][fam_name]
        for name in dict.fromkeys([best["detector"], DEFAULT_DETECTOR]):
            if name not in fam["summary"]:
                continue
            scores = [_load_scores(out_dir, fam, name, seed) for seed in fam["seeds"]]
            summary = seed_summary([(s[fam_name], s[ood]) for s in scores])
            record = {"auroc": summary.mean, "interval": list(summary.interval), "verdict": summary.verdict,
                      "text": summary.text()}
            if name == best["detector"]:
                best.update(record)
            if name == DEFAULT_DETECTOR:
                v["default"][pair] = {"detector": name, **record}
        v["lines"] = [f"Best on {pair}: `{best['detector']}` ({best['text']})." if line.startswith(f"Best on {pair}:")
                      else line for line in v["lines"]]


def _robust(auroc: dict, detectors: list[str], pairs: list) -> tuple[dict, str | None]:
    """Each detector's lowest mean AUROC over the ``pairs`` it ran on, and the detector
    whose lowest is highest (None without pairs)."""
    worst = {d: min(auroc[(d, *p)]["mean"] for p in pairs if (d, *p) in auroc) for d in detectors
             if any((d, *p) in auroc for p in pairs)}
    return worst, (max(worst, key=worst.get) if worst else None)


# -- paths ---------------------------------------------------------------------------------
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[\w.+=-]+/)*[\w.+=-]+")


def scrub_paths(value, out_dir: Path):
    """Absolute paths in results become portable: relative to ``out_dir`` when inside
    it, else the file's name (provenance is names and digests, not the machine's folders)."""
    root = str(out_dir.resolve())

    def fix(match: re.Match) -> str:
        path = match.group(0)
        resolved = str(Path(path).resolve()) if path.startswith("/") else path
        if resolved == root:
            return out_dir.name
        if resolved.startswith(root + "/"):
            return str(Path(resolved).relative_to(root))
        return Path(path).name

    if isinstance(value, dict):
        return {k: scrub_paths(v, out_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_paths(v, out_dir) for v in value]
    if isinstance(value, str):
        absolute_out = str(out_dir.resolve())
        if not out_dir.is_absolute():
            value = value.replace(str(out_dir) + "/", absolute_out + "/")
        return _ABS_PATH.sub(fix, value)
    return value


# -- figures -------------------------------------------------------------------------------
def _load_scores(out_dir: Path, family: dict, name: str, seed) -> dict[str, np.ndarray]:
    path = Path(family["seeds"][seed]["detectors"][name]["scores_file"])
    path = path if path.is_absolute() else out_dir / path
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_figures(out_dir: Path, out: dict) -> dict:
    """Per family: ROC curves of every detector (every seed; seed 0 solid) and
    histograms of its scores (first seed), in ``out_dir/figures``."""
    from matplotlib.figure import Figure  # on use (slow import); not pyplot: no global state
    from sklearn.metrics import roc_curve

    figures = {}
    for fam_name, fam in out["families"].items():
        names = list(fam["summary"])
        seeds = list(fam["seeds"])
        cols = min(4, len(names))
        rows = math.ceil(len(names) / cols)
        roc = Figure(figsize=(3.6 * cols, 3.3 * rows), dpi=100)
        hist = Figure(figsize=(3.6 * cols, 3.0 * rows), dpi=100)
        roc_axes = roc.subplots(rows, cols, squeeze=False).ravel()
        hist_axes = hist.subplots(rows, cols, squeeze=False).ravel()
        colours = {o: f"C{i}" for i, o in enumerate(fam["ood"])}
        for ax_r, ax_h, name in zip(roc_axes, hist_axes, names):
            for k, seed in enumerate(seeds):
                scores = _load_scores(out_dir, fam, name, seed)
                s_in = scores[fam_name]
                for ood in fam["ood"]:
                    s_out = scores[ood]
                    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
                    fpr, tpr, _ = roc_curve(labels, np.r_[s_in, s_out])
                    label = f"{ood} ({fam['summary'][name][ood]['auroc']['mean']:.3f})" if k == 0 else None
                    ax_r.plot(fpr, tpr, color=colours[ood], alpha=1.0 if k == 0 else 0.35, lw=1.2 if k == 0 else 0.8,
                              label=label)
                if k == 0:
                    _histogram(ax_h, {fam_name: s_in, **{o: scores[o] for o in fam["ood"]}},
                               {fam_name: "k", **colours})
            ax_r.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
            ax_r.set_title(name, fontsize=9)
            ax_r.set_xlabel("FPR", fontsize=8)
            ax_r.set_ylabel("TPR", fontsize=8)
            ax_r.legend(fontsize=6, loc="lower right", title="OOD (mean AUROC)", title_fontsize=6)
            ax_h.set_title(name, fontsize=9)
            ax_h.set_xlabel("score (higher = more OOD)", fontsize=8)
            ax_h.legend(fontsize=6)
        for ax in [*roc_axes[len(names):], *hist_axes[len(names):]]:
            ax.set_visible(False)
        roc.suptitle(f"ROC curves, VAE trained on {fam['title']} (OOD positive; {len(seeds)} seeds, first solid)")
        hist.suptitle(f"Detector scores, VAE trained on {fam['title']} (seed {seeds[0]}; "
                      "around the in-distribution scores, the rest in the end bins)")
        for fig, kind in ((roc, "roc"), (hist, "hist")):
            fig.tight_layout()
            path = out_dir / "figures" / f"{kind}_{fam_name}.png"
            _save_png(fig, path)
            figures[f"{kind}_{fam_name}"] = f"figures/{path.name}"
    return figures


def _histogram(ax, values: dict[str, np.ndarray], colours: dict[str, str]) -> None:
    """Overlaid density histograms on shared bins around the in-distribution scores (the
    first set): from its 0.5% to its 99.5% quantile, widened by twice that span on each
    side (noise images can score 10⁴× the rest); values outside are clipped into the end bins."""
    finite = {k: v[np.isfinite(v)] for k, v in values.items()}
    ref = next(iter(finite.values()))
    q_lo, q_hi = np.quantile(ref, [0.005, 0.995])
    span = max(q_hi - q_lo, 1e-9)
    pooled = np.concatenate(list(finite.values()))
    lo, hi = max(pooled.min(), q_lo - 2 * span), min(pooled.max(), q_hi + 2 * span)
    if not hi > lo:
        lo, hi = pooled.min(), pooled.max() + 1e-9
    bins = np.linspace(lo, hi, 50)
    for name, v in finite.items():
        ax.hist(np.clip(v, lo, hi), bins=bins, density=True, alpha=0.45, color=colours[name], label=name)


def _save_png(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


# -- report --------------------------------------------------------------------------------
def render_report(exp: OODSuite, out: dict) -> str:
    families = out["families"]
    samples = [f"{k} ({d['source']})" for f in families.values() for k, d in f["data"].items() if d["is_sample"]]
    lines = report_header(exp.title, out, samples)
    s = out["settings"]
    lines += ["## Set-up", "",
              f"- Seeds: {', '.join(map(str, out['seeds']))} (each trains its own models; the tables give mean ± sd "
              "over seeds, sd with ddof = 1).",
              f"- Models per dataset and seed, all conv VAEs with the discretised-logistic decoder: `main` "
              f"(latent {next(iter(next(iter(families.values()))['seeds'].values()))['latent_dim'] if families else '?'}), "
              f"`background` (pixels replaced by uniform noise at rate {s['background'].get('data.noise_rate')}, "
              f"L2 weight decay {s['background'].get('train.weight_decay')}; Ren et al. 2019), `wide` (latent "
              f"{s['wide_latent']}) and `small` (latent {s['small_latent']}) for `lpath_2m` (Huang et al. 2024)"
              + ("; `hvae` (three latent layers, KL warm-up and free nats, the same budget) for `llr` (Havtorn "
                 "et al. 2021)." if "llr" in s["detectors"] else "."),
              "- Training budgets: " + "; ".join(f"{k}: " + ", ".join(f"`{a}={b}`" for a, b in v.items())
                                                  for k, v in s["train"].items() if k in families) + ".",
              f"- Log-likelihood estimator for `nll`, `bpd`, `complexity*`, `likelihood_ratio`, `typicality`: "
              f"{out['estimator']}{' ' + str(out['estimator_options']) if out['estimator_options'] else ''}; "
              "`dose` uses the ELBO's terms with one sample (the paper's statistics).",
              f"- Test images per set: {s['test_images_per_set'] or 'all'} (the first ones of each test split"
              + "".join(f"; {k}: {v}" for k, v in (s.get("test_images_per_family") or {}).items() if k in families)
              + "); "
              f"uniform-noise and constant images: {s['synthetic_images']} per image shape, generated with seed "
              f"{s['synthetic_seed']} (the same for every model).", ""]
    for fam_name, f in families.items():
        fitted = next(iter(f["seeds"].values())).get("fitted") or {}
        if fitted:
            lines += [f"- {f['title']}: OOD images of another shape were fitted to the model ("
                      + "; ".join(f"{k}: {v}" for k, v in fitted.items()) + "); the fit changes the likelihood."]
    if any((next(iter(f["seeds"].values())).get("fitted") or {}) for f in families.values()):
        lines += [""]
    lines += _report_detectors(out)
    lines += _report_aurocs(out)
    lines += _report_costs(out)
    lines += _report_closing(out)
    return "\n".join(lines)


CAVEATS = [
    "`dose_plus`'s three statistics were chosen on development runs of Fashion-MNIST → MNIST (the first 2,000 "
    "test images of each, one VAE at this preset's budget and one at fig2a quick's): its Fashion-MNIST → MNIST "
    "number is not out of sample; every other pair is.",
    "`likelihood_ratio`'s background model here is a VAE of the main model's configuration and budget (Ren et "
    "al. used PixelCNN models); its noise rate and L2 weight are the paper's range, not tuned.",
    "`fused` combines the best far-OOD and the best near-OOD evidence seen on a development Fashion-MNIST model "
    "(MNIST, noise, constant and rotated images), and `latent_knn`'s default (no L2 normalisation) was set after "
    "seeing the same development pairs: their Fashion-MNIST numbers are not out of sample. `fused`'s rule "
    "(Fisher's), folds and tail were fixed before any measurement; its fit reads held-out training images only.",
]


def _report_detectors(out: dict) -> list[str]:
    """The detectors table, the fitting slices and the notes."""
    families = out["families"]
    lines: list[str] = []
    lines += ["### Detectors", ""]
    first = {d: r for f in families.values() for d, r in next(iter(f["seeds"].values()))["detectors"].items()}
    lines += [markdown_table(["detector", "paper", "runs on", "fits", "options"],
                             [[f"`{d}`", r["paper"], " + ".join([r["model"], *[e for e in r["extra_runs"]
                                                                               if e != r["model"]]]),
                               "yes" if r["fit"] else "no",
                               ", ".join(f"{k}={v}" for k, v in r["options"].items() if not k.endswith("_run"))]
                              for d, r in first.items()]), ""]
    lines += ["### Fitting data (held-out training images, never test images)", ""]
    rows = []
    for fam_name, f in families.items():
        for seed, r in f["seeds"].items():
            fd = r.get("fit_data")
            if fd:
                rows.append([fam_name, seed, f"{fd['dataset']}/{fd['split']}", f"[{fd['start']}, {fd['stop']})",
                             fd["n"], f"[{fd['trained_range'][0]}, {fd['trained_range'][1]})", fd["source"]])
    lines += [markdown_table(["dataset", "seed", "fit split", "fit images", "n", "trained on", "source"], rows), ""]
    for note in out["notes"]:
        lines += [f"> Note: {note}.", ""]
    return lines


def _report_aurocs(out: dict) -> list[str]:
    """AUROC per detector and pair, and every metric per pair."""
    families = out["families"]
    lines: list[str] = []
    lines += ["## AUROC per detector and pair (mean ± sd over seeds)", "",
              "OOD is the positive class; higher scores mean more out-of-distribution. 0.5 is chance; below 0.5 "
              "the detector ranks the OOD images as *more* in-distribution. *far*: another dataset, noise or "
              "constant images, whose pixel statistics differ; *near*: images whose pixel statistics stay typical "
              "but whose content is wrong (the in-distribution test images rotated by 90°; for CIFAR-10, Tiny "
              "ImageNet's natural images of other classes).", ""]
    pairs = [(fam, o) for fam, f in families.items() for o in f["ood"]]
    detectors = list(dict.fromkeys(d for f in families.values() for d in f["summary"]))
    header = ["detector", *[f"{families[fam]['title']} → {o} ({(families[fam].get('kinds') or {}).get(o, 'far')})"
                            for fam, o in pairs]]
    rows = []
    for d in detectors:
        row = [f"`{d}`"]
        for fam, o in pairs:
            st = families[fam]["summary"].get(d, {}).get(o)
            row.append(_pm(st["auroc"]) if st else "—")
        rows.append(row)
    lines += [markdown_table(header, rows), ""]

    lines += ["## Every metric, per pair", "",
              "AUPRC-in takes in-distribution as the positive class, AUPRC-out the OOD set; FPR@95 is the fraction "
              "of in-distribution test images flagged at the threshold that catches 95% of the OOD images.", ""]
    for fam, o in pairs:
        summ = families[fam]["summary"]
        lines += [f"### {families[fam]['title']} → {o}", ""]
        rows = [[f"`{d}`", _pm(summ[d][o]["auroc"]), _pm(summ[d][o]["auprc_in"]), _pm(summ[d][o]["auprc_out"]),
                 _pm(summ[d][o]["fpr_at_95_tpr"])] for d in summ if o in summ[d]]
        lines += [markdown_table(["detector", "AUROC", "AUPRC-in", "AUPRC-out", "FPR@95%TPR"], rows), ""]
    return lines


def _report_costs(out: dict) -> list[str]:
    """What each detector costs, the conformal decisions and the typicality batch test."""
    families = out["families"]
    lines: list[str] = []
    lines += ["## What each detector costs", "",
              "Seconds on this machine (mean over seeds), for all the images of one dataset's evaluation (fit "
              "slice + in-distribution test set + every OOD set): computing the features it needs (each "
              "detector's own, as if run alone; shared features are cached and computed once in practice), "
              "fitting, scoring, and training the extra models it needs.", ""]
    rows = []
    for fam_name, f in families.items():
        for d, summ in f["summary"].items():
            sec = summ["seconds"]
            r0 = f["seeds"][next(iter(f["seeds"]))]["detectors"][d]
            rows.append([fam_name, f"`{d}`", f"{sec['features']['mean']:.1f}", f"{sec['fit']['mean']:.2f}",
                         f"{sec['score']['mean']:.3f}", f"{sec['extra_training']['mean']:.1f}",
                         ", ".join(r0["extra_runs"]) or "—"])
    lines += [markdown_table(["dataset", "detector", "features [s]", "fit [s]", "score [s]", "extra training [s]",
                              "extra models"], rows), ""]

    lines += decision_section(families)

    tb = {fam: f["seeds"] for fam, f in families.items()}
    rows = []
    for fam_name, seeds in tb.items():
        tests = [r.get("typicality_batch_test") for r in seeds.values() if r.get("typicality_batch_test")]
        if not tests:
            continue
        for ood in tests[0]:
            ms = list(tests[0][ood]["by_m"])
            rows.append([fam_name, ood, *[
                f"{np.mean([t[ood]['by_m'][m]['power'] for t in tests]):.3f}" for m in ms],
                f"{np.mean([t[ood]['by_m'][ms[0]]['false_alarm'] for t in tests]):.3f}"])
    if rows:
        lines += ["## Typicality as the paper's batch test", "",
                  "Power (fraction of OOD batches of M images flagged) at level α = 0.01, the threshold set by "
                  "bootstrap on held-out training batches (Nalisnick et al. 2019b); mean over seeds.", "",
                  markdown_table(["dataset", "OOD", *[f"M = {m}" for m in ms], "false alarms at M = 1"], rows), ""]
    return lines


def _report_closing(out: dict) -> list[str]:
    """Figures, training and which detector to use."""
    families = out["families"]
    lines: list[str] = []
    lines += ["## Figures", ""]
    for key, path in out["figures"].items():
        lines += [f"![{key}]({path})", ""]

    lines += ["## Training", ""]
    rows = []
    for fam_name, f in families.items():
        for seed, r in f["seeds"].items():
            for variant, t in r["training"].items():
                rows.append([fam_name, seed, variant, t["config"]["model"]["latent_dim"], t["num_parameters"],
                             t["epochs"], round(t["final_train_loss_nats"], 1), round(t["train_seconds"], 1)])
    lines += [markdown_table(["dataset", "seed", "model", "latent", "parameters", "epochs", "final train loss [nats]",
                              "train time [s]"], rows), ""]

    lines += ["## Which detector to use", ""] + _closing(out) + [""]
    lines += ["Runs, per-image features and per-image detector scores are in `runs/` (not committed); "
              "`metrics.json` holds every number above.", ""]
    return lines


def _closing(out: dict) -> list[str]:
    v = out["verdict"]
    if not v.get("best"):
        return ["No pair was evaluated."]
    lines = [f"- {line}" for line in v["lines"]]
    fails = [f for f in v["failures"] if f["kind"].startswith("fails")]
    weak = [f for f in v["failures"] if not f["kind"].startswith("fails")]
    if fails or weak:
        lines += [f"- Where detectors fail (mean AUROC below {FAIL_BELOW}: the OOD set is ranked as *more* "
                  f"in-distribution) or are weak (below {WEAK_BELOW}):", "",
                  markdown_table(["detector", "pair", "AUROC (mean ± sd)", "verdict", "short of 0.9 by"],
                                 [[f"`{f['detector']}`", f["pair"], f"{f['auroc']:.3f} ± {f['auroc_sd']:.3f}",
                                   "**fails**: inverted" if f in fails else "weak", f"{WEAK_BELOW - f['auroc']:.3f}"]
                                  for f in sorted(fails + weak, key=lambda f: f["auroc"])]), ""]
    if v.get("default"):
        lines += [f"- `{DEFAULT_DETECTOR}`, the detector to pick, on every pair (mean over seeds, 95% interval over "
                  "seeds and test images):", "",
                  markdown_table(["pair", "kind", "AUROC", "95% interval", "verdict"],
                                 [[pair, (out["families"][pair.split("→")[0]].get("kinds") or {}).get(
                                     pair.split("→")[1], "far"), f"{d['auroc']:.3f}",
                                   f"{d['interval'][0]:.3f}–{d['interval'][1]:.3f}", d["verdict"]]
                                  for pair, d in v["default"].items()]), ""]
    ok = [d for d, w in v["worst_by_detector"].items() if w >= WEAK_BELOW]
    if ok:
        lines.append(f"- Above {WEAK_BELOW} on every pair: " + ", ".join(
            f"`{d}` (worst {v['worst_by_detector'][d]:.3f})" for d in sorted(ok, key=lambda d: -v['worst_by_detector'][d]))
            + ".")
    else:
        lines.append(f"- No detector stays above {WEAK_BELOW} on every pair.")
    skipped = sorted(set(DEFAULT_DETECTORS) - set(v["worst_by_detector"]))
    if skipped:
        lines.append(f"- Not run by this preset: {', '.join(f'`{d}`' for d in skipped)} (see the preset's comment; "
                     "`--preset paper` runs every detector).")
    lines += [f"- Caveat: {c}" for c in CAVEATS]
    return lines


EXPERIMENTS.register("ood-suite")(OODSuite(
    name="ood-suite",
    title="OOD detector suite: every detector on every pair",
    families=FAMILIES,
    presets=PRESETS,
))
