"""The capacity study: does a bigger VAE stop giving OOD images higher likelihood?

Dai & Wipf (2019) argue that many VAE failures come from insufficient capacity; the
study re-ran the Fig. 2 model with more channels once. Here that becomes a sweep: the
Fig. 2 conv VAE (discretised-logistic decoder, so bits/dim are defined) at several
widths (×0.5, ×1, ×2, ×4 base channels) and latent sizes, each reported with its
parameter count, test bits/dim (ELBO and IWAE-K) and AUROC of −log p(x) against the OOD
set under both estimators, each model trained with several seeds. The verdict is computed
from the numbers (:mod:`vaeood.evaluation.intervals`): each model's verdict word from the 95%
interval of its seed-mean AUROC, and the trend of AUROC with parameter count over the
width sweep — Spearman's ρ over every seed's model with a bootstrap interval, and the
slope per doubling of the parameters ± its standard error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..infra.atomic import atomic_write_json, atomic_write_text
from ..training.config import Config
from ..evaluation.intervals import N_BOOT, mean_sd, trend, trend_text
from ..evaluation.report import interval_text, markdown_table, pm, text_table
from .common import (LIKELIHOOD_DETECTORS, EXPERIMENTS, INTERVAL_METHOD, VERDICT_RULE, auroc_summary, per_image_scores,
                     report_header, run_evaluate, runs_bar, sample_sources, stamp, strict_json)
from .reuse import train_or_reuse

ESTIMATORS = ("elbo", "iwae")


@dataclass(frozen=True)
class CapacityPreset:
    overrides: dict[str, str]  # shared by every model (data, budget, decoder)
    widths: tuple[float, ...]  # multipliers of the base width
    latents: tuple[int, ...]  # latent sizes, swept at width ×1
    base_channels: int = 32
    base_latent: int = 16
    k: int = 100  # importance samples of the IWAE estimate
    iwae_limit: int | None = 1000  # IWAE on the first N test images of each set (None: all)
    allow_sample: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    n_boot: int = N_BOOT


@dataclass(frozen=True)
class CapacityStudy:
    name: str
    title: str
    in_dataset: str
    ood_dataset: str
    presets: dict[str, CapacityPreset]
    claim: str = ("Dai & Wipf's 'sufficient capacity' remedy: a wider network fixes the likelihood ranking, "
                  "so OOD images get lower likelihood")
    detectors: tuple[str, ...] = LIKELIHOOD_DETECTORS
    # set for each run (the sweep and its seeds): not overridable
    own_keys: tuple[str, ...] = ("data.name", "model.base_channels", "model.latent_dim", "train.seed")

    def datasets_needed(self) -> list[tuple[str, str]]:
        return [(self.in_dataset, "train"), (self.in_dataset, "test"), (self.ood_dataset, "test")]

    def variants(self, pre: CapacityPreset) -> dict[str, dict[str, str]]:
        """Model name → overrides: the width sweep at the base latent size, then the
        latent sweep at width ×1."""
        out = {}
        for w in pre.widths:
            out[f"width_x{w:g}_z{pre.base_latent}"] = {"model.base_channels": str(max(1, round(w * pre.base_channels))),
                                                       "model.latent_dim": str(pre.base_latent)}
        for z in pre.latents:
            out.setdefault(f"width_x1_z{z}", {"model.base_channels": str(pre.base_channels),
                                              "model.latent_dim": str(z)})
        return out

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None,
            detectors: tuple[str, ...] | None = None) -> dict:
        """Train each capacity variant with every seed (``runs/MODEL_seedS``), score it with
        the ELBO (all test images) and IWAE-K (the first ``iwae_limit``), summarise over
        seeds with intervals, and write report, figure and metrics."""
        pre = self.presets[preset]
        detectors = tuple(detectors or self.detectors)
        k = (estimator_options or {}).get("k", pre.k)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = {}
        variants = self.variants(pre)
        progress_bar = runs_bar(len(variants) * len(pre.seeds), self.name, progress)
        for variant, variant_overrides in variants.items():
            runs, pairs = {}, {(e, d): [] for e in ESTIMATORS for d in detectors}
            for seed in pre.seeds:
                progress_bar.set_postfix_str(f"{variant} seed {seed}")
                config = Config().override({**pre.overrides, **variant_overrides, "train.seed": str(seed),
                                            "train.device": device, "data.allow_sample": str(pre.allow_sample).lower(),
                                            **(overrides or {})})
                run_dir = out_dir / "runs" / f"{variant}_seed{seed}"
                training = train_or_reuse(config, run_dir, data_dir=data_dir, progress=progress)
                common = dict(data_dir=data_dir, device=device, allow_sample=pre.allow_sample, progress=progress)
                settings = {"elbo": dict(estimator="elbo", estimator_options={}, limit=None),
                            "iwae": dict(estimator="iwae", estimator_options={"k": k}, limit=pre.iwae_limit)}
                folders = {"elbo": "elbo", "iwae": f"iwae_k{k}"}
                evaluations = {e: run_evaluate(run_dir, self.in_dataset, [self.ood_dataset], detectors=detectors,
                                               out_dir=out_dir / variant / f"seed{seed}" / folders[e],
                                               **settings[e], **common) for e in ESTIMATORS}
                for e in ESTIMATORS:
                    for d in detectors:
                        pairs[(e, d)].append(tuple(per_image_scores(run_dir, name, d, split="test", **settings[e],
                                                                    **common)
                                                   for name in (self.in_dataset, self.ood_dataset)))
                runs[f"seed{seed}"] = {"training": training, "evaluations": evaluations}
                progress_bar.update()
            rows[variant] = {"base_channels": config.model.base_channels, "latent_dim": config.model.latent_dim,
                             "num_parameters": training["num_parameters"],
                             "training": {"train_data": training["train_data"], "epochs": training["epochs"],
                                          "train_seconds": mean_sd([r["training"]["train_seconds"]
                                                                    for r in runs.values()])},
                             "summary": {e: {d: self._summary(runs, e, d, pairs[(e, d)], pre.n_boot)
                                             for d in detectors} for e in ESTIMATORS},
                             "runs": runs}
        progress_bar.close()
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command,
               "claim": self.claim, "k": k, "iwae_limit": pre.iwae_limit, **stamp(device),
               "seeds": list(pre.seeds), "detectors": list(detectors),
               "interval": {"level": 0.95, "n_boot": pre.n_boot, "method": INTERVAL_METHOD, "rule": VERDICT_RULE},
               "models": rows}
        out["verdict"] = self.verdict(rows, detectors, pre.n_boot)
        (out_dir / "figures").mkdir(exist_ok=True)
        self.figure(out_dir / "figures" / "capacity.png", rows, k, pre.iwae_limit, detectors[0])
        atomic_write_json(out_dir / "metrics.json", strict_json(out))
        atomic_write_text(out_dir / "report.md", self.render(out))
        return out

    def _summary(self, runs: dict, estimator: str, detector: str, pairs: list, n_boot: int) -> dict:
        """One model's numbers under one (estimator, detector), over seeds."""
        evals = [r["evaluations"][estimator] for r in runs.values()]
        out = {"auroc": auroc_summary(pairs, n_boot=n_boot)}
        for key, name in (("bpd_in", self.in_dataset), ("bpd_ood", self.ood_dataset)):
            out[key] = mean_sd([e["datasets"][name].get("mean_bpd", np.nan) for e in evals])
        for diag in ("gap_nats", "ess_fraction"):
            out[diag] = mean_sd([e["datasets"][self.in_dataset].get(f"mean_{diag}", np.nan) for e in evals])
        out["n_images"] = {name: evals[0]["datasets"][name]["n"] for name in (self.in_dataset, self.ood_dataset)}
        return out

    def verdict(self, rows: dict, detectors: tuple[str, ...] = LIKELIHOOD_DETECTORS, n_boot: int = N_BOOT) -> dict:
        """Per estimator (and detector besides ``nll``): the trend of AUROC with parameter
        count over the width sweep (every seed's model a point: Spearman ρ with its
        bootstrap interval, slope per doubling ± se), each model's verdict word from its
        interval, the best model, and a sentence."""
        base = _base_latent(rows)
        widths = {v: r for v, r in rows.items() if v.startswith("width_x") and r["latent_dim"] == base}
        out = {}
        for est in ESTIMATORS:
            for det in detectors:
                key = est if det == "nll" else f"{est}/{det}"
                summaries = {v: r["summary"][est][det]["auroc"] for v, r in rows.items()}
                x = [r["num_parameters"] for r in widths.values() for _ in summaries[next(iter(widths))]["values"]]
                y = [a for v in widths for a in summaries[v]["values"]]
                tr = trend(x, y, n_boot=n_boot)
                words = {v: s["verdict"] for v, s in summaries.items()}
                best = max(summaries, key=lambda v: summaries[v]["mean"])
                b = summaries[best]
                best_text = f"best {best}: AUROC {b['mean']:.3f}, 95% interval {interval_text(b['interval'])}"
                if set(words.values()) == {"inverted"}:
                    sentence = (f"capacity does not fix the ranking: every model gives {self.ood_dataset} higher "
                                f"likelihood, each with a 95% interval below 0.5 ({best_text})")
                elif "separates" in words.values():
                    sentence = (f"some models separate: {', '.join(v for v, w in words.items() if w == 'separates')}"
                                f" ({best_text})")
                else:
                    sentence = f"no model separates ({best_text})"
                out[key] = {"spearman_params_vs_auroc": tr["spearman_rho"], "trend": tr, "words": words,
                            "best_model": best, "best_auroc": b["mean"], "best_interval": b["interval"],
                            "sentence": f"{sentence}; {trend_text(tr, 'AUROC', 'width (parameters)')}"}
        return out

    def figure(self, path: Path, rows: dict, k: int, limit: int | None, detector: str = "nll") -> None:
        from matplotlib.figure import Figure  # on use (slow import)

        from ..infra.atomic import atomic_write

        base = _base_latent(rows)
        widths = sorted((r for v, r in rows.items() if v.startswith("width_x") and r["latent_dim"] == base),
                        key=lambda r: r["num_parameters"])
        x = np.array([r["num_parameters"] for r in widths], dtype=float)
        labels = {"elbo": "ELBO", "iwae": f"IWAE-{k}"}
        fig = Figure(figsize=(10, 4), dpi=120)
        ax_auroc, ax_bpd = fig.subplots(1, 2)
        for j, est in enumerate(ESTIMATORS):
            s = [r["summary"][est][detector] for r in widths]
            mean = np.array([v["auroc"]["mean"] for v in s])
            lo = np.array([v["auroc"]["interval"][0] for v in s])
            hi = np.array([v["auroc"]["interval"][1] for v in s])
            shift = x * (1.04 if j else 1 / 1.04)  # side by side on the log axis
            ax_auroc.errorbar(shift, mean, yerr=[mean - lo, hi - mean], marker="o", capsize=3,
                              label=f"{labels[est]} (mean, 95% interval)")
            for xi, v in zip(shift, s, strict=True):
                ax_auroc.plot([xi] * len(v["auroc"]["values"]), v["auroc"]["values"], "k.", ms=3)
            bpd = [v["bpd_in"] for v in s]
            ax_bpd.errorbar(x, [b["mean"] for b in bpd], yerr=[b["sd"] for b in bpd], marker="o", capsize=3,
                            label=f"{labels[est]} ({'all' if est == 'elbo' else _subset(limit)} test images)")
        ax_auroc.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        for ax in (ax_auroc, ax_bpd):
            ax.set_xscale("log")
            ax.set_xlabel("parameters")
            ax.legend(fontsize=8)
        ax_auroc.set_ylabel(f"AUROC ({self.in_dataset} vs {self.ood_dataset}); dots: seeds")
        ax_bpd.set_ylabel(f"{self.in_dataset} test bits/dim (mean ± sd over seeds)")
        fig.suptitle(f"Capacity sweep: width ×0.5…×4 (latent {base})")
        fig.tight_layout()
        import io
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        atomic_write(path, lambda f: f.write(buf.getvalue()))

    def render(self, out: dict) -> str:
        rows, k, seeds = out["models"], out["k"], out["seeds"]
        lines = report_header(self.title, out, sample_sources(
            [e for r in rows.values() for run in r["runs"].values() for e in run["evaluations"].values()],
            [r["training"] for r in rows.values()]))
        verdicts = [f"- Ours, {'ELBO' if key.startswith('elbo') else f'IWAE-{k}'}"
                    + (f" [{key.split('/')[1]}]" if "/" in key else "") + f": {v['sentence']}."
                    for key, v in out["verdict"].items()]
        lines += ["## Claim and verdict", "", f"- The claim: {self.claim}.", *verdicts,
                  f"- Verdict words come from each model's 95% interval: {out['interval']['rule']}. "
                  f"The interval: {out['interval']['method']}. The trend's points are every seed's model of the "
                  "width sweep; ρ's interval resamples those points.", "",
                  f"## Results ({self.in_dataset} vs {self.ood_dataset}; AUROC of −log p(x), OOD positive; "
                  f"{len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
                  f"ELBO on every test image; IWAE with K = {k} on the first "
                  f"{out['iwae_limit'] or 'all'} test images of each set. Mean ± sd over seeds; bits/dim are the "
                  "test set's mean (discretised logistic decoder: a normalised pmf over 8-bit values).", ""]
        table = []
        det = out["detectors"][0]
        for variant, r in rows.items():
            e, i = r["summary"]["elbo"][det], r["summary"]["iwae"][det]
            table.append([variant, r["base_channels"], r["latent_dim"], r["num_parameters"],
                          pm(e["bpd_in"], ".4f"), pm(i["bpd_in"], ".4f"), pm(e["bpd_ood"], ".4f"),
                          pm(e["auroc"]), interval_text(e["auroc"]["interval"]), f"**{e['auroc']['verdict']}**",
                          pm(i["auroc"]), interval_text(i["auroc"]["interval"]), f"**{i['auroc']['verdict']}**",
                          pm(i["gap_nats"], ".2f"), pm(i["ess_fraction"], ".3f"),
                          pm(r["training"]["train_seconds"], ".1f")])
        lines += [markdown_table(["model", "base channels", "latent", "parameters",
                                  f"{self.in_dataset} bpd (ELBO)",
                                  f"{self.in_dataset} bpd (IWAE-{k}, {_subset(out['iwae_limit'])})",
                                  f"{self.ood_dataset} bpd (ELBO)", "AUROC (ELBO)", "95% interval", "verdict",
                                  f"AUROC (IWAE-{k})", "95% interval", "verdict",
                                  "ELBO–IWAE gap [nats]", "ESS/K", "train time per run [s]"], table), "",
                  "![capacity](figures/capacity.png)", "",
                  "Per-model, per-seed histograms and metrics are in `MODEL/seedS/elbo/` and `MODEL/seedS/iwae_kK/`; "
                  "runs in `runs/MODEL_seedS/`.", ""]
        return "\n".join(lines)

    def summary(self, out: dict) -> str:
        k, det = out["k"], out["detectors"][0]
        body = [[f"{v} [{est}]", self.ood_dataset, pm(r["summary"][est][det]["auroc"]),
                 interval_text(r["summary"][est][det]["auroc"]["interval"]), r["summary"][est][det]["auroc"]["verdict"]]
                for v, r in out["models"].items() for est in ESTIMATORS]
        lines = [text_table(["model", "OOD", "AUROC mean ± sd", "95% interval", "verdict"], body)]
        lines += [f"{'ELBO' if key.startswith('elbo') else f'IWAE-{k}'}{key[4:]}: {v['sentence']}"
                  for key, v in out["verdict"].items()]
        return "\n".join(lines)


def _subset(limit: int | None) -> str:
    return f"first {limit}" if limit else "all"


def _base_latent(rows: dict) -> int:
    """The latent size of the width sweep (the most common one among the models)."""
    values = [r["latent_dim"] for r in rows.values()]
    return max(set(values), key=values.count)


_SHARED = {"model.likelihood": "dlogistic"}

EXPERIMENTS.register("capacity")(CapacityStudy(
    name="capacity",
    title="Capacity study: Fashion-MNIST VAEs of growing width and latent size, scored on MNIST",
    in_dataset="fashion_mnist", ood_dataset="mnist",
    presets={
        "quick": CapacityPreset({**_SHARED, "data.name": "fashion_mnist", "data.limit": "10000", "train.epochs": "5"},
                                widths=(0.5, 1, 2, 4), latents=(8, 32), k=100, iwae_limit=500, allow_sample=True),
        "paper": CapacityPreset({**_SHARED, "data.name": "fashion_mnist", "train.epochs": "100"},
                                widths=(0.5, 1, 2, 4), latents=(8, 32, 64), k=1000, iwae_limit=None),
    },
))

EXPERIMENTS.register("capacity_cifar10")(CapacityStudy(
    name="capacity_cifar10",
    title="Capacity study: CIFAR-10 VAEs of growing width and latent size, scored on SVHN",
    in_dataset="cifar10", ood_dataset="svhn",
    presets={
        "quick": CapacityPreset({**_SHARED, "data.name": "cifar10", "data.limit": "10000", "train.epochs": "5"},
                                widths=(0.5, 1, 2, 4), latents=(32,), base_latent=64, k=100, iwae_limit=500),
        "paper": CapacityPreset({**_SHARED, "data.name": "cifar10", "train.epochs": "100"},
                                widths=(0.5, 1, 2, 4), latents=(32, 128), base_latent=64, k=1000, iwae_limit=None),
    },
))
