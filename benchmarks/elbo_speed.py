"""ELBO scoring throughput: vaeood against a bare PyTorch loop on the same network and
weights, under ``torch.no_grad()``, on the Fashion-MNIST test set.

* ``bare``: ``mu, logvar = enc(x / 255)``; one reparameterised z; BCE-with-logits on the
  grey levels + analytic KL, per image, on an NCHW copy of the model (as written by hand);
* ``vaeood``: ``vaeood.inference.estimators.elbo(model, x)`` per batch on the model as ``score``
  loads it (conv models in NHWC) and calls it;
* ``vaeood_score``: ``vaeood.evaluation.log_px.log_px(run, "fashion_mnist", "test", estimator="elbo",
  reuse=False)`` end to end (loads the checkpoint and the dataset from disk, hashes the
  checkpoint, writes the scores file).

    python benchmarks/elbo_speed.py [--images 10000] [--batch-size 1000] [--rounds 5] [--device cpu]
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

import common


def main(argv=None) -> dict:
    a = common.parser(__doc__, images=10000, batch_size=1000, rounds=5).parse_args(argv)
    from vaeood.inference.estimators import elbo
    from vaeood.training.run import load_model
    from vaeood.evaluation.log_px import log_px

    device = torch.device(a.device)
    info = common.machine_info(a.device)
    x_all, data = common.load_images("fashion_mnist", "test", a.images)
    a.images = len(x_all)
    x_all = x_all.to(device)
    with tempfile.TemporaryDirectory() as tmp:
        run = common.train_run(Path(tmp), a.device, 2000, 1)
        model, _, _ = load_model(run, a.device)  # NHWC, as log_px() loads conv models
        hand = copy.deepcopy(model).to(memory_format=torch.contiguous_format)  # NCHW, as written by hand
        enc, dec = hand.encoder, hand.decoder

        def batches():
            return (x_all[i: i + a.batch_size] for i in range(0, len(x_all), a.batch_size))

        def bare():
            with torch.no_grad():
                for xb in batches():
                    (-common.bare_neg_elbo(enc, dec, xb)).cpu()
            common.sync(device)

        def vaeood():
            with torch.no_grad():
                for xb in batches():
                    elbo(model, xb)["log_px_nats"].cpu()
            common.sync(device)

        def scored():
            log_px(run, "fashion_mnist", "test", estimator="elbo", data_dir=common.data_dir(), limit=a.images,
                   batch_size=a.batch_size, device=a.device, allow_sample=True, reuse=False, progress=False)

        competitors = {"bare": bare, "vaeood": vaeood, "vaeood_score": scored}
        peaks = []
        times = common.alternate(competitors, a.rounds, peaks=peaks, device=a.device)
    summary = common.summarise(times, {k: a.images for k in competitors})
    from flops import flops_per_image

    fpi = flops_per_image(1, a.device)["elbo"]
    summary.update(flops_per_image=fpi, **common.peak_fractions(times, {k: a.images * fpi for k in times}, peaks))
    return common.finish("elbo_speed", {"machine": info, "data": data.source, "images": a.images,
                                        "batch_size": a.batch_size, **summary}, a.out,
                         "ELBO images/s: " + "  ".join(f"{k} {v:.0f}" for k, v in summary["images_per_s"].items()),
                         "ratios: " + "  ".join(f"{k} {v:.3f}" for k, v in summary["ratios"].items()
                                                if k.startswith("vaeood")))


if __name__ == "__main__":
    main()
