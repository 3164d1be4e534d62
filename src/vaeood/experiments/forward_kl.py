"""Forward-KL ablation (GitHub issue 4): does fitting the encoder by the inclusive
KL(p(z|x) ‖ q(z|x)) instead of the reverse KL of the ELBO change OOD detection?

The Fig. 2a model (conv VAE, discretised-logistic decoder so that bits/dim are defined)
is trained on Fashion-MNIST with each objective — ``elbo`` and ``iwae`` (reverse KL),
``rws``, ``rws_dreg`` and ``msc`` (forward KL) — on the same network, data, batch size
and number of epochs, with several seeds, and scored on the Fashion-MNIST test set
(in-distribution) and the MNIST test set (OOD) by one IWAE-K pass per image, which
gives both scores and the diagnostics:

* **bits/dim**: ``-IWAE_K / (D ln 2)`` (and the K-sample ELBO's), mean over images;
* **AUROC** of each score, ``-IWAE_K`` and ``-ELBO`` (OOD positive);
* **posterior variance ratio**: per image, the geometric mean over latent dims of
  ``Var_q[z_j] / Var_SNIS[z_j|x]`` — q's variance over the self-normalised
  importance-weighted posterior variance of the same K samples (ESS-corrected, see
  ``vaeood.inference.estimators.iwae``, key ``q_var_ratio``) — summarised by the **median over
  images** (images whose weights collapse onto one sample, ESS ≈ 1, have no variance
  estimate and are left out). Below 1: q is narrower than the posterior, the reverse-KL
  signature. SNIS only sees where q puts samples, so a too-narrow q is under-stated;
* **ESS fraction**: effective sample size ``(Σw)²/Σw²`` over K, mean over images;
* **q variance**: the geometric mean over images and latent dims of q(z|x)'s variance —
  no sampling involved, so it compares how wide each objective makes q even where the
  ESS is too small for the variance ratio to mean much.

Each number is given as mean ± standard deviation over seeds. The verdict on the
study's hypothesis ("forward KL improves OOD detection") is computed from the IWAE-score
AUROC: a forward-KL objective "improves" on the better reverse-KL objective if its mean
AUROC is higher by at least 0.01 *and* Welch's two-sided t-test over the seeds gives
p < 0.05 after Holm's correction for testing the three forward-KL objectives (Holm 1979,
"A simple sequentially rejective multiple test procedure"); "worsens" symmetrically;
otherwise "no detectable difference" (three seeds detect only large effects, and the
report says so). Raw p-values are reported beside the adjusted ones. The verdict also states, from the
same numbers, whether any objective gives a usable detector at all — the word of the 95%
interval of its seed-mean AUROC (:mod:`vaeood.evaluation.intervals`: a two-level bootstrap over seeds
and test images; *separates* above 0.5, *inverted* below, *indistinguishable* covering
it) — since a significant change of an inverted detector is not an improvement anyone
could use.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..infra.atomic import atomic_write, atomic_write_json, atomic_write_text
from ..training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ..training.config import Config, ConfigError
from ..data import load_dataset
from ..evaluation.intervals import N_BOOT, mean_sd
from ..evaluation.metrics import ood_metrics
from ..evaluation.report import interval_text, markdown_table
from ..training.run import load_model, to_tensor
from ..evaluation.log_px import log_px, log_px_meta
from .timing import load_average, load_text
from .common import (DEFAULT_DETECTORS, EXPERIMENTS, INTERVAL_METHOD, VERDICT_RULE, auroc_summary, estimate_scores, stamp,
                     runs_bar, strict_json, train_or_reuse)

REVERSE_KL = ("elbo", "iwae")
FORWARD_KL = ("rws", "rws_dreg", "msc")
ABLATED = REVERSE_KL + FORWARD_KL
METRICS = {  # key → (label, format)
    "auroc_iwae": ("AUROC, −IWAE score", ".3f"),
    "auroc_elbo": ("AUROC, −ELBO score", ".3f"),
    "bpd_in": ("bits/dim FM (IWAE)", ".3f"),
    "bpd_ood": ("bits/dim MNIST (IWAE)", ".3f"),
    "elbo_bpd_in": ("bits/dim FM (ELBO)", ".3f"),
    "q_var_in": ("q var FM", ".4f"),
    "q_var_ood": ("q var MNIST", ".4f"),
    "q_var_ratio_in": ("q/posterior var FM", ".2f"),
    "q_var_ratio_ood": ("q/posterior var MNIST", ".2f"),
    "ess_fraction_in": ("ESS/K FM", ".3f"),
    "ess_fraction_ood": ("ESS/K MNIST", ".3f"),
    "epoch_seconds": ("train s/epoch", ".1f"),
}
MIN_EFFECT = 0.01  # AUROC difference below which no improvement is claimed


@dataclass(frozen=True)
class AblationPreset:
    """Budget of one preset: config overrides shared by every run, the training K of the
    K-sample objectives, the seeds, and the test-time IWAE K and subset."""

    overrides: dict[str, str]
    train_k: int
    seeds: tuple[int, ...]
    k: int
    score_limit: int | None
    allow_sample: bool = False
    note: str = ""
    n_boot: int = N_BOOT


@dataclass(frozen=True)
class ForwardKLExperiment:
    name: str
    title: str
    in_dataset: str
    ood_datasets: tuple[str, ...]
    presets: dict[str, AblationPreset] = field(default_factory=dict)
    detectors: tuple[str, ...] = DEFAULT_DETECTORS

    def datasets_needed(self) -> list[tuple[str, str]]:
        return [(self.in_dataset, "train"), (self.in_dataset, "test"), *[(o, "test") for o in self.ood_datasets]]

    def run(self, out_dir: Path, preset: str, *, overrides: dict[str, str] | None = None,
            data_dir: str | None = None, device: str = "cpu", estimator: str | None = None,
            estimator_options: dict | None = None, command: str = "", progress: bool | None = None,
            detectors: tuple[str, ...] | None = None) -> dict:
        """Train every (objective, seed) under ``preset``, score the test sets with IWAE-K,
        and write ``report.md``, ``metrics.json`` and the figures into ``out_dir``.

        ``overrides`` change every run's config (not ``train.objective``/``train.seed``,
        which the ablation sets); ``estimator_options`` update the IWAE options (e.g.
        ``{"k": 1000, "refine_steps": 5}``); the estimator must be ``iwae``, which
        gives both the ELBO and the IWAE score.
        """
        pre = self.presets[preset]
        if estimator not in (None, "iwae"):
            raise ConfigError(f"the forward-kl ablation scores with iwae (it yields both the ELBO and IWAE "
                              f"scores), not {estimator!r}")
        fixed = [k for k in (overrides or {}) if k in ("train.objective", "train.seed")]
        if fixed:
            raise ConfigError(f"the forward-kl ablation sets {fixed[0]} itself; it cannot be overridden")
        options = {"k": pre.k, **(estimator_options or {})}
        detectors = tuple(detectors or self.detectors)
        out_dir.mkdir(parents=True, exist_ok=True)
        started, cpu_started, load_started = time.perf_counter(), time.process_time(), load_average()
        runs = []
        with runs_bar(len(ABLATED) * len(pre.seeds), self.name, progress) as progress_bar:
            for objective in ABLATED:
                for seed in pre.seeds:
                    progress_bar.set_postfix_str(f"{objective} seed {seed}")
                    runs.append(self._one_run(out_dir, pre, objective, seed, overrides=overrides, options=options,
                                              detectors=detectors, data_dir=data_dir, device=device,
                                              progress=progress))
                    progress_bar.update()
        bpd = {(r["objective"], r["seed"]): r.pop("_bpd") for r in runs}
        per_image = {(r["objective"], r["seed"]): r.pop("_scores") for r in runs}
        aggregate = {obj: {key: mean_sd([r[key] for r in runs if r["objective"] == obj]) for key in METRICS}
                     for obj in ABLATED}
        ood = self.ood_datasets[0]
        for obj in ABLATED:  # the AUROCs also get the interval and its verdict word
            for key, by_set in per_image_pairs(per_image, obj, pre.seeds, self.in_dataset, ood).items():
                aggregate[obj].setdefault(key, {}).update(auroc_summary(by_set, n_boot=pre.n_boot))
        first = runs[0]["datasets"]
        out = {"experiment": self.name, "title": self.title, "preset": preset, "command": command, **stamp(device),
               "settings": {"objectives": list(ABLATED), "seeds": list(pre.seeds), "train_k": pre.train_k,
                            "estimator": "iwae", "estimator_options": options, "score_limit": pre.score_limit,
                            "overrides": {**pre.overrides, **(overrides or {})}, "note": pre.note,
                            "detectors": list(detectors),
                            "interval": {"level": 0.95, "n_boot": pre.n_boot, "method": INTERVAL_METHOD,
                                         "rule": VERDICT_RULE},
                            "wall_seconds": time.perf_counter() - started,
                            "cpu_seconds": time.process_time() - cpu_started, "cpus": os.cpu_count(),
                            "load_average": [load_started, load_average()],
                            "train_seconds": sum(r["training"]["train_seconds"] for r in runs)},
               "datasets": {name: {k: first[name][k] for k in ("n", "source", "is_sample")} for name in first},
               "aggregate": aggregate, "verdict": hypothesis_verdict(aggregate, len(pre.seeds)), "runs": runs}
        out["figures"] = write_figures(out_dir, out, bpd, self.in_dataset, self.ood_datasets[0])
        atomic_write_json(out_dir / "metrics.json", strict_json(out))
        atomic_write_text(out_dir / "report.md", render_report(self, out))
        return out

    def _one_run(self, out_dir: Path, pre: AblationPreset, objective: str, seed: int, *, overrides, options: dict,
                 detectors: tuple[str, ...], data_dir, device: str, progress) -> dict:
        """Train (or reuse) one (objective, seed) run and score the test sets: its entry of
        ``runs``, with its per-image bits/dim (``_bpd``) and OOD scores (``_scores``) beside."""
        config = Config().override({
            **pre.overrides, "train.device": device, "data.allow_sample": str(pre.allow_sample).lower(),
            "train.objective": objective, "train.seed": str(seed),
            "train.objective_options": json.dumps({} if objective == "elbo" else {"k": pre.train_k}),
            **(overrides or {})})
        run_dir = out_dir / "runs" / f"{objective}_seed{seed}"
        training = train_or_reuse(config, run_dir, data_dir=data_dir, progress=progress)
        scores = {name: log_px(run_dir, name, "test", estimator="iwae", estimator_options=options,
                               data_dir=data_dir, limit=pre.score_limit, device=device,
                               allow_sample=pre.allow_sample, progress=progress)
                  for name in (self.in_dataset, *self.ood_datasets)}
        q_var = {name: q_variance(run_dir, name, limit=pre.score_limit, data_dir=data_dir,
                                  allow_sample=pre.allow_sample, device=device) for name in scores}
        run = {"objective": objective, "seed": seed, "run_dir": str(run_dir),
               **run_metrics(scores, self.in_dataset, self.ood_datasets[0]),
               "q_var_in": q_var[self.in_dataset], "q_var_ood": q_var[self.ood_datasets[0]],
               "epoch_seconds": training["train_seconds"] / max(1, training["epochs"]),
               "training": _training_info(run_dir, training)}
        run["_bpd"] = {name: s["bpd"] for name, s in scores.items()}
        run["_scores"] = per_image_ood_scores(scores, detectors)
        return run

    def summary(self, out: dict) -> str:
        """The mean ± sd table and the verdict, for the terminal."""
        keys = ["auroc_iwae", "auroc_elbo", "bpd_in", "q_var_ratio_in", "ess_fraction_in", "epoch_seconds"]
        header = ["objective"] + [METRICS[k][0] for k in keys] + ["95% interval (−IWAE)", "verdict"]
        body = [[obj] + [_pm(agg[k], METRICS[k][1]) for k in keys]
                + [interval_text(agg["auroc_iwae"]["interval"]), agg["auroc_iwae"]["verdict"]]
                for obj, agg in out["aggregate"].items()]
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *body]]
        lines.append(f"verdict: {out['verdict']['text']}")
        if any(d["is_sample"] for d in out["datasets"].values()):
            lines.append("NOTE: no dataset was found, so this ran on the small sample bundled with vaeood "
                         "(set VAEOOD_DATA or --data-dir for the real data)")
        return "\n".join(lines)


# -- numbers --------------------------------------------------------------------------------
def run_metrics(scores: dict[str, dict], in_name: str, ood_name: str) -> dict:
    """The per-run numbers of the module docstring from the two score dicts."""
    datasets = {}
    for name, s in scores.items():
        if "bpd" not in s:
            raise ConfigError("the forward-kl ablation reports bits/dim: use a normalised decoder "
                              "(model.likelihood dlogistic or categorical)")
        meta = log_px_meta(s)
        d = meta["num_dims"] * math.log(2.0)
        ratio = s["q_var_ratio"][np.isfinite(s["q_var_ratio"])]
        datasets[name] = {"n": int(len(s["bpd"])), "source": meta["source"], "is_sample": meta["is_sample"],
                          "bpd": float(np.mean(s["bpd"])), "elbo_bpd": float(np.mean(-s["elbo_nats"] / d)),
                          "q_var_ratio": float(np.median(ratio)) if len(ratio) else math.nan,
                          "q_var_ratio_defined": int(len(ratio)),
                          "ess_fraction": float(np.mean(s["ess_fraction"]))}
    s_in, s_ood = scores[in_name], scores[ood_name]
    return {"auroc_iwae": ood_metrics(-s_in["log_px_nats"], -s_ood["log_px_nats"])["auroc"],
            "auroc_elbo": ood_metrics(-s_in["elbo_nats"], -s_ood["elbo_nats"])["auroc"],
            "bpd_in": datasets[in_name]["bpd"], "bpd_ood": datasets[ood_name]["bpd"],
            "elbo_bpd_in": datasets[in_name]["elbo_bpd"],
            "q_var_ratio_in": datasets[in_name]["q_var_ratio"], "q_var_ratio_ood": datasets[ood_name]["q_var_ratio"],
            "ess_fraction_in": datasets[in_name]["ess_fraction"],
            "ess_fraction_ood": datasets[ood_name]["ess_fraction"], "datasets": datasets}


def per_image_ood_scores(scores: dict[str, dict], detectors: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """Per-image OOD scores (higher = more OOD) of one run, per AUROC key and test set:
    ``auroc_iwae`` (−IWAE_K), ``auroc_elbo`` (−ELBO) and, for every detector besides
    ``nll`` (which is −IWAE_K here), ``auroc_DETECTOR`` from the same IWAE estimates."""
    out = {"auroc_iwae": {n: -np.asarray(s["log_px_nats"], dtype=np.float64) for n, s in scores.items()},
           "auroc_elbo": {n: -np.asarray(s["elbo_nats"], dtype=np.float64) for n, s in scores.items()}}
    for d in detectors:
        if d != "nll":
            out[f"auroc_{d}"] = {n: estimate_scores(d, s, "iwae", log_px_meta(s)["options"]) for n, s in scores.items()}
    return out


def per_image_pairs(per_image: dict, objective: str, seeds, in_name: str, ood_name: str) -> dict[str, list]:
    """AUROC key → one (in, OOD) pair of per-image scores per seed of ``objective``."""
    keys = per_image[(objective, seeds[0])]
    return {key: [(per_image[(objective, s)][key][in_name], per_image[(objective, s)][key][ood_name])
                  for s in seeds] for key in keys}


def q_variance(run_dir: Path, dataset: str, *, limit: int | None, data_dir: str | None, allow_sample: bool,
               device: str) -> float:
    """Geometric mean over the test images and latent dims of q(z|x)'s variance."""
    model, config, _ = load_model(run_dir, device)
    data = load_dataset(dataset, "test", data_dir=data_dir or config.data.data_dir, allow_sample=allow_sample)
    images = data.images[:limit] if limit else data.images
    dev = next(model.parameters()).device
    with torch.no_grad():
        logvar = torch.cat([model.posterior(to_tensor(images[i: i + 1000], dev))[1].double()
                            for i in range(0, len(images), 1000)])
    return float(logvar.mean().exp())


def _training_info(run_dir: Path, training: dict) -> dict:
    last = load_checkpoint(run_dir / CHECKPOINT_NAME)["history"][-1]
    return {"epochs": training["epochs"], "train_seconds": training["train_seconds"],
            "final_train_loss_nats": training["final_train_loss_nats"],
            "final_train_ess": last.get("train_ess"), "final_train_chain_moved": last.get("train_chain_moved")}


def compare(a: dict, b: dict) -> dict:
    """Difference of means a − b, its standard error, Welch's two-sided p-value over the
    per-seed values and the label of the module docstring."""
    from scipy.stats import ttest_ind

    diff = a["mean"] - b["mean"]
    se = math.sqrt(a["sd"] ** 2 / max(1, a["n"]) + b["sd"] ** 2 / max(1, b["n"]))
    va = [v for v in a["values"] if v is not None and math.isfinite(v)]
    vb = [v for v in b["values"] if v is not None and math.isfinite(v)]
    if len(va) > 1 and len(vb) > 1 and se > 0:
        p = float(ttest_ind(va, vb, equal_var=False).pvalue)
    else:  # one seed, or no spread at all: no test possible
        p = math.nan
    if abs(diff) >= MIN_EFFECT and p < 0.05:
        label = "improves" if diff > 0 else "worsens"
    else:
        label = "no detectable difference"
    return {"diff": diff, "se": se, "p": p, "label": label}


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the i-th
    smallest of m is ``max_{j <= i} min(1, (m - j + 1) p_(j))``; NaN stays NaN and does
    not count towards m."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def hypothesis_verdict(aggregate: dict, n_seeds: int) -> dict:
    """The study's hypothesis against the numbers (see the module docstring)."""
    metric = "auroc_iwae"
    reference = max(REVERSE_KL, key=lambda o: aggregate[o][metric]["mean"])
    comparisons = {f: {ref: {m: compare(aggregate[f][m], aggregate[ref][m]) for m in ("auroc_iwae", "auroc_elbo")}
                       for ref in REVERSE_KL} for f in FORWARD_KL}
    # the verdict tests every forward-KL objective against the reference: correct for that
    primary = [comparisons[f][reference][metric] for f in FORWARD_KL]
    for c, p_holm in zip(primary, holm([c["p"] for c in primary])):
        c["p_holm"] = p_holm
        c["label"] = ("no detectable difference" if not (abs(c["diff"]) >= MIN_EFFECT and p_holm < 0.05)
                      else "improves" if c["diff"] > 0 else "worsens")
    labels = {f: comparisons[f][reference][metric]["label"] for f in FORWARD_KL}
    better = [f for f, lab in labels.items() if lab == "improves"]
    worse = [f for f, lab in labels.items() if lab == "worsens"]
    if better and not worse:
        status = "supported" if len(better) == len(FORWARD_KL) else "partly supported"
    elif worse and not better:
        status = "contradicted"
    elif better and worse:
        status = "mixed"
    else:
        status = "not supported"
    ref_auroc = aggregate[reference][metric]
    details = "; ".join(
        f"{f} {aggregate[f][metric]['mean']:.3f} ({comparisons[f][reference][metric]['diff']:+.3f} "
        f"± {comparisons[f][reference][metric]['se']:.3f}, p = {comparisons[f][reference][metric]['p']:.2f}, "
        f"Holm-adjusted {comparisons[f][reference][metric]['p_holm']:.2f}: {labels[f]})" for f in FORWARD_KL)
    words = {o: aggregate[o][metric]["verdict"] for o in ABLATED}
    low, high = min(aggregate[o][metric]["mean"] for o in ABLATED), max(aggregate[o][metric]["mean"] for o in ABLATED)
    intervals = ", ".join(f"{o} {interval_text(aggregate[o][metric]['interval'])}" for o in ABLATED)
    regime_text = {"separates": "separates the two test sets",
                   "inverted": "ranks the OOD set as MORE likely (inverted)",
                   "indistinguishable": "cannot be told from chance (its AUROC interval covers 0.5)"}
    if len(set(words.values())) == 1:
        word = words[reference]
        regime = (f"Detection: every objective's model {regime_text[word]} (seed-mean AUROC {low:.3f}–{high:.3f}; "
                  f"95% intervals {intervals})"
                  + (", so none gives a usable likelihood-based detector here. " if word != "separates" else ". "))
    else:
        regime = "Detection: " + ", ".join(f"{o} {w} ({interval_text(aggregate[o][metric]['interval'])})"
                                           for o, w in words.items()) + ". "
    mechanism = ", ".join(f"{o} {aggregate[o]['q_var_in']['mean']:.4f}" for o in ABLATED)
    ratio = ", ".join(f"{o} {aggregate[o]['q_var_ratio_in']['mean']:.2f}" for o in ABLATED)
    text = (f"forward KL improves OOD detection — {status.upper()} by this run: AUROC of the −IWAE score, "
            f"forward-KL objectives vs the better reverse-KL one ({reference}, {ref_auroc['mean']:.3f} ± "
            f"{ref_auroc['sd']:.3f}): {details} (mean over {n_seeds} seeds; difference ± its standard error, "
            f"Welch's t-test). {regime}"
            f"Mechanism, Fashion-MNIST test images: q's variance (geometric mean) {mechanism}; "
            f"q/posterior variance ratio (median image) {ratio}.")
    return {"status": status, "metric": metric, "reference": reference, "labels": labels,
            "comparisons": comparisons, "text": text,
            "detection": words,
            "rule": f"improves/worsens: |Δ mean AUROC| ≥ {MIN_EFFECT} and Welch's two-sided t-test p < 0.05 "
                    f"over the seeds after Holm's correction for the {len(FORWARD_KL)} forward-KL objectives, "
                    f"against the better of {', '.join(REVERSE_KL)}"}


def _pm(stat: dict, fmt: str) -> str:
    if not math.isfinite(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:{fmt}} ± {stat['sd']:{fmt}}"


# -- figures and report ---------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return path.name


def write_figures(out_dir: Path, out: dict, bpd: dict, in_name: str, ood_name: str) -> dict[str, str]:
    agg, seeds = out["aggregate"], out["settings"]["seeds"]
    x = np.arange(len(ABLATED))
    figures = {}

    fig = Figure(figsize=(13, 3.4), dpi=85)
    axes = fig.subplots(1, 4)
    panels = [(("auroc_iwae", "−IWAE"), ("auroc_elbo", "−ELBO")), (("q_var_in", in_name), ("q_var_ood", ood_name)),
              (("q_var_ratio_in", in_name), ("q_var_ratio_ood", ood_name)),
              (("ess_fraction_in", in_name), ("ess_fraction_ood", ood_name))]
    titles = ["AUROC (OOD positive)", "q variance (geometric mean)", "q variance / SNIS posterior variance",
              "ESS / K"]
    for ax, panel, title in zip(axes, panels, titles):
        for j, (key, label) in enumerate(panel):
            means = [agg[o][key]["mean"] for o in ABLATED]
            sds = [agg[o][key]["sd"] for o in ABLATED]
            ax.bar(x + (j - 0.5) * 0.38, means, 0.38, yerr=sds, capsize=3, label=label, alpha=0.8)
            for i, o in enumerate(ABLATED):
                ax.plot([x[i] + (j - 0.5) * 0.38] * len(agg[o][key]["values"]), agg[o][key]["values"], "k.", ms=3)
        ax.set_xticks(x, ABLATED, rotation=30)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.5, color="grey", lw=0.8, ls=":")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls=":")
    fig.tight_layout()
    figures["summary"] = _save(fig, out_dir / "forward_kl_summary.png")

    fig = Figure(figsize=(12, 2.8), dpi=80)
    axes = fig.subplots(1, len(ABLATED), sharex=True)
    seed = seeds[0]
    finite = np.concatenate([v[np.isfinite(v)] for (o, s), d in bpd.items() if s == seed for v in d.values()])
    bins = np.linspace(finite.min(), finite.max(), 50)
    for ax, o in zip(axes, ABLATED):
        for name, v in bpd[(o, seed)].items():
            ax.hist(v[np.isfinite(v)], bins=bins, density=True, alpha=0.5, label=name)
        ax.set_title(o, fontsize=10)
        ax.set_xlabel("bits/dim (IWAE)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    figures["histograms"] = _save(fig, out_dir / "forward_kl_histograms.png")
    return figures


def render_report(exp: ForwardKLExperiment, out: dict) -> str:
    """``report.md``: set-up and verdict, the results tables, definitions, figures and caveats."""
    return "\n".join(_report_setup(exp, out) + _report_results(out) + _report_notes(out))


def _report_setup(exp: ForwardKLExperiment, out: dict) -> list[str]:
    """The report's title, provenance, set-up, and hypothesis with its verdict."""
    s, verdict = out["settings"], out["verdict"]
    opts = s["estimator_options"]
    refine = f", proposals refined by {opts['refine_steps']} forward-KL steps" if opts.get("refine_steps") else ""
    lines = [f"# {exp.title}", "",
             f"Made by `{out['command'] or 'vaeood reproduce ' + out['experiment']}` (preset `{out['preset']}`) "
             f"on {out['created']}; vaeood {out['environment']['vaeood']}, torch {out['environment']['torch']}, "
             f"device {out['environment']['device']}, {out['environment']['threads']} threads.", ""]
    samples = [f"{n} ({d['source']})" for n, d in out["datasets"].items() if d["is_sample"]]
    if samples:
        lines += ["> **No dataset was found, so this ran on the small sample bundled with vaeood:** "
                  + "; ".join(samples) + ". Point `--data-dir` or `VAEOOD_DATA` at the real data for real numbers.", ""]
    ov = s["overrides"]
    lines += ["## Set-up", "",
              f"- Model: the Fig. 2a conv VAE (`model.*` = {_fmt_keys(ov, 'model.')}), trained on "
              f"{exp.in_dataset} ({_fmt_keys(ov, 'data.')}; {_fmt_keys(ov, 'train.')}).",
              f"- Objectives (same network, data order, batch size and epochs): `elbo`, `iwae` (reverse KL) and "
              f"`rws`, `rws_dreg`, `msc` (forward KL), each K-sample objective with K = {s['train_k']}; "
              f"seeds {', '.join(map(str, s['seeds']))}.",
              f"- Test: IWAE with K = {opts['k']}{refine} on "
              + ", ".join(f"{d['n']} {n} test images" for n, d in out["datasets"].items())
              + (" (the first images of each test set)" if s["score_limit"] else "") + ".",
              *([f"- Preset budget (before command-line overrides, which the lines above include): {s['note']}"]
                if s["note"] else []),
              f"- Time: {s['wall_seconds'] / 60:.1f} min wall and {s['cpu_seconds'] / 60:.1f} CPU-min (all threads) "
              f"for this call, on {s['cpus']} CPUs with a 1-minute load average of "
              f"{load_text(s['load_average'], s['cpus'])}; the training "
              f"loops of the {len(s['objectives']) * len(s['seeds'])} runs took {s['train_seconds'] / 60:.1f} min "
              f"(from their histories: runs found finished in `runs/` are reused, not retrained).", "",
              "## Hypothesis and verdict", "",
              "- The study's proposal: fitting q(z|x) by the forward KL(p ‖ q) (mass-covering, heavier tails) "
              "instead of the reverse KL improves OOD detection.",
              f"- Ours: {verdict['text']}",
              f"- Rule: {verdict['rule']}. Three seeds detect only large effects; a difference below the rule "
              f"is reported as none, not as a small effect. Detection words come from the 95% interval of the "
              f"seed-mean AUROC: {s['interval']['rule']}. The interval: {s['interval']['method']}.", "",
              "## Results (mean ± sd over seeds)", ""]
    return lines


def _report_results(out: dict) -> list[str]:
    """The report's results: metrics, AUROCs with intervals, and the forward- vs reverse-KL comparisons."""
    agg, verdict = out["aggregate"], out["verdict"]
    lines = []
    keys = list(METRICS)
    lines += [markdown_table(["objective", *[METRICS[k][0] for k in keys]],
                             [[o, *[_pm(agg[o][k], METRICS[k][1]) for k in keys]] for o in agg]), ""]
    auroc_keys = [k for k in agg[ABLATED[0]] if k.startswith("auroc_") and "interval" in agg[ABLATED[0]][k]]
    lines += ["Detection: AUROC (MNIST positive) mean ± sd over the seeds, the 95% interval of the seed mean "
              "and the verdict word it gives; each seed's AUROC with its image-bootstrap interval in brackets.", "",
              markdown_table(["objective", "score", "AUROC mean ± sd", "95% interval", "verdict",
                              "per seed: AUROC [interval]"],
                             [[o, _score_label(k), _pm(agg[o][k], ".3f"), interval_text(agg[o][k]["interval"]),
                               f"**{agg[o][k]['verdict']}**",
                               "; ".join(f"{a:.3f} [{interval_text(i)}]" for a, i in
                                         zip(agg[o][k]["values"], agg[o][k]["per_seed_intervals"]))]
                              for o in agg for k in auroc_keys]), ""]
    lines += ["Forward-KL objective minus reverse-KL objective, AUROC (difference ± standard error, Welch p; "
              "for the verdict's comparisons also the Holm-adjusted p that decides their label):", ""]
    rows = []
    for f, refs in verdict["comparisons"].items():
        for ref, by_metric in refs.items():
            rows.append([f, ref, *[f"{c['diff']:+.3f} ± {c['se']:.3f}, p = {c['p']:.2f}"
                                   + (f", Holm {c['p_holm']:.2f}" if "p_holm" in c else "") + f" ({c['label']})"
                                   for c in by_metric.values()]])
    lines += [markdown_table(["forward KL", "vs", "−IWAE score", "−ELBO score"], rows), ""]
    return lines


def _report_notes(out: dict) -> list[str]:
    """The report's definitions, figures and caveats."""
    s = out["settings"]
    lines = []
    lines += ["## Definitions", "",
              "- **AUROC**: P(OOD image scores higher than an in-distribution image), OOD = MNIST positive; "
              "scores −IWAE_K and −ELBO (the K-sample MC average of log w) from the same samples.",
              "- **bits/dim**: −log p(x) / (784 ln 2) with the discretised-logistic pmf over 8-bit values.",
              "- **q/posterior var**: per image, the geometric mean over latent dims of Var_q / Var_SNIS, the "
              "self-normalised importance-weighted posterior variance of the same K samples (ESS-corrected); "
              "median over images with ESS > 1. Below 1 = q narrower than the posterior. SNIS cannot see "
              "posterior mass where q puts no samples, so it understates how narrow a narrow q is, and at "
              "small K it reads high (about +5% at K = 100 for a well-matched q on the linear-Gaussian test model).",
              "- **ESS/K**: (Σ w)² / Σ w² over K, mean over images: how much of the K samples the estimate uses. "
              "With ESS ≈ 1–2 the variance ratio rests on one or two samples and says little; q var does not "
              "depend on sampling.",
              "- **q var**: geometric mean over images and latent dims of q(z|x)'s variance (prior variance = 1).",
              "- **train s/epoch**: wall-clock seconds of the training loop per epoch, on the machine above "
              "(shared machines make it noisy; `benchmarks/objective_cost.py` measures CPU time).", "",
              "## Figures", "",
              f"![summary]({out['figures']['summary']})", "",
              f"![histograms]({out['figures']['histograms']})", "",
              f"(Histograms: IWAE bits/dim of the test images under the seed-{s['seeds'][0]} model of each objective.)",
              "", "## Caveats", "",
              "- RWS's wake-φ gradient is a self-normalised estimate, biased for finite K; MSC is asymptotically "
              "unbiased but its chains move once per epoch; the IWAE encoder gradient's signal-to-noise ratio "
              "falls with K. At the quick budget none of the models is converged, so differences reflect "
              "early training as much as the divergence.",
              "- The decoder is trained by the IWAE bound (or, for `msc`, Fisher's identity) in every K-sample "
              "objective: `iwae` vs `rws`/`rws_dreg` isolates the encoder's divergence; `elbo` also differs "
              "in the decoder objective.", "",
              "`metrics.json` holds every number above, per run and per seed."
              + ("" if out["preset"] != "quick" else " The per-run checkpoints and per-image scores are in "
                 "`runs/` when kept."), ""]
    return lines


def _score_label(key: str) -> str:
    return {"auroc_iwae": "−IWAE", "auroc_elbo": "−ELBO"}.get(key, key.removeprefix("auroc_"))


def _fmt_keys(overrides: dict, prefix: str) -> str:
    items = [f"`{k}={v}`" for k, v in overrides.items() if k.startswith(prefix)]
    return ", ".join(items) if items else "defaults"


EXPERIMENTS.register("forward-kl")(ForwardKLExperiment(
    name="forward-kl",
    title="Forward-KL VAEs: does fitting q(z|x) by KL(p ‖ q) change OOD detection? (Fashion-MNIST vs MNIST)",
    in_dataset="fashion_mnist", ood_datasets=("mnist",),
    presets={
        "quick": AblationPreset(
            {"data.name": "fashion_mnist", "data.limit": "10000", "train.epochs": "3",
             "model.likelihood": "dlogistic"},
            train_k=5, seeds=(0, 1, 2), k=100, score_limit=500, allow_sample=True,
            note="CPU quick preset: 10,000 training images × 3 epochs per run, 15 runs; IWAE-100 on the first "
                 "500 images of each test set. K and the subset are chosen for about 10 minutes on 2 free CPU "
                 "cores: by the single-thread costs of benchmarks/objective_cost.py (an ELBO epoch of 10,000 "
                 "images ≈ 2.7 CPU-s, K = 5 objectives ≈ 3.5×, msc ≈ 4.2×; IWAE scoring ≈ 5,000 "
                 "image-samples per CPU-s) the ablation needs ≈ 11 CPU-minutes, ≈ 6–7 min on 2 threads. "
                 "Not converged models: read it as a smoke-level indication."),
        "paper": AblationPreset(
            {"data.name": "fashion_mnist", "train.epochs": "100", "model.likelihood": "dlogistic"},
            train_k=10, seeds=(0, 1, 2), k=1000, score_limit=None,
            note="full Fashion-MNIST training set × 100 epochs per run; IWAE-1000 on the full test sets."),
    },
))
