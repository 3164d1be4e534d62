"""Which models the detectors need, trained (or reused) for one family and seed."""

from __future__ import annotations

from pathlib import Path

from ...training.config import Config
from ...detectors import DETECTORS
from ..common import train_or_reuse
from .presets import HVAE, SuitePreset

# the extra runs a detector's required option names, by option
EXTRA_RUNS = {"background_run": "background", "second_run": "small"}
# detectors that run on the wide model (with the small one as their second run)
ON_WIDE = ("lpath_2m",)
# detectors that run on a hierarchical VAE trained beside the main one (Havtorn et al. 2021)
ON_HVAE = ("llr",)


def known_detectors(pre: SuitePreset) -> list[str]:
    """The preset's detectors, refusing a name no detector is registered under."""
    unknown = [d for d in pre.detectors if d not in DETECTORS]
    if unknown:
        raise KeyError(f"ood-suite: unknown detectors {', '.join(unknown)}; known: {', '.join(DETECTORS.names())}")
    return list(pre.detectors)


def train_models(base: dict, pre: SuitePreset, dets: list[str], runs_dir: Path, data_dir: str | None,
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

