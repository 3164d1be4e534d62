"""Wall time of a paper-preset training run (the study's Fig. 2b: CIFAR-10, 100 epochs).

Trains the models of ``vaeood reproduce fig2b --preset paper`` (conv VAE, base 64
channels, latent 64, 100 epochs, batch 128; the study's Bernoulli decoder and the
discretised logistic) through ``vaeood.training.train`` with the preset's own config, on one
device, and records per-epoch seconds, the whole call's wall time (data loading, model
build, per-epoch checkpoints included) and the final training loss.

``--tile-to N``: when the data holds fewer than N training images (these machines have
only the first 4,000 CIFAR-10 training images), they are repeated up to N, written as a
temporary ``cifar10_train.npz``. This is for timing only: an epoch's cost depends on the
number of images, not their values. The JSON records the tiling.

``--variants``: extra ``train.*`` settings to compare, each trained for the same epochs
(e.g. ``precision=bf16``, ``channels_last=true``, ``compile=true``; several joined by
``,``). ``--epochs E < 100`` gives a projection to 100 epochs (median epoch × 100 plus
the measured fixed cost), marked as such in the JSON.

    python benchmarks/paper_train_time.py --device cuda --tile-to 50000
    python benchmarks/paper_train_time.py --device cuda --tile-to 50000 --epochs 3 \\
        --variants "" "channels_last=true" "precision=bf16,channels_last=true"
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import common

PAPER_EPOCHS = 100


def tiled_data_dir(name: str, n: int, tmp: Path) -> tuple[str | None, dict]:
    """A data dir holding ``NAME_train.npz`` with ``n`` images (the available ones
    repeated), or the usual data dir when it already has ``n``."""
    from vaeood.data import load_dataset

    data = load_dataset(name, "train", data_dir=common.data_dir())
    have = len(data.images)
    info = {"source": data.source, "available_images": have}
    if have >= n:
        return common.data_dir(), {**info, "tiled": False}
    reps = -(-n // have)
    x = np.concatenate([data.images] * reps)[:n]
    y = np.concatenate([data.labels] * reps)[:n]
    path = tmp / f"{name}_train.npz"
    np.savez(path, x=x, y=y, provenance=np.array(f"{data.source}: {have} images repeated to {n} (timing only)"))
    return str(tmp), {**info, "tiled": True, "tiled_to": n}


def train_once(overrides: dict[str, str], data_dir: str | None) -> dict:
    from vaeood.training.config import Config
    from vaeood.training.train import train

    config = Config().override(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(config, Path(tmp) / "run", data_dir=data_dir, progress=False)
        wall = time.perf_counter() - start
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epoch_s = [r["seconds"] for r in history]
    fixed = wall - sum(epoch_s)
    out = {"wall_s": wall, "epoch_seconds": epoch_s, "fixed_cost_s": fixed,
           "final_train_loss_nats": history[-1]["train_loss"],
           "images_per_s_median_epoch": history[-1]["images_per_s"] if len(history) == 1 else
           statistics.median(r["images_per_s"] for r in history[1:])}
    if len(epoch_s) < PAPER_EPOCHS:  # first epoch holds warm-up (kernel choice, compile): keep it once
        steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
        out["projected_100_epochs_s"] = fixed + epoch_s[0] + steady * (PAPER_EPOCHS - 1)
    return out


def main(argv=None) -> dict:
    from vaeood.experiments import EXPERIMENTS

    p = common.parser(__doc__, experiment="fig2b", preset="paper",
                      decoders=(None, "comma-separated model variants (default: all of the preset)"),
                      variants=([""], "train.* settings per variant, e.g. precision=bf16"))
    p.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    p.add_argument("--tile-to", type=int, default=None)
    a = p.parse_args(argv)

    exp = EXPERIMENTS.get(a.experiment)
    preset = exp.presets[a.preset]
    decoders = a.decoders.split(",") if a.decoders else list(exp.models)
    results = {}
    machine = common.machine_info(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, data = (tiled_data_dir(exp.in_dataset, a.tile_to, Path(tmp)) if a.tile_to
                          else (common.data_dir(), {"tiled": False}))
        for variant in a.variants:
            extra = {f"train.{kv.split('=')[0]}": kv.split("=", 1)[1] for kv in variant.split(",") if kv}
            for decoder in decoders:
                overrides = {**preset.overrides, **exp.models[decoder], "train.device": a.device, **extra}
                if a.epochs:
                    overrides["train.epochs"] = str(a.epochs)
                key = f"{decoder}[{variant or 'default'}]"
                results[key] = {"overrides": overrides, **train_once(overrides, data_dir)}
                r = results[key]
                print(f"{key}: {len(r['epoch_seconds'])} epochs in {r['wall_s']:.1f} s "
                      f"(median epoch {statistics.median(r['epoch_seconds']):.2f} s, "
                      f"{r['images_per_s_median_epoch']:.0f} images/s; fixed {r['fixed_cost_s']:.1f} s)"
                      + (f"; projected {PAPER_EPOCHS} epochs {r['projected_100_epochs_s']:.0f} s"
                         if "projected_100_epochs_s" in r else "")
                      + f"; final loss {r['final_train_loss_nats']:.1f} nats", flush=True)
                # written after every run, so a run cut short by a time limit keeps the finished ones
                result = common.finish("paper_train_time", {
                    "machine": machine, "experiment": a.experiment, "preset": a.preset, "data": data, "runs": results,
                    "goal": "a full CIFAR-10 VAE (100 epochs) trains in <= 5 minutes on one H100 (issue 5)"}, a.out)
    return result


if __name__ == "__main__":
    main()
