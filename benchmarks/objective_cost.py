"""Training cost of each objective per epoch, relative to ``elbo``, on the same network
and the same data.

The Fig. 2a model (conv VAE, discretised-logistic decoder) trains the same images in the
same order with each objective (``make_objective``, backward, Adam step; no file writing).
Each epoch is timed by the wall clock and by process CPU time, the stable measure on a
shared machine (hence one thread by default); objectives take turns for ``--repeats``
rounds and the median epoch is reported.

    python benchmarks/objective_cost.py [--images 5000] [--epochs 2] [--repeats 2] [--k 5] [--threads 1]

Data: Fashion-MNIST from $VAEOOD_DATA when set, else the bundled sample.
Writes ``benchmarks/results/objective_cost.json``.
"""

from __future__ import annotations

import inspect
import statistics
import time

import torch

import common
from vaeood.training.config import Config
from vaeood.models import build_model
from vaeood.inference.objectives import make_objective
from vaeood.training.train import epoch_order

OBJECTIVES = ("elbo", "iwae", "rws", "rws_dreg", "msc")


def epoch_times(objective: str, options: dict, x_all: torch.Tensor, a, seed: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of each epoch of training ``objective``."""
    cfg = Config().override({"model.likelihood": "dlogistic"})
    torch.manual_seed(seed)
    model = build_model(cfg.model, tuple(x_all.shape[1:])).to(x_all.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    fn = make_objective(objective, options, num_examples=len(x_all))
    takes_index = "index" in inspect.signature(fn).parameters
    out = []
    for epoch in range(a.epochs):
        order = epoch_order(len(x_all), seed, epoch)
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(x_all), a.batch_size):
            index = order[i: i + a.batch_size]
            loss = fn(model, x_all[index], **({"index": index} if takes_index else {}), **options)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return out


def main(argv=None) -> dict:
    a = common.parser(__doc__, images=5000, epochs=2, repeats=2, batch_size=128,
                      k=([5], "samples per image for the K-sample objectives"),
                      threads=(1, "torch threads (1: stable CPU-time measurements)")).parse_args(argv)
    torch.set_num_threads(a.threads)
    x_all, data = common.load_images("fashion_mnist", "train", a.images)
    x_all = x_all.to(a.device)
    variants = [("elbo", {})] + [(name, {"k": k}) for k in a.k for name in OBJECTIVES[1:]]
    times: dict[str, list[tuple[float, float]]] = {}
    for r in range(a.repeats):
        for name, options in variants:
            key = name + (f" k={options['k']}" if options else "")
            times.setdefault(key, []).extend(epoch_times(name, options, x_all, a, seed=r))
    n = len(x_all)
    base_cpu = statistics.median(c for _, c in times["elbo"])
    base_wall = statistics.median(w for w, _ in times["elbo"])
    rows = []
    for key, v in times.items():
        wall, cpu = statistics.median(w for w, _ in v), statistics.median(c for _, c in v)
        rows.append({"objective": key, "median_epoch_cpu_seconds": cpu, "median_epoch_wall_seconds": wall,
                     "cpu_relative_to_elbo": cpu / base_cpu, "wall_relative_to_elbo": wall / base_wall,
                     "images_per_cpu_second": n / cpu, "epochs_wall_cpu_seconds": v})
    return common.finish("objective_cost", {
        "machine": common.machine_info(a.device), "threads": a.threads, "data": data.source, "images": n,
        "epochs": a.epochs, "repeats": a.repeats, "batch_size": a.batch_size,
        "model": "conv VAE, dlogistic decoder, base_channels 32, latent_dim 16 (Fig. 2a)", "rows": rows}, a.out,
        f"{'objective':<16}{'CPU s/epoch':>12}{'x elbo':>8}{'wall s/epoch':>14}{'x elbo':>8}",
        *(f"{row['objective']:<16}{row['median_epoch_cpu_seconds']:>12.2f}{row['cpu_relative_to_elbo']:>8.2f}"
          f"{row['median_epoch_wall_seconds']:>14.2f}{row['wall_relative_to_elbo']:>8.2f}" for row in rows),
        f"({n} images, batch {a.batch_size}, {a.epochs} epochs x {a.repeats} rounds, {a.threads} thread(s), "
        "median epoch)")


if __name__ == "__main__":
    main()
