"""The study's Figure 2, reproduced with named presets.

``fig2a``: a conv VAE trained on Fashion-MNIST, scored on the Fashion-MNIST and MNIST
test sets (the study's Figure 2a). ``fig2b``: the same for CIFAR-10 vs SVHN (Figure 2b;
Nalisnick et al. 2019 found SVHN gets *higher* likelihood). Each trains two decoders:
the study's Bernoulli baseline (not a normalised density on grey levels) and a
discretised logistic, a normalised pmf over 8-bit values whose bits/dim mean something.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_text
from ..config import Config
from ..evaluate import evaluate
from ..report import format_table, markdown_table, metrics_table
from .common import EXPERIMENTS, report_header, sample_sources, stamp, train_or_reuse, verdict_word


@dataclass(frozen=True)
class Preset:
    """Budget of one preset: config overrides shared by all models, and scoring settings."""

    overrides: dict[str, str]
    estimator: str = "elbo"
    estimator_options: dict = field(default_factory=dict)
    allow_sample: bool = False  # quick presets fall back to the bundled offline sample
    score_limit: int | None = None


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

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None) -> dict:
        """Train every model variant under ``preset``, evaluate it on the in-distribution
        and OOD test sets, and write ``report.md`` and ``metrics.json`` into ``out_dir``."""
        pre = self.presets[preset]
        estimator = estimator or pre.estimator
        # options given on the command line (--k, --refine-steps) update the preset's
        options = {**(pre.estimator_options if estimator == pre.estimator else {}), **(estimator_options or {})}
        out_dir.mkdir(parents=True, exist_ok=True)
        models = {}
        for variant, variant_overrides in self.models.items():
            config = Config().override({**pre.overrides, **variant_overrides, "train.device": device,
                                        "data.allow_sample": str(pre.allow_sample).lower(), **(overrides or {})})
            run_dir = out_dir / "runs" / variant
            training = train_or_reuse(config, run_dir, data_dir=data_dir, progress=progress)
            variant_out = out_dir / variant
            variant_out.mkdir(exist_ok=True)
            result = evaluate(run_dir, self.in_dataset, list(self.ood_datasets), estimator=estimator,
                              estimator_options=options, out_dir=variant_out, data_dir=data_dir,
                              limit=pre.score_limit, device=device, allow_sample=pre.allow_sample,
                              progress=progress)
            result["training"] = training
            models[variant] = result
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command,
               "claim": self.claim, "estimator": estimator, "estimator_options": options, **stamp(device),
               "verdict": {f"{v}/{ood}": f"{verdict_word(m['auroc'])}: AUROC {m['auroc']:.3f}"
                           for v, r in models.items() for ood, m in r["results"]["nll"].items()},
               "models": models}
        atomic_write_json(out_dir / "metrics.json", out)
        atomic_write_text(out_dir / "report.md", render_report(self, out))
        return out

    def datasets_needed(self) -> list[tuple[str, str]]:
        return [(self.in_dataset, "train"), (self.in_dataset, "test"), *[(o, "test") for o in self.ood_datasets]]

    def summary(self, out: dict) -> str:
        """The AUROC table and verdicts for the terminal."""
        lines = [format_table([(variant, ood, m) for variant, r in out["models"].items()
                               for ood, m in r["results"]["nll"].items()])]
        lines += [f"{key}: {text}" for key, text in out["verdict"].items()]
        if any(d["is_sample"] for r in out["models"].values() for d in r["datasets"].values()):
            lines.append("NOTE: no dataset was found, so this ran on the small sample bundled with vaeood "
                         "(set VAEOOD_DATA or --data-dir for the real data)")
        return "\n".join(lines)


TWO_DECODERS = {
    "study_bernoulli": {"model.likelihood": "bernoulli"},
    "dlogistic": {"model.likelihood": "dlogistic"},
}

EXPERIMENTS.register("fig2a")(Fig2Experiment(
    name="fig2a",
    title="Figure 2a: a VAE trained on Fashion-MNIST, scored on Fashion-MNIST and MNIST",
    in_dataset="fashion_mnist", ood_datasets=("mnist",),
    claim="the Fashion-MNIST VAE gives the MNIST test set lower ELBO than its own test set (it separates them)",
    models=TWO_DECODERS,
    presets={
        "quick": Preset({"data.name": "fashion_mnist", "data.limit": "30000", "train.epochs": "8"},
                        allow_sample=True),
        "paper": Preset({"data.name": "fashion_mnist", "train.epochs": "100"},
                        estimator="iwae", estimator_options={"k": 1000}),
    },
))

EXPERIMENTS.register("fig2b")(Fig2Experiment(
    name="fig2b",
    title="Figure 2b: a VAE trained on CIFAR-10, scored on CIFAR-10 and SVHN",
    in_dataset="cifar10", ood_datasets=("svhn",),
    claim="the CIFAR-10 VAE gives SVHN higher likelihood than CIFAR-10 (Nalisnick et al. 2019): it does not separate them",
    models=TWO_DECODERS,
    presets={
        "quick": Preset({"data.name": "cifar10", "data.limit": "10000", "train.epochs": "5",
                         "model.base_channels": "32"}, score_limit=2000),
        "paper": Preset({"data.name": "cifar10", "train.epochs": "100", "model.base_channels": "64",
                         "model.latent_dim": "64"}, estimator="iwae", estimator_options={"k": 1000}),
    },
))


def render_report(exp: Fig2Experiment, out: dict) -> str:
    models = out["models"]
    lines = report_header(exp.title, out, sample_sources(list(models.values()),
                                                         [r["training"] for r in models.values()]))
    estimator = out["estimator"] + (f" (K={out['estimator_options']['k']})" if "k" in out["estimator_options"] else "")
    lines += ["## Claim and verdict", "", f"- The study: {exp.claim}.",
              *[f"- Ours, `{k}`: {v}." for k, v in out["verdict"].items()], "",
              f"## OOD metrics (score = −log p(x) by {estimator}; OOD is the positive class)", "",
              metrics_table([{"model": v, "likelihood": r["likelihood"], "OOD": ood, **m}
                             for v, r in models.items() for ood, m in r["results"]["nll"].items()],
                            ["model", "likelihood", "OOD"]), "",
              "## Per-dataset likelihoods and pixel statistics", "",
              "Pixel mean and variance are on the [0, 1] scale over all pixels (the study's explanation of "
              "Figure 2b is that SVHN has a similar mean and a smaller variance than CIFAR-10). Bits/dim are "
              "given only for the normalised decoder; the Bernoulli 'likelihood' of grey levels is not a "
              "probability of the 8-bit image.", ""]
    rows = []
    for variant, r in models.items():
        for name, d in r["datasets"].items():
            bpd = d.get("mean_bpd")
            rows.append([variant, name, d["n"], d["mean_log_px_nats"],
                         f"{bpd:.4f}" if bpd is not None else "n/a (not normalised)",
                         f"{d['pixel_mean']:.4f}", f"{d['pixel_var']:.4f}"])
    lines += [markdown_table(["model", "dataset", "images", "mean log p(x) [nats]", "mean bits/dim",
                              "pixel mean", "pixel variance"], rows), "", "## Figures", ""]
    for variant, r in models.items():
        lines += [f"![{variant}]({variant}/{r['histogram']})", ""]
    lines += ["## Training", ""]
    lines += [markdown_table(["model", "parameters", "epochs", "final train loss [nats]", "train time [s]",
                              "training images"],
                             [[v, r["training"]["num_parameters"], r["training"]["epochs"],
                               r["training"]["final_train_loss_nats"], round(r["training"]["train_seconds"], 1),
                               r["training"]["train_data"]["source"]] for v, r in models.items()]), ""]
    lines += ["Runs (config, checkpoint, metrics, per-image scores) are in `runs/`; `metrics.json` holds every "
              "number above.", ""]
    return "\n".join(lines)


