"""Training throughput of ``vaeood.train`` against a bare PyTorch loop on the same network.

The bare loop is what a researcher would write by hand: shuffle, index a uint8 tensor,
scale to [0, 1], encode, reparameterise, decode, Bernoulli log-likelihood + analytic
KL, Adam step. vaeood adds its bookkeeping (objective registry, NaN/inf guards,
per-epoch atomic checkpoints and metrics). Runs alternate and the median of the
repeats is reported, so drift of the machine hits both sides alike.

    python benchmarks/train_speed.py [--images 10000] [--epochs 2] [--repeats 3]

Data: Fashion-MNIST from $VAEOOD_DATA when set, else the bundled sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vaeood.config import Config
from vaeood.data import load_dataset
from vaeood.models.conv import conv_decoder, conv_encoder
from vaeood.run import to_tensor
from vaeood.train import train


def bare_loop(x_all: torch.Tensor, epochs: int, batch_size: int, base: int, latent: int, seed: int) -> float:
    """Seconds for ``epochs`` epochs of a hand-written VAE loop."""
    torch.manual_seed(seed)
    c, h, w = x_all.shape[1:]
    enc, dec = conv_encoder(c, h, w, base, latent), conv_decoder(c, h, w, base, latent, 1)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)
    n = len(x_all)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(n).split(batch_size):
            x = x_all[idx].float() / 255.0
            mu, logvar = enc(x).chunk(2, dim=-1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            rec = F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").flatten(1).sum(1)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
            loss = (rec + kl).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def vaeood_loop(images, epochs: int, batch_size: int, base: int, latent: int, seed: int, data_dir) -> float:
    cfg = Config().override({"train.epochs": str(epochs), "train.batch_size": str(batch_size),
                             "model.base_channels": str(base), "model.latent_dim": str(latent),
                             "train.seed": str(seed), "data.limit": str(len(images)),
                             "data.allow_sample": "true"})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp) / "run", data_dir=data_dir, progress=False)
        return time.perf_counter() - start  # includes data loading, checkpoints and metrics writes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    a = p.parse_args()
    data = load_dataset("fashion_mnist", "train", allow_sample=True)
    images = data.images[: a.images]
    x_all = to_tensor(images)
    bare, ours = [], []
    for r in range(a.repeats):
        bare.append(bare_loop(x_all, a.epochs, a.batch_size, a.base_channels, a.latent_dim, r))
        ours.append(vaeood_loop(images, a.epochs, a.batch_size, a.base_channels, a.latent_dim, r, None))
    n = len(images) * a.epochs
    result = {
        "benchmark": "train_speed", "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "data": data.source, "images": len(images),
        "epochs": a.epochs, "batch_size": a.batch_size, "base_channels": a.base_channels, "latent_dim": a.latent_dim,
        "bare_images_per_s": n / statistics.median(bare), "vaeood_images_per_s": n / statistics.median(ours),
        "bare_seconds": bare, "vaeood_seconds": ours,
    }
    result["ratio_vaeood_over_bare"] = result["vaeood_images_per_s"] / result["bare_images_per_s"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"bare loop: {result['bare_images_per_s']:.0f} img/s   vaeood.train: {result['vaeood_images_per_s']:.0f} img/s"
          f"   ratio {result['ratio_vaeood_over_bare']:.3f}")


if __name__ == "__main__":
    main()
