"""ELBO scoring throughput: vaeood against a bare PyTorch loop on the same network and
weights, under ``torch.no_grad()``, on the Fashion-MNIST test set.

* ``bare``: ``mu, logvar = enc(x / 255)``; one reparameterised z; BCE-with-logits on the
  grey levels + analytic KL, per image;
* ``vaeood``: ``vaeood.estimators.elbo(model, x)`` per batch (as ``score`` calls it);
* ``vaeood_proposed``: the same on ``prototypes.optimised_copy(model)``;
* ``vaeood_score``: ``vaeood.scoring.score(run, "fashion_mnist", "test", estimator="elbo",
  reuse=False)`` end to end (loads the checkpoint and the dataset from disk, hashes the
  checkpoint, writes the scores file).

    python benchmarks/elbo_speed.py [--images 10000] [--batch-size 1000] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import common
from prototypes import optimised_copy


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    from vaeood.config import Config
    from vaeood.estimators import elbo
    from vaeood.run import load_model
    from vaeood.scoring import score
    from vaeood.train import train

    device = torch.device(a.device)
    info = common.machine_info(a.device)
    x_all, data = common.load_images("fashion_mnist", "test", a.images)
    a.images = len(x_all)
    x_all = x_all.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config().override({"train.epochs": "1", "train.device": a.device, "data.limit": "2000",
                                 "data.allow_sample": "true", "model.base_channels": str(common.BASE_CHANNELS),
                                 "model.latent_dim": str(common.LATENT_DIM)})
        run = train(cfg, Path(tmp) / "run", data_dir=common.data_dir(), progress=False)
        model, _, _ = load_model(run, a.device)
        proposed = optimised_copy(model).eval()
        enc, dec = model.encoder, model.decoder

        def batches():
            return (x_all[i: i + a.batch_size] for i in range(0, len(x_all), a.batch_size))

        def bare():
            with torch.no_grad():
                for xb in batches():
                    (-common.bare_neg_elbo(enc, dec, xb)).cpu()
            common.sync(device)

        def ours(m):
            def run_():
                with torch.no_grad():
                    for xb in batches():
                        elbo(m, xb)["log_px_nats"].cpu()
                common.sync(device)
            return run_

        def scored():
            score(run, "fashion_mnist", "test", estimator="elbo", data_dir=common.data_dir(), limit=a.images,
                  batch_size=a.batch_size, device=a.device, allow_sample=True, reuse=False, progress=False)

        competitors = {"bare": bare, "vaeood": ours(model), "vaeood_proposed": ours(proposed), "vaeood_score": scored}
        peaks = []
        times = common.alternate(competitors, a.rounds, peaks=peaks, device=a.device)
    summary = common.summarise(times, {k: a.images for k in competitors})
    from flops import flops_per_image

    fpi = flops_per_image(1, a.device)["elbo"]
    summary["flops_per_image"] = fpi
    summary["fraction_of_peak"] = {k: common.fraction_of_peak(v, a.images * fpi, peaks) for k, v in times.items()}
    summary["peaks_per_round_gflops"] = peaks
    result = {"benchmark": "elbo_speed", "command": common.command_line(), "machine": info, "data": data.source,
              "images": a.images, "batch_size": a.batch_size, **summary}
    path = common.write_result("elbo_speed", result, a.out)
    print("ELBO images/s: " + "  ".join(f"{k} {v:.0f}" for k, v in result["images_per_s"].items()))
    print("ratios: " + "  ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items() if k.startswith("vaeood")))
    print(f"→ {path}")
    return result


if __name__ == "__main__":
    main()
