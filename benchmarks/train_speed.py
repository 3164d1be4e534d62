"""Training throughput: ``vaeood.train`` against a bare PyTorch loop and pythae's
``TrainingPipeline`` (``BaseTrainer``), on the same network, data and batch size.

* ``bare``: what a researcher writes by hand — shuffle, index a uint8 tensor, scale to
  [0, 1], encode, reparameterise, decode, Bernoulli (BCE-with-logits) log-likelihood +
  analytic KL, Adam step.
* ``vaeood``: ``vaeood.train`` (objective registry, NaN/inf guards, per-epoch atomic
  checkpoint and metrics.jsonl).
* ``vaeood_proposed``: ``vaeood.train`` with the model changes of ``prototypes.py``
  (channels_last, oneDNN-free output deconvolution, in-place ReLU), injected by wrapping
  ``vaeood.train.build_model`` in this process — a library change proposed here, not
  what the library does;
* ``vaeood_bf16`` (``--bf16``): ``vaeood.train`` with ``train.precision=bf16`` (autocast of
  convolutions and linear layers, log-likelihood sums in fp32; ``precision_quality.py``
  checks that it trains a model of the same test likelihood);
* ``pythae``: ``TrainingPipeline(VAE(bce) around the same modules, BaseTrainerConfig)``
  — its DataLoader over a ``BaseDataset`` of float images, per-step ``loss.item()``,
  best-model deep copy per epoch, final model save.

Two numbers per side: **loop** images/s (the epochs' training steps only: vaeood's
per-epoch ``seconds`` from metrics.jsonl, pythae's first-to-last train step per epoch via
a callback, the bare loop's whole time) and **end-to-end** images/s (from the dataset on
disk to a trained model: data loading, model build, checkpoints and saves included).
Same initial weights on every side (seed r in round r). Runs alternate, medians of the
rounds and of the per-round ratios are reported. By default all sides share one process
(after a warm-up, so its allocator is warm for all); ``--fresh-processes`` runs each side
in a new process per round, as a user's run starts: there the allocator's behaviour
counts (``vaeood.allocator``).

    python benchmarks/train_speed.py [--images 20000] [--epochs 2] [--rounds 3] [--device cpu]
    python benchmarks/train_speed.py --fresh-processes --bf16 --no-proposed   # each run in a new process

Data: Fashion-MNIST from $VAEOOD_DATA when set, else the bundled sample.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import torch

import common
from vaeood.models.conv import conv_decoder, conv_encoder


def bare_loop(x_all: torch.Tensor, epochs: int, batch_size: int, seed: int, device) -> float:
    """Seconds for ``epochs`` epochs of a hand-written VAE loop (x_all already on device)."""
    torch.manual_seed(seed)
    c, h, w = x_all.shape[1:]
    enc = conv_encoder(c, h, w, common.BASE_CHANNELS, common.LATENT_DIM).to(device)
    dec = conv_decoder(c, h, w, common.BASE_CHANNELS, common.LATENT_DIM, 1).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    n = len(x_all)
    common.sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n, device=device).split(batch_size):
            loss = common.bare_neg_elbo(enc, dec, x_all[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    common.sync(device)
    return time.perf_counter() - start


def run_bare(a, seed: int) -> dict:
    start = time.perf_counter()
    x_all, _ = common.load_images(a.dataset, a.split, a.images)
    x_all = x_all.to(a.device)
    loop = bare_loop(x_all, a.epochs, a.batch_size, seed, a.device)
    return {"loop": loop, "total": time.perf_counter() - start}


def run_vaeood(a, seed: int, proposed: bool = False, extra: dict | None = None) -> dict:
    import sys

    from vaeood.config import Config
    from vaeood.train import train

    vtrain = sys.modules["vaeood.train"]  # the module (vaeood.train is also the function's name)
    original = vtrain.build_model
    if proposed:
        from prototypes import optimised_copy

        vtrain.build_model = lambda cfg, shape: optimised_copy(original(cfg, shape))

    cfg = Config().override({
        "train.epochs": str(a.epochs), "train.batch_size": str(a.batch_size), "train.seed": str(seed),
        "train.device": a.device, "model.base_channels": str(common.BASE_CHANNELS),
        "model.latent_dim": str(common.LATENT_DIM), "data.name": a.dataset, "data.split": a.split,
        "data.limit": str(a.images), "data.allow_sample": "true", **(extra or {}),
    })
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = train(cfg, Path(tmp) / "run", data_dir=common.data_dir(), progress=False)
            total = time.perf_counter() - start
            history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    finally:
        vtrain.build_model = original
    return {"loop": sum(r["seconds"] for r in history), "total": total}


def run_pythae(a, seed: int) -> dict:
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    class EpochTimer(TrainingCallback):
        def __init__(self):
            self.begin, self.end = [], []

        def on_train_step_begin(self, training_config, **kwargs):  # once per epoch, before its first step
            common.sync(a.device)
            self.begin.append(time.perf_counter())
            self.end.append(None)

        def on_train_step_end(self, training_config, **kwargs):  # after every step
            self.end[-1] = time.perf_counter()

    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        x_all, _ = common.load_images(a.dataset, a.split, a.images)
        model = common.pythae_twin(common.vaeood_model(seed, tuple(x_all.shape[1:])))
        config = BaseTrainerConfig(output_dir=tmp, num_epochs=a.epochs, learning_rate=1e-3,
                                   per_device_train_batch_size=a.batch_size, steps_saving=None,
                                   no_cuda=not a.device.startswith("cuda"), seed=seed)
        with contextlib.redirect_stderr(io.StringIO()):  # pythae's progress bars
            TrainingPipeline(model=model, training_config=config)(train_data=x_all.float() / 255.0, callbacks=[timer])
        total = time.perf_counter() - start
    return {"loop": sum(e - b for b, e in zip(timer.begin, timer.end)), "total": total}


def in_fresh_process(side: str, seed: int, argv) -> dict:
    """One side, one round, in a new interpreter (same arguments)."""
    import subprocess
    import sys

    args = [x for x in (sys.argv[1:] if argv is None else argv) if x != "--fresh-processes"]
    done = subprocess.run([sys.executable, __file__, *args, "--side", side, "--seed", str(seed)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--split", default="train")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-pythae", action="store_true")
    p.add_argument("--no-proposed", action="store_true", help="leave out the vaeood_proposed prototype")
    p.add_argument("--bf16", action="store_true", help="add vaeood with train.precision=bf16 (see precision_quality.py)")
    p.add_argument("--fresh-processes", action="store_true",
                   help="run every side in a new Python process per round, as users run them "
                        "(the vaeood sides as the vaeood command does: allocator.keep_freed_memory)")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: one side, one round, JSON out
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    common.quiet_pythae()
    sides = {"bare": run_bare, "vaeood": run_vaeood}
    if not a.no_proposed and not a.fresh_processes:
        sides["vaeood_proposed"] = lambda args, seed: run_vaeood(args, seed, proposed=True)
    if a.bf16:
        sides["vaeood_bf16"] = lambda args, seed: run_vaeood(args, seed, extra={"train.precision": "bf16"})

    if not a.no_pythae:
        sides["pythae"] = run_pythae
    if a.side:  # one side in this (fresh) process
        if a.side.startswith("vaeood"):
            from vaeood.allocator import keep_freed_memory

            keep_freed_memory()
        print(json.dumps(sides[a.side](a, a.seed)))
        return {}
    info = common.machine_info(a.device)
    x_probe, data = common.load_images(a.dataset, a.split, a.images)
    a.images = len(x_probe)

    if not a.fresh_processes:
        # warm-up: one short run each (allocator, oneDNN kernels, imports)
        warm = argparse.Namespace(**{**vars(a), "images": min(a.images, 2 * a.batch_size), "epochs": 1})
        for fn in sides.values():
            fn(warm, 0)
    records: dict[str, list[dict]] = {n: [] for n in sides}
    names = list(sides)
    peaks = []
    for r in range(a.rounds):
        peaks.append(common.peak_probe(a.device))
        for name in names[r % len(names):] + names[: r % len(names)]:
            records[name].append(in_fresh_process(name, r, argv) if a.fresh_processes else sides[name](a, r))
    n = a.images * a.epochs
    loop = common.summarise({k: [x["loop"] for x in v] for k, v in records.items()}, {k: n for k in sides})
    total = common.summarise({k: [x["total"] for x in v] for k, v in records.items()}, {k: n for k in sides})
    from flops import flops_per_image

    step_flops = flops_per_image(1, a.device)["train_step"] if tuple(x_probe.shape[1:]) == (1, 28, 28) else None
    if step_flops:
        loop["flops_per_image"] = step_flops
        loop["fraction_of_peak"] = {k: common.fraction_of_peak([x["loop"] for x in v], n * step_flops, peaks)
                                    for k, v in records.items()}
    loop["peaks_per_round_gflops"] = peaks
    result = {
        "benchmark": "train_speed", "command": common.command_line(), "machine": info, "data": data.source,
        "images": a.images, "epochs": a.epochs, "batch_size": a.batch_size, "rounds": a.rounds,
        "fresh_processes": a.fresh_processes,
        "model": {"arch": "conv", "base_channels": common.BASE_CHANNELS, "latent_dim": common.LATENT_DIM,
                  "likelihood": "bernoulli"},
        "loop": loop, "end_to_end": total,
        "goals": {"vaeood/bare >= 1.0": loop["ratios"]["vaeood/bare"] >= 1.0},
    }
    if "pythae" in sides:
        result["goals"]["vaeood/pythae >= 1.2"] = loop["ratios"]["vaeood/pythae"] >= 1.2
        if "vaeood_bf16" in sides:
            result["goals"]["vaeood_bf16/pythae >= 1.2"] = loop["ratios"]["vaeood_bf16/pythae"] >= 1.2
    path = common.write_result("train_speed_fresh" if a.fresh_processes else "train_speed", result, a.out)
    for label, s in (("loop", loop), ("end-to-end", total)):
        print(f"training {label} images/s: " + "  ".join(f"{k} {v:.0f}" for k, v in s["images_per_s"].items())
              + "   ratios: " + "  ".join(f"{k} {v:.3f}" for k, v in s["ratios"].items() if k.startswith("vaeood")))
    print(f"→ {path}")
    return result


if __name__ == "__main__":
    main()
