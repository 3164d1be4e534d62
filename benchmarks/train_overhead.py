"""Where ``vaeood.training.train`` spends its time beyond a bare loop: per-step and per-run costs.

Per step: the same batches go through variants of one training step that add vaeood's
pieces one at a time, run in alternation (``--steps`` steps per variant per round,
``--rounds`` rounds, median ms/step):

* ``bare``: hand-written step (as in ``train_speed.run_bare``; default Adam);
* ``objective``: vaeood's ``elbo`` objective on vaeood's ``VAE`` (posterior, uint8 →
  float, likelihood object, analytic KL, logged-dict entries) + backward + fused Adam;
* ``+guard``: ... + the NaN/inf guard on the device: gradient norm
  (``get_total_norm``), ``isfinite`` of it and of the loss as Adam's ``found_inf``
  (a bad step is skipped by the optimizer itself), the count of bad steps in a row;
* ``+sums``: ... + the logged values summed on the device over good steps;
* ``full``: ... + the host read of the bad-step count at the library's interval
  (every step on a CPU, every 32 on a GPU) = the body of the loop in
  ``src/vaeood/train.py``;
* ``full, host read every step``: the same reading the count every step, as the loop
  did before (on a GPU each read waits for the device).

Per run: loading the dataset from disk (``load_dataset`` + ``to_tensor``), building the
model, and one checkpoint + metrics write (``vaeood.training.train.save_run_state``), each timed directly.
Also: the cost of ``clip_grad_norm_`` and ``isfinite`` alone, measured after a backward.

    python benchmarks/train_overhead.py [--steps 40] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

import common


def main(argv=None) -> dict:
    a = common.parser(__doc__, steps=40, rounds=5, batch_size=128).parse_args(argv)
    from vaeood.inference.objectives import OBJECTIVES

    device = torch.device(a.device)
    info = common.machine_info(a.device)
    start = time.perf_counter()  # the split's first load in this process: what a run pays once
    x_all, data = common.load_images("fashion_mnist", "train")
    load_seconds = time.perf_counter() - start
    x_all = x_all[: a.steps * a.batch_size].to(device)
    batches = [x_all[i: i + a.batch_size] for i in range(0, len(x_all), a.batch_size)]

    bare = common.vaeood_model(0).to(device).train()  # the same network, stepped by hand
    bare_opt = torch.optim.Adam(bare.parameters(), lr=1e-3)
    model = common.vaeood_model(0).to(device).train()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)  # as vaeood.training.train
    objective = OBJECTIVES.get("elbo")
    from vaeood.training.train import ObjectiveStep, check_interval, GoodSums, guarded_step
    model_step = ObjectiveStep(model, objective, {})  # the library's step: objective(model, x)

    def bare_step(xb):
        loss = common.bare_neg_elbo(bare.encoder, bare.decoder, xb).mean()
        bare_opt.zero_grad()
        loss.backward()
        bare_opt.step()

    def vaeood_step(guard: bool, sums: bool, read_every: int | None):
        state = {"steps": 0, "run": torch.zeros((), device=device), "acc": GoodSums(device)}

        def step(xb):
            if guard:  # the library's own guarded step (vaeood.training.train.guarded_step), one process
                out, bad = guarded_step(model_step, model, opt, xb, {}, contextlib.nullcontext, 1)
                state["run"].add_(1.0).mul_(bad)
            else:
                out = model_step(xb)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
            state["steps"] += 1
            if sums:
                state["acc"].add(out, bad)
            if read_every and state["steps"] % read_every == 0:
                int(state["run"])  # the host read that stops a run of bad steps
        return step

    variants = {
        "bare": bare_step,
        "objective": vaeood_step(False, False, None),
        "+guard": vaeood_step(True, False, None),
        "+sums": vaeood_step(True, True, None),
        "full": vaeood_step(True, True, check_interval(device)),
        "full, host read every step": vaeood_step(True, True, 1),
    }

    def timed(fn):
        def run():
            common.sync(device)
            start = time.perf_counter()
            for xb in batches:
                fn(xb)
            common.sync(device)
            return time.perf_counter() - start
        return run

    times = common.alternate({k: timed(v) for k, v in variants.items()}, a.rounds)
    per_step_ms = {k: 1e3 * statistics.median(v) / len(batches) for k, v in times.items()}
    per_round = {k: [1e3 * t / len(batches) for t in v] for k, v in times.items()}
    names = list(variants)
    # extra ms/step of each variant over the previous one, median over rounds of the paired difference
    increments = {names[i]: statistics.median([b - c for b, c in
                                               zip(per_round[names[i]], per_round[names[i - 1]], strict=True)])
                  for i in range(1, len(names))}

    # micro: the guard's pieces alone, after a backward
    objective(model, batches[0])["loss"].backward()

    def micro(fn):
        return 1e6 * common.median_seconds(fn, samples=5, calls=200, device=device)

    loss = objective(model, batches[0])["loss"].detach()
    acc = torch.zeros(3, device=device)
    micro_us = {
        "get_total_norm + isfinite flags (no host read)": micro(
            lambda: (~torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in params]))
                     | ~torch.isfinite(loss)).float()),
        "isfinite(loss) read on the host": micro(lambda: bool(torch.isfinite(loss))),
        "stack + where + add of 3 logged values": micro(
            lambda: acc.add_(torch.where(loss > 0, 0.0, torch.stack([loss, loss, loss])))),
    }

    # per-run costs
    from vaeood.training.config import Config
    from vaeood.data import load_dataset
    from vaeood.models import build_model

    cfg = Config().override({"model.base_channels": str(common.BASE_CHANNELS),
                             "model.latent_dim": str(common.LATENT_DIM)})
    per_run_s = {"load_dataset(fashion_mnist/train) + to_tensor": load_seconds,
                 "build_model": common.median_seconds(lambda: build_model(cfg.model, (1, 28, 28)))}
    from vaeood.training.train import save_run_state

    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset("fashion_mnist", "train", data_dir=common.data_dir(), allow_sample=True)
        path = Path(tmp) / "checkpoint.pt"
        per_run_s["checkpoint write per epoch"] = common.median_seconds(
            lambda: save_run_state(path, cfg, model, opt, 1, [], (1, 28, 28), ds, device))

    return common.finish("train_overhead", {
        "machine": info, "data": data.source, "batch_size": a.batch_size, "steps_per_round": len(batches),
        "rounds": a.rounds, "ms_per_step": per_step_ms, "ms_per_step_rounds": per_round,
        "increment_ms_per_step": increments, "ratio_full_over_bare_time": per_step_ms["full"] / per_step_ms["bare"],
        "micro_us": micro_us, "per_run_seconds": per_run_s}, a.out,
        "ms/step: " + "  ".join(f"{k} {v:.2f}" for k, v in per_step_ms.items()),
        "increments: " + "  ".join(f"{k} {v:+.3f}" for k, v in increments.items()),
        "micro µs: " + "  ".join(f"{k} {v:.0f}" for k, v in micro_us.items()),
        "per run s: " + "  ".join(f"{k} {v if isinstance(v, str) else round(v, 3)}" for k, v in per_run_s.items()))


if __name__ == "__main__":
    main()
