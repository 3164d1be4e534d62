"""The study's Figure 2, reproduced with named presets, over several training seeds.

``fig2a``: VAEs trained on Fashion-MNIST, scored on the Fashion-MNIST and MNIST test
sets (the study's Figure 2a). Three model variants:

- ``keras_blog``: the study's own architecture. Its Figure 1 comes from the Keras blog
  "Building Autoencoders in Keras" (Chollet 2016), whose VAE is fully connected: 784
  inputs, one ReLU hidden layer of 256 units, a 2-dimensional latent, a Bernoulli
  (binary cross-entropy) decoder on grey levels, batch 100, 50 epochs;
- ``study_bernoulli``: the conv VAE with the same Bernoulli decoder;
- ``dlogistic``: the conv VAE with a discretised-logistic decoder, a normalised pmf over
  8-bit values whose bits/dim mean something.

``fig2b``: the conv variants for CIFAR-10 vs SVHN (Figure 2b; Nalisnick et al. 2019
found SVHN gets *higher* likelihood). Where SVHN is not on disk it scores Tiny ImageNet
and MNIST padded to 32×32 RGB instead, and the report says so.

Every variant is trained with each of the preset's seeds (≥ 3) and scored on the same
test images. A verdict is the word of the 95% interval of the seed-mean AUROC of
−log p(x) (OOD positive; :mod:`vaeood.evaluation.intervals`): *separates*, *inverted* or
*indistinguishable*, reported beside the mean ± sd over seeds and each seed's
image-bootstrap interval.

"Is it the variance?" (:mod:`vaeood.evaluation.variance`, :mod:`.variance_runs`): for every (variant,
OOD set) pair, the study's explanation — the OOD set is more likely because of its smaller
pixel variance — is tested on the same scores: Spearman ρ of per-image variance and mean
with log p(x), and the OOD images rescaled in contrast to the in-distribution variance and
scored again on the side, with a verdict word (*supported*, *not supported*, *partly*).
It only adds to ``metrics.json`` (key ``variance``) and the report; every other number is
the same as without it (``run(..., variance=False)``).

"The same question in feature space" (:mod:`.fig2_features`): the likelihood test asked of a
density of a pretrained backbone's features, fitted on the in-distribution training images,
with the same verdict rule. It too only adds (key ``feature_space``; ``run(..., features=False)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..infra.atomic import atomic_write_json, atomic_write_text
from ..training.config import Config
from ..evaluation.intervals import N_BOOT, mean_sd
from ..evaluation.metrics import METRIC_NAMES
from ..evaluation.report import METRIC_LABELS, histogram_panels, interval_text, markdown_table, pm, text_table
from ..data import DatasetNotFoundError, load_dataset
from ..evaluation.log_px import log_px, log_px_meta
from .common import (LIKELIHOOD_DETECTORS, EXPERIMENTS, INTERVAL_METHOD, VERDICT_RULE, auroc_summary, per_image_scores,
                     report_header, run_evaluate, runs_bar, sample_sources, stamp, strict_json)
from .fig2_features import feature_panel, feature_section
from .reuse import train_or_reuse
from .variance_runs import variance_pairs, variance_record, variance_section


@dataclass(frozen=True)
class Preset:
    """Budget of one preset: config overrides shared by all models, per-variant budget
    overrides (applied over the variant's own), the training seeds, and scoring settings."""

    overrides: dict[str, str]
    estimator: str = "elbo"
    estimator_options: dict = field(default_factory=dict)
    allow_sample: bool = False  # quick presets fall back to the bundled offline sample
    score_limit: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    variant_overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    n_boot: int = N_BOOT
    note: str = ""  # what the budget leaves out, for the report
    feature_limits: tuple = (None, None)  # the feature panel's training images, test images a set (None: all)


@dataclass(frozen=True)
class Fig2Experiment:
    """Train model variants on ``in_dataset``; compare its test set with OOD test sets."""

    name: str
    title: str
    in_dataset: str
    ood_datasets: tuple[str, ...]
    claim: str  # what the study reports, checked against our numbers
    models: dict[str, dict[str, str]]  # variant name → config overrides
    presets: dict[str, Preset]
    descriptions: dict[str, str] = field(default_factory=dict)  # variant name → what it is
    detectors: tuple[str, ...] = LIKELIHOOD_DETECTORS
    fallback_ood: tuple[str, ...] = ()  # scored instead of the missing ``ood_datasets`` (with a note)
    conform: str | None = None  # how OOD sets of another image shape are conformed to the model (``"pad"``)
    own_keys: tuple[str, ...] = ("data.name", "train.seed")  # set for each run: not overridable

    def configs(self, preset: str, *, overrides: dict[str, str] | None = None,
                device: str = "cpu") -> dict[tuple[str, int], Config]:
        """(variant, seed) → the config of its run: the preset's overrides, the variant's,
        the preset's budget for the variant, the seed, then the caller's overrides."""
        pre = self.presets[preset]
        return {(variant, seed): Config().override({
            **pre.overrides, **variant_overrides, **pre.variant_overrides.get(variant, {}),
            "train.seed": str(seed), "train.device": device, "data.allow_sample": str(pre.allow_sample).lower(),
            **(overrides or {})})
            for variant, variant_overrides in self.models.items() for seed in pre.seeds}

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None,
            detectors: tuple[str, ...] | None = None, variance: bool = True, features: bool = True) -> dict:
        """Train every (model variant, seed) under ``preset`` into ``out_dir/runs/VARIANT_seedS``
        (finished runs are reused), evaluate each on the in-distribution and OOD test sets
        with every detector, summarise over seeds with intervals, and write ``report.md``,
        ``metrics.json`` and ``figures/`` into ``out_dir``. ``variance``: add the test of the variance
        explanation (:mod:`vaeood.evaluation.variance`) for every (variant, OOD set) pair; ``features``:
        the feature-space panel (:mod:`.fig2_features`)."""
        pre = self.presets[preset]
        oods, ood_note = self.available_ood(data_dir, pre.allow_sample)
        self = replace(self, ood_datasets=oods)  # noqa: PLW0642  (the OOD sets on this machine, for every step below)
        detectors = tuple(detectors or self.detectors)
        estimator = estimator or pre.estimator
        # options given on the command line (--k, --refine-steps) update the preset's
        options = {**(pre.estimator_options if estimator == pre.estimator else {}), **(estimator_options or {})}
        out_dir.mkdir(parents=True, exist_ok=True)
        score_kwargs = dict(split="test", estimator=estimator, estimator_options=options, data_dir=data_dir,
                            limit=pre.score_limit, device=device, allow_sample=pre.allow_sample, progress=progress,
                            conform=self.conform)
        configs = self.configs(preset, overrides=overrides, device=device)
        models, elbos, checks = {}, {}, {}
        progress_bar = runs_bar(len(self.models) * len(pre.seeds), self.name, progress)
        for variant in self.models:
            runs, pairs = {}, {d: {o: [] for o in self.ood_datasets} for d in detectors}
            run_dirs = [out_dir / "runs" / f"{variant}_seed{seed}" for seed in pre.seeds]
            for seed, run_dir in zip(pre.seeds, run_dirs, strict=True):
                progress_bar.set_postfix_str(f"{variant} seed {seed}")
                runs[f"seed{seed}"] = self._run_seed(run_dir, out_dir / variant / f"seed{seed}",
                                                     configs[(variant, seed)], detectors, pairs, score_kwargs)
                if seed == pre.seeds[0]:  # the Figure 2 panels show the first seed's model
                    elbos[variant] = {name: _elbo(log_px(run_dir, name, **score_kwargs))
                                      for name in (self.in_dataset, *self.ood_datasets)}
                progress_bar.update()
            models[variant] = self._variant_summary(variant, runs, pairs, detectors, pre)
            if variance:  # only adds: the rescaled images are scored on the side, nothing above changes
                # of the model's own shape only: padding changes the pixel statistics the check is about
                same_shape = [o for o in self.ood_datasets
                              if not log_px_meta(log_px(run_dirs[0], o, **score_kwargs))["conform"]]
                checks[variant] = variance_pairs(self.in_dataset, same_shape, run_dirs, score_kwargs, n_boot=pre.n_boot)
        progress_bar.close()
        figure = self._elbo_figure(out_dir, elbos, models, pre.seeds[0])
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command,
               "claim": self.claim, "estimator": estimator, "estimator_options": options, **stamp(device),
               "seeds": list(pre.seeds), "detectors": list(detectors), "score_limit": pre.score_limit,
               "note": pre.note, "ood_note": ood_note,
               "interval": {"level": 0.95, "n_boot": pre.n_boot, "method": INTERVAL_METHOD, "rule": VERDICT_RULE},
               "verdict": {f"{v}/{o}" + ("" if d == "nll" else f" [{d}]"): m["summary"][d][o]["auroc"]["text"]
                           for v, m in models.items() for d in detectors for o in self.ood_datasets},
               "figures": {"elbo_histograms": f"figures/{figure.name}"},
               "models": models}
        if variance:
            out["variance"] = variance_record(checks)
        if features:  # only adds: the pixel numbers above are the same without it
            out["feature_space"] = feature_panel(self, out_dir, pre, score_kwargs)
        atomic_write_json(out_dir / "metrics.json", strict_json(out))
        atomic_write_text(out_dir / "report.md", render_report(self, out))
        return out

    def _elbo_figure(self, out_dir: Path, elbos: dict, models: dict, seed: int) -> Path:
        """The Figure 2 panels: per-image ELBO of the test sets, one panel per variant (its seed-``seed`` run)."""
        (out_dir / "figures").mkdir(exist_ok=True)
        return histogram_panels(out_dir / "figures" / f"{self.name}_elbo_histograms.png",
                                {f"{v} ({models[v]['likelihood']}, seed {seed})": e for v, e in elbos.items()},
                                "ELBO [nats]", f"{self.in_dataset} VAEs: per-image ELBO of the test sets")

    def _run_seed(self, run_dir: Path, eval_out: Path, config: Config, detectors: tuple[str, ...], pairs: dict,
                  score_kwargs: dict) -> dict:
        """Train (or reuse) one (variant, seed) run, evaluate it into ``eval_out`` and append
        its per-image scores to ``pairs[detector][ood]``; its evaluation with its training."""
        kw = score_kwargs
        training = train_or_reuse(config, run_dir, data_dir=kw["data_dir"], progress=kw["progress"])
        eval_out.mkdir(parents=True, exist_ok=True)
        result = run_evaluate(run_dir, self.in_dataset, list(self.ood_datasets), detectors=detectors,
                              estimator=kw["estimator"], estimator_options=kw["estimator_options"], out_dir=eval_out,
                              data_dir=kw["data_dir"], limit=kw["limit"], device=kw["device"],
                              allow_sample=kw["allow_sample"], progress=kw["progress"], conform=kw["conform"])
        result["training"] = training
        for d in detectors:
            s_in = per_image_scores(run_dir, self.in_dataset, d, **kw)
            for o in self.ood_datasets:
                pairs[d][o].append((s_in, per_image_scores(run_dir, o, d, **kw)))
        return result

    def _variant_summary(self, variant: str, runs: dict, pairs: dict, detectors: tuple[str, ...],
                         pre: Preset) -> dict:
        """One model variant's entry of ``metrics.json``: its AUROC per detector and OOD set
        over seeds (from the per-image score ``pairs``), other metrics' mean ± sd, its runs."""
        first = runs[f"seed{pre.seeds[0]}"]
        return {
            "description": self.descriptions.get(variant, ""), "likelihood": first["likelihood"],
            "normalised": first["normalised"], "config": first["training"]["config"],
            "summary": {d: {o: {"auroc": auroc_summary(pairs[d][o], n_boot=pre.n_boot),
                                **{m: mean_sd([r["results"][d][o][m] for r in runs.values()])
                                   for m in METRIC_NAMES if m != "auroc"}}
                            for o in self.ood_datasets} for d in detectors},
            "datasets": _dataset_summary(runs),
            "training": _training_summary(runs),
            "runs": runs}

    def datasets_needed(self) -> list[tuple[str, str]]:
        return [(self.in_dataset, "train"), (self.in_dataset, "test"), *[(o, "test") for o in self.ood_datasets]]

    def available_ood(self, data_dir: str | None, allow_sample: bool) -> tuple[tuple[str, ...], str | None]:
        """The OOD sets to score: ``ood_datasets``, or where one of them is not on this machine
        and ``fallback_ood`` is set, the fallback sets instead, with a note saying so (without a
        fallback a missing set is the usual not-found error when it is scored)."""
        missing = []
        for name in self.ood_datasets:
            try:
                load_dataset(name, "test", data_dir=data_dir, allow_sample=allow_sample)
            except DatasetNotFoundError:
                missing.append(name)
        if not missing or not self.fallback_ood:
            return tuple(self.ood_datasets), None
        return tuple(self.fallback_ood), (
            f"{', '.join(missing)} was not found on this machine (its official test files in the data folder "
            f"enable it), so {self.in_dataset} was scored against {', '.join(self.fallback_ood)} instead"
            + (f"; images of another shape were conformed to the model by `{self.conform}`, and the variance "
               "check leaves them out (conforming changes the pixel statistics it tests)" if self.conform else ""))

    def summary(self, out: dict) -> str:
        """The AUROC table (mean ± sd over seeds, interval, verdict) for the terminal."""
        lines = [text_table(["model", "detector", "OOD", "seeds", "AUROC mean ± sd", "95% interval", "verdict"],
                            [[v, d, o, len(out["seeds"]), pm(s["auroc"]), interval_text(s["auroc"]["interval"]),
                              s["auroc"]["verdict"]]
                             for v, m in out["models"].items() for d, by_ood in m["summary"].items()
                             for o, s in by_ood.items()])]
        if "variance" in out:
            lines += [f"is it the variance? {k}: {v}" for k, v in out["variance"]["verdict"].items()]
        lines += [f"feature space {k}: {v}" for k, v in out.get("feature_space", {}).get("verdict", {}).items()]
        if any(d["is_sample"] for m in out["models"].values() for d in m["datasets"].values()):
            lines.append("NOTE: no dataset was found, so this ran on the small sample bundled with vaeood "
                         "(set VAEOOD_DATA or --data-dir for the real data)")
        return "\n".join(lines)


def _elbo(s: dict[str, np.ndarray]) -> np.ndarray:
    """The per-image ELBO in nats: IWAE's K-sample ELBO, or the ELBO estimator's value."""
    return np.asarray(s["elbo_nats"] if "elbo_nats" in s else s["log_px_nats"], dtype=np.float64)


def _dataset_summary(runs: dict) -> dict:
    """Per test set: size and source (one per set), mean log p(x) and bits/dim as
    mean ± sd over seeds, pixel statistics (the images', the same for every seed)."""
    first = next(iter(runs.values()))["datasets"]
    out = {}
    for name, d in first.items():
        out[name] = {k: d[k] for k in ("n", "source", "is_sample", "pixel_mean", "pixel_var", "conform")}
        out[name]["mean_log_px_nats"] = mean_sd([r["datasets"][name]["mean_log_px_nats"] for r in runs.values()])
        if d.get("mean_bpd") is not None:
            out[name]["mean_bpd"] = mean_sd([r["datasets"][name]["mean_bpd"] for r in runs.values()])
    return out


def _training_summary(runs: dict) -> dict:
    t = [r["training"] for r in runs.values()]
    return {"num_parameters": t[0]["num_parameters"], "epochs": t[0]["epochs"], "train_data": t[0]["train_data"],
            "batch_size": t[0]["config"]["train"]["batch_size"],
            "final_train_loss_nats": mean_sd([x["final_train_loss_nats"] for x in t]),
            "train_seconds": mean_sd([x["train_seconds"] for x in t]),
            "total_train_seconds": float(sum(x["train_seconds"] for x in t))}


TWO_DECODERS = {
    "study_bernoulli": {"model.likelihood": "bernoulli"},
    "dlogistic": {"model.likelihood": "dlogistic"},
}
KERAS_BLOG = {"model.arch": "mlp", "model.hidden_dim": "256", "model.latent_dim": "2",
              "model.likelihood": "bernoulli", "train.batch_size": "100"}
DESCRIPTIONS = {
    "keras_blog": "the study's own architecture: the Keras-blog VAE (fully connected 784–256–2, ReLU, "
                  "Bernoulli decoder on grey levels, batch 100; Adam here, the blog's first edition used RMSprop)",
    "study_bernoulli": "conv VAE, Bernoulli decoder on grey levels (the study's loss; not a normalised density)",
    "dlogistic": "conv VAE, discretised-logistic decoder (a normalised pmf over 8-bit values: bits/dim defined)",
}

EXPERIMENTS.register("fig2a")(Fig2Experiment(
    name="fig2a",
    title="Figure 2a: VAEs trained on Fashion-MNIST, scored on Fashion-MNIST and MNIST",
    in_dataset="fashion_mnist", ood_datasets=("mnist",),
    claim="the Fashion-MNIST VAE gives the MNIST test set lower ELBO than its own test set (it separates them)",
    models={"keras_blog": KERAS_BLOG, **TWO_DECODERS}, descriptions=DESCRIPTIONS,
    presets={
        "quick": Preset({"data.name": "fashion_mnist", "data.limit": "20000", "train.epochs": "4"},
                        allow_sample=True, feature_limits=(10000, 2000),
                        variant_overrides={"keras_blog": {"data.limit": "30000", "train.epochs": "5"}},
                        note="CPU quick preset (minutes on 2 cores): 3 seeds per variant; the conv variants "
                             "train on the first 20,000 Fashion-MNIST training images for 4 epochs, "
                             "keras_blog on the first 30,000 for 5 epochs (the paper preset: all 60,000 for "
                             "100 and 50 epochs); every test image is scored, by the ELBO (the paper preset: "
                             "IWAE-1000). The models are not converged: the AUROCs move with the budget (the "
                             "README lists longer runs), the verdict words have not so far."),
        "paper": Preset({"data.name": "fashion_mnist", "train.epochs": "100"},
                        estimator="iwae", estimator_options={"k": 1000},
                        variant_overrides={"keras_blog": {"train.epochs": "50"}},
                        note="the study's budget: all 60,000 training images, 100 epochs (keras_blog: the "
                             "blog's 50), 3 seeds per variant, IWAE-1000 on every test image."),
    },
))

EXPERIMENTS.register("fig2b")(Fig2Experiment(
    name="fig2b",
    title="Figure 2b: a VAE trained on CIFAR-10, scored on CIFAR-10 and SVHN (else Tiny ImageNet and padded MNIST)",
    in_dataset="cifar10", ood_datasets=("svhn",), fallback_ood=("tinyimagenet", "mnist"), conform="pad",
    claim="the CIFAR-10 VAE gives SVHN higher likelihood than CIFAR-10 (Nalisnick et al. 2019): "
          "it does not separate them",
    models=TWO_DECODERS, descriptions=DESCRIPTIONS,
    presets={
        "quick": Preset({"data.name": "cifar10", "train.epochs": "5", "model.base_channels": "32"}, score_limit=2000,
                        feature_limits=(10000, 2000),
                        note="CPU quick preset: 3 seeds; all 50,000 CIFAR-10 training images × 5 epochs at base "
                             "width 32 (about 8 min of training for the 6 runs on 2 quiet cores, scaled from 93 s "
                             "measured on 10,000 images); ELBO on the first 2,000 images of each test set."),
        "paper": Preset({"data.name": "cifar10", "train.epochs": "100", "model.base_channels": "64",
                         "model.latent_dim": "64"}, estimator="iwae", estimator_options={"k": 1000},
                        note="all 50,000 training images × 100 epochs, 3 seeds, IWAE-1000 on every test image."),
    },
))


def render_report(exp: Fig2Experiment, out: dict) -> str:
    models, seeds = out["models"], out["seeds"]
    lines = report_header(exp.title, out, sample_sources(list(models.values()),
                                                         [r["training"] for r in models.values()]))
    estimator = out["estimator"] + (f" (K={out['estimator_options']['k']})" if "k" in out["estimator_options"] else "")
    level = f"{out['interval']['level']:.0%}"
    lines += ["## Claim and verdict", "", f"- The study: {exp.claim}.",
              *([f"- Note: {out['ood_note']}."] * bool(out.get("ood_note"))),
              *[f"- Ours, `{k}`: {v}." for k, v in out["verdict"].items()],
              *[f"- In feature space, `{k}`: {v}." for k, v in out.get("feature_space", {}).get("verdict", {}).items()],
              f"- Verdict words come from the interval, not the point: {out['interval']['rule']}.",
              f"- The interval: {out['interval']['method']} ({out['interval']['n_boot']} replicates). "
              f"With {len(seeds)} seeds the seed level is resampled coarsely; the sd and every seed's own "
              "interval are given beside it.", ""]
    if out.get("note"):
        lines += [f"Preset budget (before command-line overrides, which the tables below include): {out['note']}", ""]
    lines += ["## Model variants", "",
              markdown_table(["model", "what it is", "parameters", "batch", "epochs", "training images"],
                             [[v, m["description"], m["training"]["num_parameters"], m["training"]["batch_size"],
                               m["training"]["epochs"], _train_images(m)]
                              for v, m in models.items()]), ""]
    lines += _detector_tables(out, estimator, level)
    lines += ["## Per-dataset likelihoods and pixel statistics", "",
              f"Mean over the test images of each seed's model, then mean ± sd over the {len(seeds)} seeds. Pixel "
              "mean and variance are on the [0, 1] scale over all pixels (the study's explanation of Figure 2b is "
              "that SVHN has a similar mean and a smaller variance than CIFAR-10). Bits/dim are given only for "
              "the normalised decoder; the Bernoulli 'likelihood' of grey levels is not a probability of the "
              "8-bit image.", ""]
    rows = []
    for variant, m in models.items():
        for name, d in m["datasets"].items():
            rows.append([variant, name, d["n"], pm(d["mean_log_px_nats"], ".1f"),
                         pm(d["mean_bpd"], ".4f") if "mean_bpd" in d else "n/a (not normalised)",
                         f"{d['pixel_mean']:.4f}", f"{d['pixel_var']:.4f}"])
    lines += [markdown_table(["model", "dataset", "images", f"mean log p(x) [nats] ({estimator})", "mean bits/dim",
                              "pixel mean", "pixel variance"], rows), "",
              *(variance_section(out["variance"], level) if "variance" in out else []),
              "## Figure 2, ours", "",
              f"Per-image ELBO of the test sets, one panel per model (the seed-{seeds[0]} run), counts on the "
              "y axis, as in the study's Figure 2.", "",
              f"![Figure 2]({out['figures']['elbo_histograms']})", "",
              "Each run's own histogram of the score and its metrics are in `MODEL/seedS/`.", "",
              *(feature_section(out, level) if "feature_space" in out else []),
              "## Training", "",
              markdown_table(["model", "parameters", "epochs", "final train loss [nats]", "train time per run [s]"],
                             [[v, m["training"]["num_parameters"], m["training"]["epochs"],
                               pm(m["training"]["final_train_loss_nats"], ".1f"),
                               pm(m["training"]["train_seconds"], ".1f")] for v, m in models.items()]), "",
              "Runs (config, checkpoint, metrics, per-image scores) are in `runs/MODEL_seedS/`, reused by a later "
              "call with the same `--out` and settings; `metrics.json` holds every number above, per seed.", ""]
    return "\n".join(lines)


def _detector_tables(out: dict, estimator: str, level: str) -> list[str]:
    """One section per detector: each variant's AUROC over seeds, interval, verdict, per-seed values, other metrics."""
    seeds, lines = out["seeds"], []
    for d in out["detectors"]:
        lines += [f"## OOD detection, score `{d}`" + (f" = −log p(x) by {estimator}" if d == "nll" else "")
                  + f" (OOD is the positive class; {len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
                  markdown_table(["model", "likelihood", "OOD", "AUROC mean ± sd", f"{level} interval", "verdict",
                                  "per seed: AUROC [image-bootstrap interval]",
                                  *[METRIC_LABELS[k] for k in METRIC_NAMES if k != "auroc"]],
                                 [[v, m["likelihood"], o, pm(s["auroc"]), interval_text(s["auroc"]["interval"]),
                                   f"**{s['auroc']['verdict']}**",
                                   "; ".join(f"{a:.3f} [{interval_text(i)}]" for a, i in
                                             zip(s["auroc"]["values"], s["auroc"]["per_seed_intervals"], strict=True)),
                                   *[pm(s[k]) for k in METRIC_NAMES if k != "auroc"]]
                                  for v, m in out["models"].items() for o, s in m["summary"][d].items()]), ""]
    return lines


def _train_images(model: dict) -> str:
    limit = model["config"]["data"]["limit"]
    data = model["training"]["train_data"]
    return f"{'first ' + format(limit, ',') if limit else 'all'} of {data['name']}/{data['split']}" + \
        (" (the bundled sample)" if data["is_sample"] else "")
