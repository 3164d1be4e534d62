"""Training throughput: ``vaeood.training.train`` against a bare PyTorch loop and pythae's
``TrainingPipeline`` (``BaseTrainer``), on the same network, data and batch size.

* ``bare``: what a researcher writes by hand on the same modules — shuffle, index a uint8
  tensor, scale to [0, 1], encode, reparameterise, decode, Bernoulli (BCE-with-logits)
  log-likelihood + analytic KL, Adam step. For ``--arch hvae`` (the hierarchical VAE of
  ``vaeood.experiments.hvae_llr``: conv trunk, z_1 8×7×7, z_2 16, z_3 8, widths 256): the
  bottom-up pass, top-down sampling with the LVAE precision-weighted merge and the
  analytic KL of every layer;
* ``vaeood``: ``vaeood.training.train`` (objective registry, NaN/inf guards, per-epoch atomic
  checkpoint and metrics.jsonl);
* ``vaeood_bf16`` (``--bf16``): ``vaeood.training.train`` with ``train.precision=bf16`` (autocast of
  convolutions and linear layers, log-likelihood sums in fp32; ``precision_quality.py``
  checks that it trains a model of the same test likelihood);
* ``pythae`` (conv only): ``TrainingPipeline(VAE(bce) around the same modules,
  BaseTrainerConfig)`` — its DataLoader over a ``BaseDataset`` of float images, per-step
  ``loss.item()``, best-model deep copy per epoch, final model save.

Per side: **loop** images/s (training steps only: vaeood's per-epoch ``seconds``,
pythae's first-to-last step per epoch, the bare loop's whole time), **end-to-end** images/s
(dataset on disk to trained model) and end-to-end images per CPU second (robust to other
jobs on the cores). Same initial weights on every side (seed r in round r); alternated
rounds, medians of the rounds and of the per-round ratios. All sides share one warmed-up
process, or with ``--fresh-processes`` each run starts a new one, as a user's does (there
the allocator counts, ``vaeood.infra.allocator``). The result also records how far the bare loss
is from vaeood's ELBO with the same weights and noise.

    python benchmarks/train_speed.py [--images 20000] [--epochs 2] [--rounds 3] [--device cpu]
    python benchmarks/train_speed.py --fresh-processes --bf16   # each run in a new process
    python benchmarks/train_speed.py --arch hvae --no-pythae    # results/hvae_train_speed.json

Data: Fashion-MNIST from $VAEOOD_DATA when set, else the bundled sample.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common

HVAE = {"model.arch": "hvae",
        "model.arch_options": json.dumps({"latent_dims": [8, 16, 8], "widths": [256, 256], "bottom": "spatial"})}


def config(a, seed: int, extra: dict | None = None):
    from vaeood.training.config import Config

    return Config().override({
        "train.epochs": str(a.epochs), "train.batch_size": str(a.batch_size), "train.seed": str(seed),
        "train.device": a.device, "model.base_channels": str(common.BASE_CHANNELS),
        "model.latent_dim": str(common.LATENT_DIM), "data.name": a.dataset, "data.split": a.split,
        "data.limit": str(a.images), "data.allow_sample": "true", **(HVAE if a.arch == "hvae" else {}),
        **(extra or {})})


def hvae_neg_elbo(m, x_uint8: torch.Tensor) -> torch.Tensor:
    """−ELBO per image, written out by hand on the HVAE's modules."""
    x = x_uint8.float() / 255.0
    d = m.trunk(x)
    q = [m.q_heads[0](d).chunk(2, -1)]
    for up, head in zip(m.up, m.q_heads[1:], strict=True):
        d = up(d)
        q.append(head(d).chunk(2, -1))
    mu, lv = q[-1]
    z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
    kl = 0.5 * (mu.pow(2) + lv.exp() - 1 - lv).sum(-1)
    for i in reversed(range(len(q) - 1)):
        mp, lp = m.p_heads[i](z).chunk(2, -1)
        mq, lq = q[i]
        lv = -torch.logaddexp(-lq, -lp)
        mu = mq * torch.exp(lv - lq) + mp * torch.exp(lv - lp)
        z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
        kl = kl + 0.5 * (lp - lv + (lv.exp() + (mu - mp).pow(2)) * torch.exp(-lp) - 1).sum(-1)
    logits = m.decoder(z)
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3)) + kl


def bare_neg_elbo(a, model, x: torch.Tensor) -> torch.Tensor:
    return hvae_neg_elbo(model, x) if a.arch == "hvae" else common.bare_neg_elbo(model.encoder, model.decoder, x)


def build(a, seed: int, shape):
    """The network of ``vaeood.training.train``'s run of seed ``seed``, with its initial weights."""
    from vaeood.models import build_model

    torch.manual_seed(seed)  # as vaeood.training.train seeds before build_model
    return build_model(config(a, seed).model, tuple(shape)).to(a.device)


def run_bare(a, seed: int) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    x_all, _ = common.load_images(a.dataset, a.split, a.images)
    x_all = x_all.to(a.device)
    model = build(a, seed, x_all.shape[1:])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    common.sync(a.device)
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        for idx in torch.randperm(len(x_all), device=a.device).split(a.batch_size):
            loss = bare_neg_elbo(a, model, x_all[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    common.sync(a.device)
    loop = time.perf_counter() - t0
    return {"loop": loop, "total": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def run_vaeood(a, seed: int, extra: dict | None = None) -> dict:
    from vaeood.training.train import train

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        run = train(config(a, seed, extra), Path(tmp) / "run", data_dir=common.data_dir(), progress=False)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"loop": sum(r["seconds"] for r in history), "total": total, "cpu": cpu}


def same_loss(a) -> float:
    """max |bare − vaeood| −ELBO on 64 images with the same weights and noise (nats/image)."""
    from vaeood.inference.estimators import elbo

    x, _ = common.load_images(a.dataset, a.split, 64)
    model = build(a, 0, x.shape[1:]).eval()
    x = x.to(a.device)
    with torch.no_grad():
        torch.manual_seed(1)
        bare = bare_neg_elbo(a, model, x)
        torch.manual_seed(1)  # vaeood's ELBO draws its one sample the same way
        ours = -elbo(model, x)["log_px_nats"]
    return float((bare - ours).abs().max())


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
        start, cpu = time.perf_counter(), time.process_time()
        x_all, _ = common.load_images(a.dataset, a.split, a.images)
        model = common.pythae_twin(common.vaeood_model(seed, tuple(x_all.shape[1:])))
        config = BaseTrainerConfig(output_dir=tmp, num_epochs=a.epochs, learning_rate=1e-3,
                                   per_device_train_batch_size=a.batch_size, steps_saving=None,
                                   no_cuda=not a.device.startswith("cuda"), seed=seed)
        with contextlib.redirect_stderr(io.StringIO()):  # pythae's progress bars
            TrainingPipeline(model=model, training_config=config)(train_data=x_all.float() / 255.0, callbacks=[timer])
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"loop": sum(e - b for b, e in zip(timer.begin, timer.end, strict=True)), "total": total, "cpu": cpu}


def main(argv=None) -> dict:
    p = common.parser(__doc__, images=20000, epochs=2, rounds=3, batch_size=128, dataset="fashion_mnist",
                      split="train", arch=("conv", "conv or hvae"), no_pythae=False,
                      bf16=(False, "add vaeood with train.precision=bf16 (see precision_quality.py)"))
    p.add_argument("--fresh-processes", action="store_true",
                   help="run every side in a new Python process per round, as users run them "
                        "(the vaeood sides as the vaeood command does: allocator.keep_freed_memory)")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: one side, one round, JSON out
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    common.quiet_pythae()
    sides = {"bare": run_bare, "vaeood": run_vaeood}
    if a.bf16:
        sides["vaeood_bf16"] = lambda args, seed: run_vaeood(args, seed, extra={"train.precision": "bf16"})
    if not a.no_pythae:
        if a.arch != "conv":
            raise SystemExit("--arch hvae: pythae has no twin of this network; add --no-pythae")
        sides["pythae"] = run_pythae
    if a.side:  # one side in this (fresh) process
        if a.side.startswith("vaeood"):
            from vaeood.infra.allocator import keep_freed_memory

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
    child = [x for x in (sys.argv[1:] if argv is None else argv) if x != "--fresh-processes"]  # one side each
    records: dict[str, list[dict]] = {n: [] for n in sides}
    names = list(sides)
    peaks = []
    for r in range(a.rounds):
        peaks.append(common.peak_probe(a.device))
        for name in names[r % len(names):] + names[: r % len(names)]:
            records[name].append(common.in_fresh_process(__file__, child, "--side", name, "--seed", str(r))
                                 if a.fresh_processes else sides[name](a, r))
    n = a.images * a.epochs
    loop, total, cpu = (common.summarise({k: [x[key] for x in v] for k, v in records.items()}, {k: n for k in sides},
                                         unit=unit)
                        for key, unit in (("loop", "images_per_s"), ("total", "images_per_s"),
                                          ("cpu", "images_per_cpu_s")))
    from flops import flops_per_image

    conv_28 = a.arch == "conv" and tuple(x_probe.shape[1:]) == (1, 28, 28)
    step_flops = flops_per_image(1, a.device)["train_step"] if conv_28 else None
    if step_flops:
        fractions = common.peak_fractions(loop["seconds"], {k: n * step_flops for k in sides}, peaks)
        loop.update(flops_per_image=step_flops, **fractions)
    result = {
        "machine": info, "data": data.source,
        "images": a.images, "epochs": a.epochs, "batch_size": a.batch_size, "rounds": a.rounds,
        "fresh_processes": a.fresh_processes,
        "model": config(a, 0).to_dict()["model"], "same_loss_max_abs_diff_nats": same_loss(a),
        "loop": loop, "end_to_end": total, "end_to_end_cpu": cpu,  # run_all.py reads the goals off the ratios
    }
    name = ("hvae_" if a.arch == "hvae" else "") + ("train_speed_fresh" if a.fresh_processes else "train_speed")
    return common.finish(name, result, a.out, *(
        f"training {label} {unit}: " + "  ".join(f"{k} {v:.0f}" for k, v in s[unit].items())
        + "   ratios: " + "  ".join(f"{k} {v:.3f}" for k, v in s["ratios"].items() if k.startswith("vaeood"))
        for label, s, unit in (("loop", loop, "images_per_s"), ("end-to-end", total, "images_per_s"),
                               ("end-to-end CPU", cpu, "images_per_cpu_s"))))


if __name__ == "__main__":
    main()
