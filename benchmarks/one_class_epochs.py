"""How many epochs the one-class quick preset trains, decided on in-distribution data alone:
the held-out ELBO of a class's VAE after E epochs.

For each dataset, class 0 as ``vaeood reproduce one-class`` writes it (every image of the class,
the last ``n_fit`` held out), the preset's model trained for each E in ``--epochs`` from the
same seed, then the mean ELBO (nats per image, one posterior draw, seed 0) of

* the held-out images (the detectors' fit images, never trained on), the number the choice
  rests on;
* the first ``n_fit`` training images, beside it, for the generalisation gap.

No other class is read: the images the benchmark calls anomalies play no part.

    VAEOOD_DATA=/path/to/data python benchmarks/one_class_epochs.py --epochs 5 10 20 40
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import finish, machine_info, parser, real_data_and_cache
from vaeood.data import load_dataset
from vaeood.experiments.one_class import MODEL, PRESETS, SOURCES, class_set_name, write_sets
from vaeood.inference.estimators import elbo
from vaeood.training.config import Config
from vaeood.training.run import load_model, to_tensor
from vaeood.training.train import train


@torch.no_grad()
def mean_elbo(model, images: np.ndarray, chunk: int = 500) -> float:
    """The mean ELBO (nats) of uint8 NHWC ``images``, one posterior draw, seed 0."""
    x = to_tensor(images)
    g = torch.Generator().manual_seed(0)
    return torch.cat([elbo(model, x[i:i + chunk], generator=g)["log_px_nats"]
                      for i in range(0, len(x), chunk)]).mean().item()


def one_dataset(ds: str, epochs: list[int], data: Path, work: Path) -> dict:
    pre = dataclasses.replace(PRESETS["quick"], classes=(0,))
    written = write_sets(SOURCES[ds], pre, str(data), work)
    name, n_fit = class_set_name(ds, 0), pre.n_fit
    images = load_dataset(name, "train", data_dir=str(work)).images  # as training reads them
    rows = {}
    for e in epochs:
        config = Config().override({**MODEL, "data.name": name, "data.holdout": str(n_fit),
                                    "train.epochs": str(e), "train.seed": str(pre.seed)})
        t0 = time.perf_counter()
        run = train(config, work / f"{name}_E{e}", data_dir=str(work), progress=False)
        seconds = time.perf_counter() - t0
        model, _, _ = load_model(run)
        rows[e] = {"heldout_elbo_nats": mean_elbo(model, images[-n_fit:]),
                   "train_elbo_nats": mean_elbo(model, images[:n_fit]), "train_seconds": seconds}
        print(f"{ds} class 0, {e} epochs: held-out ELBO {rows[e]['heldout_elbo_nats']:.1f}, "
              f"training images {rows[e]['train_elbo_nats']:.1f} nats", flush=True)
    return {"class": 0, "images": written["classes"][0]["n"], "held_out": n_fit, "by_epochs": rows}


def main() -> None:
    args = parser(__doc__, epochs=([5, 10, 20, 40], "epoch counts to compare"), threads=2,
                  sets=(["mnist", "fashion_mnist", "cifar10"], "datasets")).parse_args()
    data, _ = real_data_and_cache(args, "mnist_*.npz, fashion_mnist_*.npz and cifar10_train.npz")
    with tempfile.TemporaryDirectory() as tmp:
        result = {ds: one_dataset(ds, args.epochs, data, Path(tmp)) for ds in args.sets}
    lines = ["", "held-out ELBO gained (nats per image):"]
    for ds, r in result.items():
        h = [r["by_epochs"][e]["heldout_elbo_nats"] for e in args.epochs]
        steps = ", ".join(f"{a} → {b}: {y - x:+.0f}"
                          for a, b, x, y in zip(args.epochs, args.epochs[1:], h, h[1:], strict=False))
        lines.append(f"  {ds}: {steps}")
    finish("one_class_epochs", {"machine": machine_info("cpu"), "epochs": args.epochs, "datasets": result},
           args.out, *lines)


if __name__ == "__main__":
    main()
