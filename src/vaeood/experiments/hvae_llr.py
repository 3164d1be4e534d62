"""Havtorn et al. (ICML 2021) on real data: hierarchical VAEs trained on Fashion-MNIST,
the LLR>k score on the Fashion-MNIST and MNIST test sets, against their AUROC 0.98 (LLR>1),
with a single-layer conv VAE of the same budget beside it for the bits/dim.

    python -m vaeood.experiments.hvae_llr --out results/hvae-llr-quick --seeds 0 1 2

Trains (or resumes / reuses) ``OUT/runs/hvae_seed{s}`` and ``OUT/runs/vae_seed0``, scores the
first ``--limit`` test images of each set, and writes ``OUT/metrics.json`` and
``OUT/report.md``. Not registered with ``vaeood reproduce``: the integrator wires the
``llr`` feature and detector into the ood-suite.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from ..infra.atomic import atomic_write_json, atomic_write_text
from ..training.config import Config
from ..data import load_dataset
from ..inference.estimators import bits_per_dim
from ..features import features_of
from ..evaluation.metrics import ood_metrics
from ..training.run import load_model
from ..evaluation.log_px import log_px
from .common import machine_words, stamp
from .reuse import train_or_reuse

log = logging.getLogger(__name__)

PAPER_AUROC = 0.98  # HVAE, Fashion-MNIST → MNIST, LLR>1 (Havtorn et al. 2021, Table 2)

QUICK = {"data.name": "fashion_mnist", "data.limit": "30000", "train.epochs": "8",
         "model.likelihood": "dlogistic"}
HVAE = {"model.arch": "hvae",
        # z_1: 8 channels at 7×7 (their lowest layer is convolutional), z_2: 16, z_3: 8
        "model.arch_options": json.dumps({"latent_dims": [8, 16, 8], "widths": [256, 256], "bottom": "spatial"}),
        "train.objective": "elbo_warmup",
        "train.objective_options": json.dumps({"warmup_epochs": 2, "free_nats": 2.0, "free_nats_epochs": 4})}
VAE = {"model.arch": "conv", "model.latent_dim": "16"}
# how the k lowest layers are drawn, and importance samples per bound
VARIANTS = {"sampled": (1, False), "prior_mean": (1, True), "sampled_iw16": (16, False)}
WHAT = {"sampled": "lower layers sampled from p(z_i|z_{i+1}) (the bound as written), 1 sample",
        "prior_mean": "lower layers at the conditional prior's mean (the authors' code), 1 sample",
        "sampled_iw16": "lower layers sampled, both bounds importance-weighted with 16 samples"}


def llr_scores(run_dir: Path, dataset: str, limit: int, *, data_dir: str | None, seed: int = 0,
               samples: int = 1, prior_mean: bool = False, batch_size: int = 500) -> dict[str, np.ndarray]:
    """``llr_bounds`` on the first ``limit`` test images of ``dataset``, through the feature
    layer (each image's noise keyed on its bytes and ``seed``, as every feature's)."""
    model, _, _ = load_model(run_dir)
    data = load_dataset(dataset, "test", data_dir=data_dir)
    result = features_of(model, data.images[:limit], "llr", {"samples": samples, "prior_mean": prior_mean},
                         seed=seed, batch_size=batch_size)
    if model.likelihood.normalised:
        result["bpd"] = bits_per_dim(torch.from_numpy(result["elbo_nats"]), model.num_dims).numpy()
    return result


def run(out: Path, seeds: list[int], *, limit: int = 2000, data_dir: str | None = None, vae: bool = True,
        iwae_k: int = 0, llr_iw: bool = True, overrides: dict | None = None, prefix: str = "hvae",
        command: str = "") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = {"experiment": "hvae-llr", "command": command, "paper_auroc_llr_gt_1": PAPER_AUROC,
               "budget": {**QUICK, **(overrides or {})}, "limit": limit, "hvae": {}, "vae": {}, **stamp("cpu")}
    for seed in seeds:
        cfg = Config().override({**QUICK, **HVAE, **(overrides or {}), "train.seed": str(seed)})
        run_dir = out / "runs" / f"{prefix}_seed{seed}"
        training = train_or_reuse(cfg, run_dir, data_dir=data_dir, progress=False)
        row = {"train_seconds": training["train_seconds"], "num_parameters": training["num_parameters"],
               "config": training["config"]["model"], "objective": training["config"]["train"]}
        for tag, (samples, prior_mean) in VARIANTS.items():
            if samples > 1 and not llr_iw:
                continue
            kw = {"data_dir": data_dir, "prior_mean": prior_mean, "samples": samples}
            s_in = llr_scores(run_dir, "fashion_mnist", limit, **kw)
            s_ood = llr_scores(run_dir, "mnist", limit, **kw)
            layers = 1 + sum(1 for k in s_in if k.startswith("l_gt_"))
            metrics = {"elbo_nll": ood_metrics(-s_in["elbo_nats"], -s_ood["elbo_nats"])}
            for k in range(1, layers):
                metrics[f"llr_gt_{k}"] = ood_metrics(s_in[f"llr_gt_{k}_nats"], s_ood[f"llr_gt_{k}_nats"])
                metrics[f"l_gt_{k}_nll"] = ood_metrics(-s_in[f"l_gt_{k}_nats"], -s_ood[f"l_gt_{k}_nats"])
            row[tag] = {"metrics": metrics,
                        "means_nats": {name: {k: float(v.mean()) for k, v in s.items()}
                                       for name, s in (("fashion_mnist", s_in), ("mnist", s_ood))}}
        elbo_scores = {d: log_px(run_dir, d, data_dir=data_dir, limit=limit) for d in ("fashion_mnist", "mnist")}
        row["elbo_bpd"] = {d: float(s["bpd"].mean()) if "bpd" in s else None for d, s in elbo_scores.items()}
        row["elbo_nats"] = {d: float(s["log_px_nats"].mean()) for d, s in elbo_scores.items()}
        row["rate_nats_per_layer_fashion_mnist"] = {
            k: float(v.mean()) for k, v in elbo_scores["fashion_mnist"].items() if k.startswith("rate_nats")}
        if iwae_k:
            iw = {d: log_px(run_dir, d, data_dir=data_dir, limit=limit, estimator="iwae",
                            estimator_options={"k": iwae_k}) for d in ("fashion_mnist", "mnist")}
            row[f"iwae{iwae_k}_bpd"] = {d: float(s["bpd"].mean()) for d, s in iw.items()}
        results["hvae"][f"seed{seed}"] = row
        log.info("hvae seed %d: %s", seed, {k: v["auroc"] for k, v in row["sampled"]["metrics"].items()})
        atomic_write_json(out / "metrics.json", results)
    if vae:
        cfg = Config().override({**QUICK, **VAE, **(overrides or {}), "train.seed": "0"})
        run_dir = out / "runs" / "vae_seed0"
        training = train_or_reuse(cfg, run_dir, data_dir=data_dir, progress=False)
        scores = {d: log_px(run_dir, d, data_dir=data_dir, limit=limit) for d in ("fashion_mnist", "mnist")}
        results["vae"] = {"train_seconds": training["train_seconds"], "num_parameters": training["num_parameters"],
                          "elbo_bpd": {d: float(s["bpd"].mean()) if "bpd" in s else None for d, s in scores.items()},
                          "elbo_nats": {d: float(s["log_px_nats"].mean()) for d, s in scores.items()},
                          "elbo_nll": ood_metrics(-scores["fashion_mnist"]["log_px_nats"],
                                                  -scores["mnist"]["log_px_nats"])}
        if iwae_k:
            iw = {d: log_px(run_dir, d, data_dir=data_dir, limit=limit, estimator="iwae",
                            estimator_options={"k": iwae_k}) for d in ("fashion_mnist", "mnist")}
            results["vae"][f"iwae{iwae_k}_bpd"] = {d: float(s["bpd"].mean()) for d, s in iw.items()}
    atomic_write_json(out / "metrics.json", results)
    atomic_write_text(out / "report.md", report(results))
    return results


def report(r: dict) -> str:
    seeds = sorted(r["hvae"])
    lines = ["# Hierarchical VAE, LLR>k: Fashion-MNIST → MNIST", "",
             f"Made by `{r['command']}` on {r['created']} (torch {r['environment']['torch']}"
             f"{machine_words(r['environment'])}). Budget: {json.dumps(r['budget'])}; the first "
             f"{r['limit']} test images of each set; LLR>k = ELBO − L>k with one sample (shared noise), "
             "OOD = MNIST is the positive class, higher = more OOD.", "",
             f"Paper (Havtorn et al. 2021, HVAE): AUROC {r['paper_auroc_llr_gt_1']} with LLR>1.", ""]
    for tag, what in WHAT.items():
        if tag not in r["hvae"][seeds[0]]:
            continue
        names = list(r["hvae"][seeds[0]][tag]["metrics"])
        lines += [f"## AUROC, {what}", "", "| score | " + " | ".join(seeds) + " | mean |",
                  "| --- |" + " --- |" * (len(seeds) + 1)]
        for name in names:
            vals = [r["hvae"][s][tag]["metrics"][name]["auroc"] for s in seeds]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals):.3f} |")
        lines.append("")
    def fmt(bpd, nats):
        return f"{bpd:.3f} bits/dim" if bpd is not None else f"{nats:.1f} nats (not normalised)"

    lines += ["## Test bits/dim (ELBO)", "",
              "| model | Fashion-MNIST | MNIST | AUROC of −ELBO | parameters | train s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for s in seeds:
        h = r["hvae"][s]
        nats = h.get("elbo_nats", {"fashion_mnist": float("nan"), "mnist": float("nan")})
        lines.append(f"| HVAE {s} | {fmt(h['elbo_bpd']['fashion_mnist'], nats['fashion_mnist'])} | "
                     f"{fmt(h['elbo_bpd']['mnist'], nats['mnist'])} | "
                     f"{h['sampled']['metrics']['elbo_nll']['auroc']:.3f} | {h['num_parameters']} | "
                     f"{h['train_seconds']:.0f} |")
    if r["vae"]:
        v = r["vae"]
        nats = v.get("elbo_nats", {"fashion_mnist": float("nan"), "mnist": float("nan")})
        lines.append(f"| conv VAE seed0 | {fmt(v['elbo_bpd']['fashion_mnist'], nats['fashion_mnist'])} | "
                     f"{fmt(v['elbo_bpd']['mnist'], nats['mnist'])} | "
                     f"{v['elbo_nll']['auroc']:.3f} | {v['num_parameters']} | {v['train_seconds']:.0f} |")
    lines.append("")
    best = max((np.mean([r["hvae"][s][t]["metrics"][f"llr_gt_{k}"]["auroc"] for s in seeds]), t, k)
               for t in WHAT if t in r["hvae"][seeds[0]] for k in (1, 2))
    passes = int(r["budget"]["data.limit"]) * int(r["budget"]["train.epochs"])
    lines += ["## Against the paper", "",
              f"Best mean AUROC here: {best[0]:.3f} (LLR>{best[2]}, {best[1]}), against their "
              f"{r['paper_auroc_llr_gt_1']}. This budget does not reproduce it. Theirs "
              "(github.com/JakobHavtorn/hvae-oodd README): 1,000 epochs of all 60,000 dynamically "
              "binarised Fashion-MNIST images with a Bernoulli decoder, 64-channel residual blocks (9), "
              "z_1 8×14×14, z_2 16, z_3 8, free nats 2 held 200 epochs and cooled over 200, KL warm-up "
              f"over 200 epochs: about {60_000_000 / passes:.0f}× the image passes of this run "
              f"({int(r['budget']['data.limit']):,} × {r['budget']['train.epochs']}) through a wider "
              "network. At the 300–900 images/s this network trained at on 2 shared cores that is "
              "20–55 hours (a GPU run was not available to this session). Whether our architecture "
              "reaches 0.98 at that budget is untested.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/hvae-llr-quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-vae", action="store_true")
    p.add_argument("--iwae-k", type=int, default=0, help="also IWAE-K bits/dim (0: off)")
    p.add_argument("--no-llr-iw", action="store_true", help="skip the 16-sample LLR variant")
    p.add_argument("--tag", default="hvae", help="run directory prefix (runs/TAG_seedS)")
    p.add_argument("--set", nargs="*", default=[], help="extra config overrides key=value")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = dict(item.split("=", 1) for item in a.set)
    r = run(Path(a.out), a.seeds, limit=a.limit, data_dir=a.data_dir, vae=not a.no_vae, iwae_k=a.iwae_k,
            llr_iw=not a.no_llr_iw, overrides=overrides, prefix=a.tag,
            command="python -m vaeood.experiments.hvae_llr " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(report(r))


if __name__ == "__main__":
    main()
