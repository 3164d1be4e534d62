"""Training cost of each objective per epoch, relative to ``elbo``, on the same network
and the same data.

The network is the Fig. 2a model (conv VAE, discretised-logistic decoder, the default
width and latent size); every objective trains the same images, in the same order,
with the same batch size and Adam step, through the loop that ``vaeood.train`` runs
(``make_objective``, one backward of the scalar loss, ``optimizer.step``) without its
file writing. Each epoch is timed twice: wall clock and *process CPU time*. On a
shared machine the CPU time is the stable measure (it does not count time spent
waiting for another process's turn on the core), so it is the headline and the default
is one thread (``--threads``). Objectives run in turn for ``--repeats`` rounds and the
median epoch over rounds and epochs is reported, so drift hits every objective alike.

    python benchmarks/objective_cost.py [--images 5000] [--epochs 2] [--repeats 2] [--k 5] [--threads 1]

Data: Fashion-MNIST from $VAEOOD_DATA (or --data-dir) when found, else the bundled sample.
Writes ``benchmarks/results/objective_cost.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vaeood.config import Config
from vaeood.data import load_dataset
from vaeood.models import build_model
from vaeood.objectives import make_objective
from vaeood.run import to_tensor
from vaeood.train import epoch_order

OBJECTIVES = ("elbo", "iwae", "rws", "rws_dreg", "msc")


def epoch_times(objective: str, options: dict, x_all: torch.Tensor, a, seed: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of each epoch of training ``objective``."""
    cfg = Config().override({"model.likelihood": "dlogistic"})
    torch.manual_seed(seed)
    model = build_model(cfg.model, tuple(x_all.shape[1:]))
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--k", type=int, nargs="+", default=[5], help="samples per image for the K-sample objectives")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: stable CPU-time measurements)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "objective_cost.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset("fashion_mnist", "train", data_dir=a.data_dir, allow_sample=True)
    x_all = to_tensor(data.images[: a.images])
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
    result = {"benchmark": "objective_cost", "date": time.strftime("%Y-%m-%d"),
              "machine": platform.processor() or platform.machine(), "threads": a.threads,
              "torch": torch.__version__, "data": data.source, "images": n, "epochs": a.epochs,
              "repeats": a.repeats, "batch_size": a.batch_size,
              "model": "conv VAE, dlogistic decoder, base_channels 32, latent_dim 16 (Fig. 2a)", "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'objective':<16}{'CPU s/epoch':>12}{'x elbo':>8}{'wall s/epoch':>14}{'x elbo':>8}")
    for row in rows:
        print(f"{row['objective']:<16}{row['median_epoch_cpu_seconds']:>12.2f}{row['cpu_relative_to_elbo']:>8.2f}"
              f"{row['median_epoch_wall_seconds']:>14.2f}{row['wall_relative_to_elbo']:>8.2f}")
    print(f"({n} images of {data.source}, batch {a.batch_size}, {a.epochs} epochs x {a.repeats} rounds, "
          f"{a.threads} thread(s), median epoch)")


if __name__ == "__main__":
    main()
