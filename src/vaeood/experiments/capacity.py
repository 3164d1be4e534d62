"""The capacity study: does a bigger VAE stop giving OOD images higher likelihood?

Dai & Wipf (2019) argue that many VAE failures come from insufficient capacity; the
study re-ran the Fig. 2 model with more channels once. Here that becomes a sweep: the
Fig. 2 conv VAE (discretised-logistic decoder, so bits/dim are defined) at several
widths (×0.5, ×1, ×2, ×4 base channels) and latent sizes, each reported with its
parameter count, test bits/dim (ELBO and IWAE-K) and AUROC of −log p(x) against the OOD
set under both estimators. The verdict is computed from the numbers: the Spearman rank
correlation between parameter count and AUROC, and whether any model separates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json, atomic_write_text
from ..config import Config
from ..evaluate import evaluate
from ..report import format_table, line_plot, markdown_table
from .common import EXPERIMENTS, report_header, sample_sources, stamp, train_or_reuse, verdict_word


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


@dataclass(frozen=True)
class CapacityStudy:
    name: str
    title: str
    in_dataset: str
    ood_dataset: str
    presets: dict[str, CapacityPreset]
    claim: str = ("Dai & Wipf's 'sufficient capacity' remedy: a wider network fixes the likelihood ranking, "
                  "so OOD images get lower likelihood")

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
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None) -> dict:
        """Train each capacity variant, score it with the ELBO (all test images) and
        IWAE-K (the first ``iwae_limit``), write report, figure and metrics."""
        pre = self.presets[preset]
        k = (estimator_options or {}).get("k", pre.k)
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = {}
        for variant, variant_overrides in self.variants(pre).items():
            config = Config().override({**pre.overrides, **variant_overrides, "train.device": device,
                                        "data.allow_sample": str(pre.allow_sample).lower(), **(overrides or {})})
            run_dir = out_dir / "runs" / variant
            training = train_or_reuse(config, run_dir, data_dir=data_dir, progress=progress)
            common = dict(data_dir=data_dir, device=device, allow_sample=pre.allow_sample, progress=progress)
            by_estimator = {
                "elbo": evaluate(run_dir, self.in_dataset, [self.ood_dataset], estimator="elbo",
                                 out_dir=out_dir / variant / "elbo", **common),
                "iwae": evaluate(run_dir, self.in_dataset, [self.ood_dataset], estimator="iwae",
                                 estimator_options={"k": k}, limit=pre.iwae_limit,
                                 out_dir=out_dir / variant / f"iwae_k{k}", **common),
            }
            rows[variant] = {"base_channels": config.model.base_channels, "latent_dim": config.model.latent_dim,
                             "num_parameters": training["num_parameters"], "training": training,
                             "evaluations": by_estimator}
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command,
               "claim": self.claim, "k": k, "iwae_limit": pre.iwae_limit, **stamp(device), "models": rows}
        out["verdict"] = self.verdict(rows)
        (out_dir / "figures").mkdir(exist_ok=True)
        self.figure(out_dir / "figures" / "capacity.png", rows, k, pre.iwae_limit)
        atomic_write_json(out_dir / "metrics.json", out)
        atomic_write_text(out_dir / "report.md", self.render(out))
        return out

    def verdict(self, rows: dict) -> dict:
        """Spearman ρ between parameter count and AUROC (per estimator) over the width
        sweep, the best AUROC, and a sentence."""
        from scipy.stats import spearmanr  # here: scipy.stats costs ~1 s of every CLI start

        widths = {v: r for v, r in rows.items() if v.startswith("width_x") and r["latent_dim"] == _base_latent(rows)}
        out = {}
        for est in ("elbo", "iwae"):
            params = [r["num_parameters"] for r in widths.values()]
            aurocs = [r["evaluations"][est]["results"]["nll"][self.ood_dataset]["auroc"] for r in widths.values()]
            all_aurocs = [r["evaluations"][est]["results"]["nll"][self.ood_dataset]["auroc"] for r in rows.values()]
            # undefined (nan) when either side is constant, e.g. every width at AUROC 1
            varies = len(set(params)) > 2 and len(set(aurocs)) > 1
            rho = float(spearmanr(params, aurocs).statistic) if varies else float("nan")
            best = max(all_aurocs)
            words = {verdict_word(a) for a in all_aurocs}
            if words == {"inverted"}:
                sentence = (f"capacity does not fix the ranking: every model gives {self.ood_dataset} higher "
                            f"likelihood (best AUROC {best:.3f})")
            elif "separates" in words:
                sentence = f"some models separate (best AUROC {best:.3f})"
            else:
                sentence = f"no model separates (best AUROC {best:.3f})"
            trend = "rises" if rho > 0.5 else "falls" if rho < -0.5 else "shows no clear trend"
            out[est] = {"spearman_params_vs_auroc": rho, "best_auroc": best,
                        "sentence": f"{sentence}; AUROC {trend} with width (Spearman ρ = {rho:.2f})"}
        return out

    def figure(self, path: Path, rows: dict, k: int, limit: int | None) -> None:
        widths = sorted((r for v, r in rows.items() if v.startswith("width_x") and r["latent_dim"] == _base_latent(rows)),
                        key=lambda r: r["num_parameters"])
        x = [r["num_parameters"] for r in widths]

        def series(est, key):
            return [r["evaluations"][est]["results"]["nll"][self.ood_dataset][key] if key == "auroc"
                    else r["evaluations"][est]["datasets"][self.in_dataset].get("mean_bpd", np.nan) for r in widths]

        line_plot(path, [
            {"x": x, "series": {"ELBO": series("elbo", "auroc"), f"IWAE-{k}": series("iwae", "auroc")},
             "xlabel": "parameters", "ylabel": f"AUROC ({self.in_dataset} vs {self.ood_dataset})", "logx": True,
             "hline": 0.5},
            {"x": x, "series": {"ELBO (all test images)": series("elbo", "bpd"),
                                f"IWAE-{k} ({_subset(limit)})": series("iwae", "bpd")},
             "xlabel": "parameters", "ylabel": f"{self.in_dataset} test bits/dim", "logx": True},
        ], f"Capacity sweep: width ×0.5…×4 (latent {widths[0]['latent_dim'] if widths else '?'})")

    def render(self, out: dict) -> str:
        rows, k = out["models"], out["k"]
        lines = report_header(self.title, out, sample_sources(
            [e for r in rows.values() for e in r["evaluations"].values()], [r["training"] for r in rows.values()]))
        lines += ["## Claim and verdict", "", f"- The claim: {self.claim}.",
                  f"- Ours, ELBO: {out['verdict']['elbo']['sentence']}.",
                  f"- Ours, IWAE-{k}: {out['verdict']['iwae']['sentence']}.", "",
                  f"## Results ({self.in_dataset} vs {self.ood_dataset}; AUROC of −log p(x), OOD positive)", "",
                  f"ELBO on every test image; IWAE with K = {k} on the first "
                  f"{out['iwae_limit'] or 'all'} test images of each set. Bits/dim are the in-distribution test "
                  "set's mean (discretised logistic decoder: a normalised pmf over 8-bit values).", ""]
        table = []
        for variant, r in rows.items():
            e, i = r["evaluations"]["elbo"], r["evaluations"]["iwae"]
            table.append([variant, r["base_channels"], r["latent_dim"], r["num_parameters"],
                          _bpd(e, self.in_dataset), _bpd(i, self.in_dataset), _bpd(e, self.ood_dataset),
                          f"{e['results']['nll'][self.ood_dataset]['auroc']:.3f}",
                          f"{i['results']['nll'][self.ood_dataset]['auroc']:.3f}",
                          f"{i['datasets'][self.in_dataset].get('mean_gap_nats', float('nan')):.2f}",
                          f"{i['datasets'][self.in_dataset].get('mean_ess_fraction', float('nan')):.3f}",
                          round(r["training"]["train_seconds"], 1)])
        lines += [markdown_table(["model", "base channels", "latent", "parameters",
                                  f"{self.in_dataset} bpd (ELBO)",
                                  f"{self.in_dataset} bpd (IWAE-{k}, {_subset(out['iwae_limit'])})",
                                  f"{self.ood_dataset} bpd (ELBO)", "AUROC (ELBO)", f"AUROC (IWAE-{k})",
                                  "ELBO–IWAE gap [nats]", "ESS/K", "train time [s]"], table), "",
                  "![capacity](figures/capacity.png)", "",
                  "Per-model histograms and metrics are in `MODEL/elbo/` and `MODEL/iwae_kK/`; runs in `runs/`.", ""]
        return "\n".join(lines)

    def summary(self, out: dict) -> str:
        k = out["k"]
        lines = [format_table([(f"{v} [{est}]", self.ood_dataset, r["evaluations"][est]["results"]["nll"][self.ood_dataset])
                               for v, r in out["models"].items() for est in ("elbo", "iwae")])]
        lines += [f"ELBO: {out['verdict']['elbo']['sentence']}", f"IWAE-{k}: {out['verdict']['iwae']['sentence']}"]
        return "\n".join(lines)


def _subset(limit: int | None) -> str:
    return f"first {limit}" if limit else "all"


def _base_latent(rows: dict) -> int:
    """The latent size of the width sweep (the most common one among the models)."""
    values = [r["latent_dim"] for r in rows.values()]
    return max(set(values), key=values.count)


def _bpd(evaluation: dict, dataset: str) -> str:
    bpd = evaluation["datasets"][dataset].get("mean_bpd")
    return f"{bpd:.4f}" if bpd is not None else "n/a"


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
