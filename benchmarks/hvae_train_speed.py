"""Training throughput of the hierarchical VAE (``model.arch=hvae``): ``vaeood.train``
against a bare PyTorch loop on the same network, data, batch size and initial weights.

* ``bare``: what a researcher writes by hand on the same modules — shuffle, index a uint8
  tensor, scale to [0, 1], bottom-up pass, top-down sampling with the LVAE
  precision-weighted merge, analytic per-layer KL, Bernoulli (BCE-with-logits)
  log-likelihood, Adam step.
* ``vaeood``: ``vaeood.train`` with the ``elbo`` objective (estimator protocol
  ``log_weight_terms``, NaN/inf guard, per-epoch atomic checkpoint and metrics.jsonl).

The network is the one of ``vaeood.experiments.hvae_llr`` (conv trunk, base 32, z_1 8×7×7,
z_2 16, z_3 8, widths 256) with the Bernoulli decoder, as ``train_speed.py`` uses.
**Loop** images/s counts the epochs' training steps only (vaeood's per-epoch ``seconds``
from metrics.jsonl, the bare loop's whole time); **end-to-end** includes data loading,
model build and checkpoints; **end-to-end CPU** divides by the process's CPU seconds
instead of wall seconds (robust to other jobs on the cores). Sides alternate in one process after a warm-up; medians of
the rounds and of the per-round ratios.

    python benchmarks/hvae_train_speed.py [--images 10000] [--epochs 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import common

ARCH_OPTIONS = {"latent_dims": [8, 16, 8], "widths": [256, 256], "bottom": "spatial"}


def config(a, seed: int):
    from vaeood.config import Config

    return Config().override({
        "model.arch": "hvae", "model.arch_options": json.dumps(ARCH_OPTIONS), "model.base_channels": "32",
        "model.likelihood": "bernoulli", "train.epochs": str(a.epochs), "train.batch_size": str(a.batch_size),
        "train.seed": str(seed), "train.device": a.device, "data.name": a.dataset, "data.split": a.split,
        "data.limit": str(a.images), "data.allow_sample": "true"})


def bare_neg_elbo(m, x_uint8: torch.Tensor) -> torch.Tensor:
    """−ELBO per image, written out by hand on the HVAE's modules."""
    x = x_uint8.float() / 255.0
    d = m.trunk(x)
    q = [m.q_heads[0](d).chunk(2, -1)]
    for up, head in zip(m.up, m.q_heads[1:]):
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
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    return rec + kl


def run_bare(a, seed: int) -> dict:
    from vaeood.models import build_model

    start, cpu = time.perf_counter(), time.process_time()
    x_all, _ = common.load_images(a.dataset, a.split, a.images)
    x_all = x_all.to(a.device)
    torch.manual_seed(seed)  # the same initial weights as vaeood.train's (seeded before build_model)
    model = build_model(config(a, seed).model, tuple(x_all.shape[1:])).to(a.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = len(x_all)
    common.sync(a.device)
    t0 = time.perf_counter()
    for _ in range(a.epochs):
        for idx in torch.randperm(n, device=a.device).split(a.batch_size):
            loss = bare_neg_elbo(model, x_all[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    common.sync(a.device)
    loop = time.perf_counter() - t0
    return {"loop": loop, "total": time.perf_counter() - start, "cpu": time.process_time() - cpu}


def run_vaeood(a, seed: int) -> dict:
    from vaeood.train import train

    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        run = train(config(a, seed), Path(tmp) / "run", data_dir=common.data_dir(), progress=False)
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"loop": sum(r["seconds"] for r in history), "total": total, "cpu": cpu}


def check_same_loss(a) -> float:
    """|bare − vaeood| −ELBO on one batch with the same weights and noise (nats/image)."""
    from vaeood.estimators import elbo
    from vaeood.models import build_model

    x, _ = common.load_images(a.dataset, a.split, 64)
    torch.manual_seed(0)
    model = build_model(config(a, 0).model, tuple(x.shape[1:])).eval()
    with torch.no_grad():
        torch.manual_seed(1)
        bare = bare_neg_elbo(model, x)
        # the bare loop draws layer by layer from the top with randn_like; vaeood's
        # estimators draw the same way for one sample
        torch.manual_seed(1)
        ours = -elbo(copy.deepcopy(model), x)["log_px_nats"]
    return float((bare - ours).abs().max())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--split", default="train")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    info = common.machine_info(a.device)
    x_probe, data = common.load_images(a.dataset, a.split, a.images)
    a.images = len(x_probe)
    sides = {"bare": run_bare, "vaeood": run_vaeood}
    warm = argparse.Namespace(**{**vars(a), "images": min(a.images, 2 * a.batch_size), "epochs": 1})
    for fn in sides.values():
        fn(warm, 0)
    records: dict[str, list[dict]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            records[name].append(sides[name](a, r))
    n = a.images * a.epochs
    loop = common.summarise({k: [x["loop"] for x in v] for k, v in records.items()}, {k: n for k in sides})
    total = common.summarise({k: [x["total"] for x in v] for k, v in records.items()}, {k: n for k in sides})
    # CPU seconds of the process, end to end: less sensitive than wall time to other jobs on the cores
    cpu = common.summarise({k: [x["cpu"] for x in v] for k, v in records.items()}, {k: n for k in sides},
                           unit="images_per_cpu_s")
    result = {
        "benchmark": "hvae_train_speed", "command": common.command_line(), "machine": info, "data": data.source,
        "images": a.images, "epochs": a.epochs, "batch_size": a.batch_size, "rounds": a.rounds,
        "model": {"arch": "hvae", "arch_options": ARCH_OPTIONS, "base_channels": 32, "likelihood": "bernoulli"},
        "same_loss_max_abs_diff_nats": check_same_loss(a),
        "loop": loop, "end_to_end": total, "end_to_end_cpu": cpu,
    }
    path = common.write_result("hvae_train_speed", result, a.out)
    for label, s, unit in (("loop", loop, "images_per_s"), ("end-to-end", total, "images_per_s"),
                           ("end-to-end CPU", cpu, "images_per_cpu_s")):
        print(f"HVAE training {label} {unit}: " + "  ".join(f"{k} {v:.0f}" for k, v in s[unit].items())
              + f"   vaeood/bare {s['ratios']['vaeood/bare']:.3f}")
    print(f"→ {path}")
    return result


if __name__ == "__main__":
    main()
