"""Pieces every experiment shares: the registry, train-or-reuse, run summaries and
the environment stamp written into each report."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch

from .._version import __version__
from ..checkpoint import CHECKPOINT_NAME, load_checkpoint
from ..config import Config
from ..registry import Registry
from ..train import resumable, train

EXPERIMENTS = Registry("experiment")


def train_or_reuse(config: Config, run_dir: Path, *, data_dir: str | None, progress: bool | None) -> dict:
    """Train ``config`` into ``run_dir`` unless a checkpoint there has already reached
    ``train.epochs`` (an unfinished one is resumed); return the training summary."""
    ckpt = run_dir / CHECKPOINT_NAME
    state = load_checkpoint(ckpt) if ckpt.exists() else None
    if state is None or state["epoch"] < config.train.epochs:
        train(config, run_dir, resume=resumable(run_dir), data_dir=data_dir, progress=progress)
        state = load_checkpoint(ckpt)
    return training_summary(state)


def training_summary(state: dict) -> dict:
    """What a report says of a finished run's training, from its checkpoint."""
    return {"epochs": state["epoch"], "num_parameters": state["num_parameters"],
            "final_train_loss_nats": state["history"][-1]["train_loss"],
            "train_seconds": sum(h["seconds"] for h in state["history"]),
            "train_data": state["train_data"], "config": state["config"]}


def stamp(device: str) -> dict:
    """When and with what a result was made."""
    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "environment": {"vaeood": __version__, "torch": torch.__version__, "python": platform.python_version(),
                            "device": device, "threads": torch.get_num_threads()}}


def verdict_word(auroc: float) -> str:
    """AUROC of −log p(x) with OOD positive: ≥ 0.6 the OOD set gets lower likelihood
    (the model "knows"), ≤ 0.4 higher (inverted), otherwise no separation."""
    if auroc >= 0.6:
        return "separates"
    if auroc <= 0.4:
        return "inverted"
    return "no separation"


def report_header(title: str, out: dict, samples: list[str]) -> list[str]:
    """Title, the command that made the report and, when the bundled sample stood in for
    missing data, a warning that says which sets it replaced."""
    lines = [f"# {title}", "",
             f"Made by `{out['command'] or 'vaeood reproduce ' + out['experiment']}` "
             f"(preset `{out['preset']}`) on {out['created']}; vaeood {out['environment']['vaeood']}, "
             f"torch {out['environment']['torch']}, device {out['environment']['device']}.", ""]
    if samples:
        lines += ["> **No dataset was found, so this ran on the small sample bundled with vaeood:** "
                  + "; ".join(sorted(set(samples))) + ". Point `--data-dir` or `VAEOOD_DATA` at the real data "
                  "for real numbers.", ""]
    return lines


def sample_sources(evaluations: list[dict], trainings: list[dict]) -> list[str]:
    """Descriptions of every data set in these results that was the bundled sample."""
    return [f"{name} ({d['source']})" for r in evaluations for name, d in r["datasets"].items() if d["is_sample"]] + \
        [f"{t['train_data']['name']} training set ({t['train_data']['source']})"
         for t in trainings if t["train_data"]["is_sample"]]

